"""Command line: one subcommand per stage (``python -m pipeline <stage> --help``).

Every Make target calls one of these; each is a thin layer over a library function.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import traceback
from collections.abc import Callable
from typing import Any

from pipeline.cli_parser import build_parser, key_value
from pipeline.paths import manifest_path, rejected_path, store_path


def _store_options(args: argparse.Namespace) -> dict[str, Any]:
    """The store options of :func:`pipeline.extract.run.fill_store` from extract's or mels'."""
    return {
        "batch_size": args.batch_size,
        "shard_size": args.shard_size,
        "jobs": args.jobs,
        "max_duration_s": args.max_duration,
        "max_failed_fraction": args.max_failed,
        "overwrite": args.overwrite,
        "hash_audio": args.hash_audio,
        "progress": not args.quiet,
    }


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The training settings of the KEY=VALUE arguments and the options that set them."""
    overrides = dict(args.setting)
    if args.device:
        overrides["device"] = args.device
    if args.workers is not None:
        overrides["workers"] = args.workers
    return overrides


def _cmd_data(args: argparse.Namespace) -> int:
    """``data``: build a dataset's manifest; exit status 1 when source rows were left out."""
    from pipeline.data import source as sources
    from pipeline.data.datasets import build_manifest, list_datasets
    from pipeline.data.manifest import ManifestError
    from pipeline.stamps import refresh_data_stamp

    given = {key: getattr(args, key) for key in sources.SOURCE_OPTIONS}
    recorded = sources.read_source(args.data_dir, args.dataset)
    if not sources.gives_source(**given) and recorded is not None:
        record = recorded
        print(f"{args.dataset}: building from its recorded source, {sources.summary(record)}")
    else:
        name = args.dataset if args.dataset in list_datasets() else "csv"
        record = sources.describe(name, **given)
    if record["source"] == "csv" and record["csv"] is None:
        raise ManifestError(
            f"unknown dataset {args.dataset!r}: choose one of {', '.join(list_datasets())} "
            "or give --csv FILE for your own dataset"
        )
    manifest = build_manifest(
        record["source"],
        name=args.dataset,
        out_dir=args.data_dir / "datasets" / args.dataset,
        **sources.builder_options(record),
    )
    sources.write_source(args.data_dir, args.dataset, record)
    audio = [*manifest.clips["path"], *(r.path for r in manifest.rejected)]
    sources.write_audio_list(args.data_dir, args.dataset, audio)
    refresh_data_stamp(args.data_dir, args.dataset)  # before the manifest: see its doc
    out = manifest.write(manifest_path(args.data_dir, args.dataset))
    rejected_csv = manifest.write_rejected(rejected_path(args.data_dir, args.dataset))
    counts = manifest.clips["split"].value_counts().to_dict()
    known = manifest.mask().mean()
    splits = ", ".join(f"{k} {v}" for k, v in sorted(counts.items()))
    print(
        f"{out}: {len(manifest)} clips ({splits}), "
        f"{len(manifest.classes)} classes, {known:.0%} of labels known"
    )
    if not manifest.rejected:
        return 0
    rows = len(manifest.rejected)
    print(f"{rows} row{'s' if rows != 1 else ''} left out (also in {rejected_csv}):")
    for rejection in manifest.rejected:
        print(f"  rejected {rejection}")
    return 1


def _cmd_extract(args: argparse.Namespace) -> int:
    """``extract``: :func:`pipeline.extract.run.run_extraction`."""
    from pipeline.extract.run import run_extraction

    result = run_extraction(
        args.data_dir,
        args.dataset,
        args.teacher,
        name=args.name,
        weights=args.weights,
        device=args.device,
        precision=args.precision,
        teacher_options=dict(args.option),
        replace_stale=args.replace_stale,
        engine=args.engine,
        ray_address=args.ray_address,
        actors=args.actors,
        gpus_per_actor=args.gpus_per_actor,
        **_store_options(args),
    )
    print(result)
    return result.exit_status


def _cmd_mels(args: argparse.Namespace) -> int:
    """``mels``: :func:`pipeline.extract.mels.run_mels`."""
    from pipeline.extract.mels import run_mels

    options = _store_options(args)
    result = run_mels(args.data_dir, args.dataset, args.frontend, device=args.device, **options)
    print(result)
    return result.exit_status


def _cmd_export(args: argparse.Namespace) -> int:
    """``export``: a finished Zarr store as one HDF5 file."""
    from pipeline.paths import h5_store_path
    from pipeline.stores import export_h5, read_store
    from pipeline.stores.status import disk_mb

    source = store_path(args.data_dir, args.dataset, args.store)
    out = args.out or h5_store_path(args.data_dir, args.dataset, args.store)
    out = export_h5(source, out, progress=not args.quiet)
    n = len(read_store(out))
    print(
        f"{out}: {n} clips, {disk_mb(out):.1f} MB (Zarr store {source}: {disk_mb(source):.1f} MB)"
    )
    return 0


def _cmd_train(args: argparse.Namespace) -> int:
    """``train``: one run of stage two, its mel store built first if needed."""
    from pipeline.extract.mels import ensure_mel_store
    from pipeline.train.config import train_config
    from pipeline.train.loop import train

    cfg = train_config(args.dataset, preset=args.preset, **_overrides(args))
    ensure_mel_store(args.data_dir, cfg.dataset, cfg.frontend, progress=not args.quiet)
    train(cfg, args.data_dir, progress=not args.quiet)
    return 0


def _cmd_compare(args: argparse.Namespace) -> int:
    """``compare``: :func:`pipeline.evaluate.compare.compare_stage`."""
    from pipeline.evaluate.compare import compare_stage

    text = compare_stage(
        args.data_dir,
        args.dataset,
        args.teacher,
        settings=_overrides(args),
        seeds=args.seeds,
        label_fractions=args.label_fractions,
        lambdas=args.lambdas,
        kd=not args.no_kd,
        preset=args.preset,
        device=args.device,
        progress=not args.quiet,
    )
    if text:
        print("\n" + text)
    return 0


def _cmd_paper(args: argparse.Namespace) -> int:
    """``paper``: :func:`pipeline.evaluate.paper.paper_stage`."""
    from pipeline.evaluate.paper import paper_stage

    text = paper_stage(
        args.data_dir,
        args.dataset,
        settings=_overrides(args),
        seeds=args.seeds,
        teachers=args.teachers.split("+") if args.teachers else None,
        preset=args.preset,
        device=args.device,
        estimate_only=args.estimate_only,
        progress=not args.quiet,
    )
    if text:
        print("\n" + text)
    return 0


def _cmd_probes(args: argparse.Namespace) -> int:
    """``probes``: :func:`pipeline.evaluate.leaderboard.probes_stage`."""
    from pipeline.evaluate.leaderboard import probes_stage

    say = None if args.quiet else print
    print(probes_stage(args.data_dir, args.dataset, args.stores, seeds=args.seeds, say=say))
    return 0


def _cmd_eval(args: argparse.Namespace) -> int:
    """``eval``: :func:`pipeline.evaluate.evaluation.evaluate_all`."""
    from pipeline.evaluate.evaluation import evaluate_all
    from pipeline.paths import read_manifest

    if args.dataset is not None:
        read_manifest(args.data_dir, args.dataset)  # an unknown dataset is an error, not "none"
    lines = evaluate_all(args.data_dir, args.dataset, device=args.device, probes=not args.no_probes)
    print("\n".join(lines) if lines else "no trained run to evaluate")
    return 0


def _cmd_report(args: argparse.Namespace) -> int:
    """``report``: :func:`pipeline.evaluate.compare.report_stage`."""
    from pipeline.evaluate.compare import report_stage

    print(report_stage(args.data_dir, args.dataset))
    return 0


def _cmd_predict(args: argparse.Namespace) -> int:
    """``predict``: tag files; exit status 1 when some could not be read, 2 when none."""
    import warnings

    from pipeline.inference.predict import load_run
    from pipeline.inference.runs import FrontEndChangedWarning, RunError

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", FrontEndChangedWarning)
        try:
            predictor = load_run(args.run_dir, device=args.device)
        except RunError as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
    for w in caught:
        if issubclass(w.category, FrontEndChangedWarning):
            print(f"warning: {w.message}", file=sys.stderr)
        else:
            warnings.showwarning(w.message, w.category, w.filename, w.lineno)
    result = predictor.predict_files(args.files, batch_size=args.batch_size)
    if args.frames:
        result = result.by_window()
    if len(result.table):
        print(result.format_table(k=args.top))
    for file, cause in result.failures.items():
        print(f"error: {file}: {cause}", file=sys.stderr)
    if args.csv is not None:
        out = result.to_csv(args.csv)
        rows = "windows" if args.frames else "files"
        print(f"{out}: probabilities of {len(result.table)} {rows}")
    if not len(result.table):
        return 2
    return 1 if result.failures else 0


def _cmd_inspect(args: argparse.Namespace) -> int:
    """``inspect``: :func:`pipeline.stores.inspect.inspect_store`; exit status 1 when unhealthy."""
    from pipeline.stores.inspect import inspect_store

    report = inspect_store(args.store)
    print(report.format())
    return report.exit_status


def _cmd_onnx(args: argparse.Namespace) -> int:
    """``onnx``: :func:`pipeline.inference.onnx_export.export_onnx`."""
    from pipeline.inference.onnx_export import export_onnx

    result = export_onnx(args.run_dir, args.out, check=args.check)
    size_mb = result.path.stat().st_size / 1e6
    checked = (
        f"; ONNX Runtime matches PyTorch within {result.max_abs_diff:.1e}"
        if result.max_abs_diff is not None
        else ""
    )
    print(
        f"{result.path}: {size_mb:.1f} MB, waveform at {result.metadata['sample_rate_hz']} Hz "
        f"→ {len(json.loads(result.metadata['classes']))} tag probabilities{checked}"
    )
    return 0


COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "data": _cmd_data,
    "extract": _cmd_extract,
    "mels": _cmd_mels,
    "export": _cmd_export,
    "train": _cmd_train,
    "compare": _cmd_compare,
    "paper": _cmd_paper,
    "probes": _cmd_probes,
    "eval": _cmd_eval,
    "report": _cmd_report,
    "predict": _cmd_predict,
    "onnx": _cmd_onnx,
    "inspect": _cmd_inspect,
}


def main(argv: list[str] | None = None) -> int:
    """Run ``python -m pipeline`` with the arguments ``argv``.

    Parameters
    ----------
    argv : list of str, optional
        The arguments after the program's name; default: ``sys.argv[1:]``.

    Returns
    -------
    int
        The exit status: 0 done, 1 done with some clips or files left out, 2 an error (printed
        on one line to stderr; an unexpected exception also with its traceback, so that Make's
        "status 1 is fine" never takes a crash for a finished run). Wrong arguments exit
        through argparse (status 2).
    """
    parser = build_parser(description=__doc__)
    # KEY=VALUE settings may also follow the options (train demo --seeds 3 max_epochs=2).
    args, extra = parser.parse_known_args(argv)
    if extra and hasattr(args, "setting") and all("=" in e for e in extra):
        try:
            args.setting += [key_value(e) for e in extra]
        except argparse.ArgumentTypeError as err:
            parser.error(str(err))
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    from pipeline.data.audio import AudioError
    from pipeline.extract.local import ExtractionError
    from pipeline.stores import StoreError

    try:
        return COMMANDS[args.command](args)
    # A ValueError is an unknown name or a bad setting (dataset, teacher, student, front end,
    # preset, option value); ManifestError, ConfigError and InvalidWeightsError are ValueErrors.
    # MissingWeightsError is a FileNotFoundError, as is a manifest not built yet; an OSError is
    # also a full disk or a folder that cannot be written. A ModuleNotFoundError is a HEAR
    # module or an optional package that is not installed.
    except (
        ValueError,
        OSError,
        ModuleNotFoundError,
        StoreError,
        ExtractionError,
        AudioError,
    ) as err:
        if args.verbose:
            logging.getLogger(__name__).info("traceback of the error", exc_info=True)
        print(f"error: {_one_line(err)}", file=sys.stderr)
        return 2
    except Exception as err:  # a fault of this program: its traceback, and never status 1
        traceback.print_exc()
        print(f"error: unexpected {type(err).__name__} (traceback above)", file=sys.stderr)
        return 2


def _one_line(err: BaseException) -> str:
    """The error's message on one line (its lines joined by '; '), or its type's name."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    return "; ".join(lines) or type(err).__name__


if __name__ == "__main__":
    sys.exit(main())
