"""Command line: one subcommand per stage (``python -m pipeline <stage> --help``).

Every Make target calls one of these; each is a thin layer over a library function.
"""

from __future__ import annotations

import argparse
import ast
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

from pipeline.paths import manifest_path, read_manifest, rejected_path, store_path

DATA_DIR = Path("data")


def _safe_name(value: str) -> str:
    """Dataset and teacher names become folder names: letters, digits, '-', '_', '.' only."""
    if not value or value.startswith(".") or not all(c.isalnum() or c in "-_." for c in value):
        raise argparse.ArgumentTypeError(
            f"{value!r}: use letters, digits, '-', '_' and '.' (not leading)"
        )
    return value


def _teacher_name(value: str) -> str:
    from pipeline.teachers import check_teacher_name

    try:
        return check_teacher_name(value)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def _key_value(text: str) -> tuple[str, Any]:
    key, sep, raw = text.partition("=")
    if not sep or not key.isidentifier():
        raise argparse.ArgumentTypeError(f"{text!r}: expected KEY=VALUE")
    try:
        return key, ast.literal_eval(raw)
    except (ValueError, SyntaxError):
        return key, raw


def cmd_data(args: argparse.Namespace) -> int:
    from pipeline.data.datasets import build_manifest, list_datasets

    source = args.dataset if args.dataset in list_datasets() else "csv"
    if source == "csv" and args.csv is None:
        raise SystemExit(
            f"unknown dataset {args.dataset!r}: choose one of {list_datasets()} "
            "or give --csv FILE for your own dataset"
        )
    manifest = build_manifest(
        source,
        name=args.dataset,
        root=args.root,
        csv=args.csv,
        split_dir=args.split_dir,
        out_dir=args.data_dir / "datasets" / args.dataset,
        clips=args.clips,
        seed=args.seed,
    )
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
    print(f"{len(manifest.rejected)} rows left out (also in {rejected_csv}):")
    for rejection in manifest.rejected:
        print(f"  rejected {rejection}")
    return 1


def _existing_store(path: Path) -> Any:
    """The store at ``path`` (Zarr folder or HDF5 file), complete or not; None if there is none."""
    from pipeline.stores.zarr_store import StoreError, read_store

    try:
        return read_store(path, require_complete=False)
    except (StoreError, FileNotFoundError):
        return None


def _staleness(store: Path, fingerprint: dict[str, Any], clip_ids: list[str]) -> str:
    """Why an existing store cannot be resumed for these settings and clips ("" if it can, or
    if there is no store): the fingerprint keys that differ, or the clips that differ."""
    from pipeline.data.manifest import clip_difference
    from pipeline.stores.fingerprint import fingerprint_diff

    existing = _existing_store(store)
    if existing is None:
        return ""
    diff = fingerprint_diff(existing.fingerprint, fingerprint)
    if diff:
        return "made with other settings: " + "; ".join(diff)
    other = clip_difference(existing.clip_ids, clip_ids)
    return f"made for other clips than the manifest: {other}" if other else ""


def _is_stale(store: Path, fingerprint: dict[str, Any]) -> bool:
    """Whether a store exists and was made with another fingerprint."""
    from pipeline.stores.fingerprint import fingerprint_diff

    existing = _existing_store(store)
    return existing is not None and bool(fingerprint_diff(existing.fingerprint, fingerprint))


def _failures_path(store: Path) -> Path:
    """``<store>.failures.csv`` next to the store (``musicnn.zarr`` → ``musicnn.failures.csv``)."""
    return store.with_suffix(".failures.csv")


def _write_failures(store: Path, failed: dict[str, str]) -> Path:
    """The failed clips of a store as a CSV table (clip_id, cause), header only if none."""
    import csv
    import io

    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(("clip_id", "cause"))
    writer.writerows(sorted(failed.items()))
    out = _failures_path(store)
    tmp = out.with_name(out.name + ".partial")
    tmp.write_text(text.getvalue(), encoding="utf-8")
    os.replace(tmp, out)
    return out


def _fill_store(encoder: Any, out: Path, args: argparse.Namespace, manifest: Any) -> int:
    """Run extract() for the extract and mels stages and print its summary with a table of the
    failed clips (also written to ``<store>.failures.csv``).

    Returns the exit status: 0 when every clip was embedded, 1 when the store is complete but
    some clips failed. Too many failures raise ExtractionError (exit status 2), after the
    failures table of the shards done so far is written; an OSError while writing the store
    (a full disk) becomes a StoreError naming the store.
    """
    from pipeline.extract.local import ExtractionError, extract
    from pipeline.stores.zarr_store import StoreError

    try:
        if getattr(args, "engine", "local") == "ray":
            summary = _extract_on_ray(encoder, out, args, manifest)
        else:
            summary = extract(manifest, encoder, out, **_store_options(args))
    except ExtractionError:
        existing = _existing_store(out)
        if existing is not None:
            _write_failures(out, existing.failures())
        raise
    except OSError as err:
        if isinstance(err, FileNotFoundError) and not out.exists():
            raise
        raise StoreError(
            f"{out}: writing the store failed{_shard_of(err, out)} ({_os_error(err)}); the "
            "shards done so far are kept: free space or fix the cause and run the same command "
            "again to resume"
        ) from err
    table = _write_failures(out, summary.failed)
    head, *_ = str(summary).splitlines()
    print(head)
    if summary.failed:
        width = min(40, max(len("clip"), *(len(c) for c in summary.failed)))
        print(f"{len(summary.failed)} clips failed (also in {table}):")
        print(f"  {'clip':<{width}}  cause")
        for clip, cause in sorted(summary.failed.items()):
            print(f"  {clip:<{width}}  {cause}")
    for clip, note in sorted(summary.padded.items()):
        print(f"  padded {clip}: {note}")
    return 1 if summary.failed else 0


def _os_error(err: OSError) -> str:
    text = err.strerror or str(err)
    return f"{text}: {err.filename}" if err.filename else text


def _shard_of(err: OSError, store: Path) -> str:
    """' in shard K' when the failed write's file name shows which shard it was, else ''."""
    import re

    name = str(err.filename or "")
    if not name.startswith(str(store)):
        return ""
    found = re.search(r"[/\\]data[/\\]c[/\\](\d+)[/\\]", name) or re.search(
        r"shard-(\d+)\.json", name
    )
    return f" in shard {int(found.group(1))}" if found else ""


def _extract_on_ray(teacher: Any, out: Path, args: argparse.Namespace, manifest: Any):
    from pipeline.extract.ray_engine import extract_ray

    options = {k: v for k, v in _store_options(args).items() if k != "jobs"}
    return extract_ray(
        manifest,
        args.teacher,
        out,
        teacher=teacher,
        teacher_options={"weights": args.weights, **dict(args.option)},
        address=args.ray_address,
        actors=args.actors,
        gpus_per_actor=args.gpus_per_actor,
        **options,
    )


def cmd_extract(args: argparse.Namespace) -> int:
    import torch

    from pipeline.teachers import create_teacher

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if args.engine == "ray":
        device = "cpu"  # this copy only checks the weights and settings; Ray's actors embed
    manifest = read_manifest(args.data_dir, args.dataset)
    teacher = create_teacher(args.teacher, weights=args.weights, device=device, **dict(args.option))
    out = store_path(args.data_dir, args.dataset, args.name or args.teacher)
    if args.replace_stale and not args.overwrite:
        why = _staleness(out, teacher.fingerprint(), manifest.clip_ids)
        if why:
            print(f"{out} was {why}: extracting it again")
            args.overwrite = True
    return _fill_store(teacher, out, args, manifest)


def _store_options(args: argparse.Namespace) -> dict[str, Any]:
    """extract()'s keyword arguments from the options of :func:`_add_store_options`."""
    return {
        "batch_size": args.batch_size,
        "shard_size": args.shard_size,
        "jobs": args.jobs,
        "max_duration_s": args.max_duration,
        "overwrite": args.overwrite,
        "progress": not args.quiet,
    }


def build_mels(data_dir: Path, dataset: str, frontend_name: str, **options: Any):
    """Compute (or finish) the mel store of a dataset; see ``pipeline.extract.local.extract``."""
    from pipeline.extract.frontends import create_frontend
    from pipeline.extract.local import extract
    from pipeline.paths import mel_store_name

    manifest = read_manifest(data_dir, dataset)
    frontend = create_frontend(frontend_name, device=options.pop("device", None) or "cpu")
    out = store_path(data_dir, dataset, mel_store_name(frontend_name))
    return extract(manifest, frontend, out, **options)


def cmd_mels(args: argparse.Namespace) -> int:
    from pipeline.extract.frontends import create_frontend
    from pipeline.paths import mel_store_name

    manifest = read_manifest(args.data_dir, args.dataset)
    frontend = create_frontend(args.frontend, device=args.device or "cpu")
    out = store_path(args.data_dir, args.dataset, mel_store_name(args.frontend))
    return _fill_store(frontend, out, args, manifest)


def _prepare_mels(args: argparse.Namespace, cfg: Any) -> None:
    """Build (or rebuild, when stale) the mel store ``cfg`` reads, on the first process only."""
    from pipeline.extract.frontends import create_frontend
    from pipeline.paths import locate_store, mel_store_name

    manifest = read_manifest(args.data_dir, cfg.dataset)
    mel_store = locate_store(args.data_dir, cfg.dataset, mel_store_name(cfg.frontend))
    # A mel store is derived from the manifest and the front end alone: one made with other
    # front-end settings or for other clips is computed again (saying why), never mixed.
    stale = _staleness(mel_store, create_frontend(cfg.frontend).fingerprint(), manifest.clip_ids)
    existing = _existing_store(mel_store)
    # Under torchrun only the first process builds the mels; the others wait for it when they
    # join the process group in train().
    first_process = os.environ.get("RANK", "0") == "0"
    if first_process and (stale or existing is None or not existing.is_complete):
        if stale:
            print(f"{mel_store} was {stale}: computing it again")
        else:
            print(f"computing the {cfg.frontend} mel store first")
        summary = build_mels(
            args.data_dir,
            cfg.dataset,
            cfg.frontend,
            overwrite=bool(stale),
            progress=not args.quiet,
        )
        print(summary)


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    overrides = dict(args.setting)
    if args.device:
        overrides["device"] = args.device
    if args.workers is not None:
        overrides["workers"] = args.workers
    return overrides


def cmd_train(args: argparse.Namespace) -> int:
    from pipeline.train.config import train_config
    from pipeline.train.loop import train

    cfg = train_config(args.dataset, preset=args.preset, **_overrides(args))
    _prepare_mels(args, cfg)
    train(cfg, args.data_dir, progress=not args.quiet)
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from pipeline.evaluate.compare import check_settings, comparison_configs, run_comparison

    settings = _overrides(args)
    check_settings(settings)
    configs = comparison_configs(
        args.dataset,
        teacher=args.teacher,
        seeds=args.seeds,
        label_fractions=args.label_fractions,
        lambdas=args.lambdas or [None],
        kd=not args.no_kd,
        preset=args.preset,
        **settings,
    )
    _prepare_mels(args, configs[0])
    text = run_comparison(args.data_dir, configs, device=args.device, progress=not args.quiet)
    if text:
        print("\n" + text)
    return 0


def cmd_paper(args: argparse.Namespace) -> int:
    from pipeline.evaluate.compare import check_settings, run_comparison
    from pipeline.evaluate.paper import (
        PAPER_TEACHERS,
        estimate_hours,
        paper_configs,
        write_paper_table,
    )

    settings = _overrides(args)
    check_settings(settings)
    teachers = args.teachers.split("+") if args.teachers else PAPER_TEACHERS
    configs = paper_configs(
        args.dataset, seeds=args.seeds, teachers=teachers, preset=args.preset, **settings
    )
    _prepare_mels(args, configs[0])
    first_process = os.environ.get("RANK", "0") == "0"
    if first_process:
        _, line = estimate_hours(args.data_dir, configs)
        print(f"training plan: {line}")
    if args.estimate_only:
        return 0
    run_comparison(args.data_dir, configs, device=args.device, progress=not args.quiet)
    if first_process:
        out, text = write_paper_table(args.data_dir, args.dataset, configs)
        print("\n" + text + f"\n{out}")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from pipeline.evaluate.evaluation import evaluate_all

    lines = evaluate_all(args.data_dir, args.dataset, device=args.device, probes=not args.no_probes)
    print("\n".join(lines) if lines else "no trained run to evaluate")
    return 0


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: expected a positive integer")
    return value


def cmd_predict(args: argparse.Namespace) -> int:
    import warnings

    from pipeline.inference.predict import FrontEndChangedWarning, RunError, load_run

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
    if len(result.table):
        print(result.format_table(k=args.top))
    for file, cause in result.failures.items():
        print(f"error: {file}: {cause}", file=sys.stderr)
    if args.csv is not None:
        out = result.to_csv(args.csv)
        print(f"{out}: probabilities of {len(result.table)} files")
    if not len(result.table):
        return 2
    return 1 if result.failures else 0


def cmd_onnx(args: argparse.Namespace) -> int:
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


def cmd_report(args: argparse.Namespace) -> int:
    from pipeline.evaluate.arms import compare_runs
    from pipeline.evaluate.comparison_report import comparison_text
    from pipeline.evaluate.report import collect_runs, comparison_table, write_report
    from pipeline.paths import runs_path

    runs = runs_path(args.data_dir, args.dataset)
    if not runs.is_dir():
        raise FileNotFoundError(f"no runs for dataset {args.dataset!r} in {runs}: train first")
    out = write_report(runs, args.data_dir / "reports" / args.dataset)
    print(comparison_table(collect_runs(runs), base=Path.cwd()))
    comparison = comparison_text(compare_runs(runs))
    if comparison:
        print("\n" + comparison)
    print(f"\nreport: {out}")
    return 0


def _store_arg(value: str) -> str:
    from pipeline.paths import store_name

    try:
        return store_name(value)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def _disk_mb(path: Path) -> float:
    """Bytes on disk of a file or of every file under a folder, in MB."""
    files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
    return sum(p.stat().st_size for p in files) / 1e6


def cmd_export(args: argparse.Namespace) -> int:
    from pipeline.paths import h5_store_path
    from pipeline.stores.h5_store import export_h5
    from pipeline.stores.zarr_store import read_store

    source = store_path(args.data_dir, args.dataset, args.store)
    out = args.out or h5_store_path(args.data_dir, args.dataset, args.store)
    out = export_h5(source, out, progress=not args.quiet)
    n = len(read_store(out))
    print(
        f"{out}: {n} clips, {_disk_mb(out):.1f} MB (Zarr store {source}: {_disk_mb(source):.1f} MB)"
    )
    return 0


def _add_store_options(p: argparse.ArgumentParser) -> None:
    """Options of the stages that fill a clip store (extract, mels)."""
    p.add_argument("--shard-size", type=int, default=256, help="clips per shard (unit of resume)")
    p.add_argument("--jobs", type=int, help="decode worker processes (default: CPUs − 1)")
    p.add_argument("--max-duration", type=float, help="seconds of each clip to keep")
    p.add_argument("--overwrite", action="store_true", help="delete an existing store first")


def _add_training_options(p: argparse.ArgumentParser) -> None:
    """Options of the stages that train (train, compare, paper)."""
    p.add_argument("--preset", help="hyper-parameter preset (default: the dataset's)")
    p.add_argument("--device", help="torch device (default: cuda if available, else cpu)")
    p.add_argument("--workers", type=int, help="loader worker processes")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")


def _add_run_option(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--run",
        dest="run_dir",
        required=True,
        type=Path,
        metavar="RUN_DIR",
        help="run folder (data/runs/DATASET/RUN) or its best.pt",
    )


def build_parser() -> argparse.ArgumentParser:
    from pipeline.data.datasets import list_datasets
    from pipeline.teachers import list_teachers

    parser = argparse.ArgumentParser(prog="pipeline", description=__doc__)
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=DATA_DIR,
        help="root of everything generated (default: %(default)s)",
    )
    parser.add_argument("-v", "--verbose", action="store_true")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser(
        "data",
        help="build a dataset manifest",
        description="Build data/manifests/DATASET.parquet from a release.",
    )
    p.add_argument(
        "dataset",
        type=_safe_name,
        help=f"one of {', '.join(list_datasets())}, or any name with --csv",
    )
    p.add_argument("--root", type=Path, help="release folder (openmic, magnatagatune)")
    p.add_argument(
        "--csv", type=Path, help="your own CSV: clip_id, path, split, one column per class"
    )
    p.add_argument(
        "--split-dir",
        type=Path,
        help="magnatagatune: folder with the cleaned top-50 split (tags.npy, binary.npy, "
        "train.npy, valid.npy, test.npy)",
    )
    p.add_argument("--clips", type=int, help="demo: number of clips to render")
    p.add_argument("--seed", type=int, help="demo: random seed; openmic: validation split seed")
    p.set_defaults(run=cmd_data)

    p = sub.add_parser(
        "extract",
        help="stage one: teacher embeddings into a clip store",
        description="Embed every clip of a manifest with a teacher into "
        "data/cache/DATASET/TEACHER.zarr; resumes an interrupted run.",
    )
    p.add_argument("dataset", type=_safe_name)
    p.add_argument(
        "teacher",
        type=_teacher_name,
        help=f"one of {', '.join(list_teachers())} (any HEAR 2021 API module)",
    )
    p.add_argument("--weights", help="teacher weights file (default: env var, then package cache)")
    p.add_argument("--device", help="torch device (default: cuda if available, else cpu)")
    p.add_argument(
        "-o",
        "--option",
        type=_key_value,
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="teacher option, e.g. layer=penultimate",
    )
    p.add_argument(
        "--name", type=_safe_name, help="store name (default: the teacher's name, ':' → '-')"
    )
    p.add_argument("--batch-size", type=int, default=16, help="clips per teacher call")
    _add_store_options(p)
    p.add_argument(
        "--replace-stale",
        action="store_true",
        help="extract afresh when the store was made with other settings (else resume)",
    )
    p.add_argument(
        "--engine",
        choices=("local", "ray"),
        default="local",
        help="local: this machine; ray: a Ray cluster (the same store, value for value)",
    )
    p.add_argument(
        "--ray-address",
        help="ray: cluster to join, e.g. auto (default: $RAY_ADDRESS, else a local instance)",
    )
    p.add_argument("--actors", type=int, help="ray: teacher actors (default: one per GPU, else 1)")
    p.add_argument(
        "--gpus-per-actor",
        type=float,
        help="ray: GPUs per teacher actor (default: 1 if the cluster has GPUs, else 0)",
    )
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.set_defaults(run=cmd_extract)

    from pipeline.extract.frontends import list_frontends

    p = sub.add_parser(
        "mels",
        help="log-mel spectrograms of every clip into a clip store",
        description="Compute the mel front end of every clip of a manifest into "
        "data/cache/DATASET/mel-FRONTEND.zarr; resumes an interrupted run.",
    )
    p.add_argument("dataset", type=_safe_name)
    p.add_argument("--frontend", choices=list_frontends(), default="cp_resnet")
    p.add_argument("--device", help="torch device (default: cpu)")
    p.add_argument("--batch-size", type=int, default=16, help="clips per decode task")
    _add_store_options(p)
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.set_defaults(run=cmd_mels)

    p = sub.add_parser(
        "export",
        help="copy a finished clip store into one HDF5 file",
        description="Convert data/cache/DATASET/STORE.zarr into one HDF5 file (default "
        "data/cache/DATASET/STORE.h5) with the same arrays and attributes, to share the cache "
        "or read it with other tools. Training and evaluation use STORE.h5 when there is no "
        "STORE.zarr.",
    )
    p.add_argument("dataset", type=_safe_name)
    p.add_argument(
        "store", type=_store_arg, help="store name, e.g. musicnn or mel-mobile_fcn (':' → '-')"
    )
    p.add_argument("--format", choices=["h5"], default="h5", help="output format")
    p.add_argument("--out", type=Path, help="output file (default: next to the Zarr store)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.set_defaults(run=cmd_export)

    p = sub.add_parser(
        "train",
        help="stage two: train a student on cached mels and teacher embeddings",
        description="Train a student with the dataset's preset, changed by KEY=VALUE settings "
        "(e.g. teacher=panns+vggish loss=cosine lam=0.6 kd=True student_options={'rho':5}). "
        "A run lives in data/runs/DATASET/ and resumes from its last epoch when started again.",
    )
    p.add_argument("dataset", type=_safe_name)
    p.add_argument("setting", type=_key_value, nargs="*", metavar="KEY=VALUE")
    _add_training_options(p)
    p.set_defaults(run=cmd_train)

    p = sub.add_parser(
        "compare",
        help="baseline, EAsT and EAsT-KD over seeds (and label fractions, λ), with 95 % CIs",
        description="Train the arms of a comparison where their runs are missing (the student "
        "without a teacher, EAsT and EAsT-KD with TEACHER, each with --seeds seeds, for every "
        "label fraction and λ given), evaluate them and write the report with each arm's mean "
        "test mAP, its 95 %% confidence interval over seeds and test clips, and the paired "
        "difference to the student without a teacher.",
    )
    p.add_argument("dataset", type=_safe_name)
    p.add_argument("teacher", help="teacher store name(s), '+'-joined for several")
    p.add_argument("setting", type=_key_value, nargs="*", metavar="KEY=VALUE")
    p.add_argument("--seeds", type=_positive_int, default=3, help="seeds per arm (default 3)")
    p.add_argument(
        "--label-fractions",
        type=float,
        nargs="+",
        default=[1.0],
        metavar="F",
        help="fractions of training clips that keep their labels (default 1)",
    )
    p.add_argument("--lambdas", type=float, nargs="+", metavar="λ", help="λ values of EAsT")
    p.add_argument("--no-kd", action="store_true", help="leave out the EAsT-KD arm")
    _add_training_options(p)
    p.set_defaults(run=cmd_compare)

    p = sub.add_parser(
        "paper",
        help="the paper's table: four teachers' probes, baseline, EAsT, EAsT-KD, with seeds",
        description="Train (where missing) and evaluate every run of the paper's table for "
        "openmic or magnatagatune (the teacher stores must exist: make extract), print the "
        "estimated training time first and the published figures beside ours at the end "
        "(data/reports/DATASET/paper.md).",
    )
    p.add_argument("dataset", choices=["openmic", "magnatagatune"])
    p.add_argument("setting", type=_key_value, nargs="*", metavar="KEY=VALUE")
    p.add_argument("--seeds", type=_positive_int, default=3, help="seeds per arm (default 3)")
    p.add_argument("--teachers", help="'+'-joined subset of vggish+openl3+passt+panns")
    p.add_argument("--estimate-only", action="store_true", help="print the estimate and stop")
    _add_training_options(p)
    p.set_defaults(run=cmd_paper)

    p = sub.add_parser(
        "eval",
        help="test-split metrics of every trained run not yet evaluated",
        description="Evaluate each finished run's best checkpoint on the test split "
        "(metrics.json in its folder) and each teacher's linear-probe baseline.",
    )
    p.add_argument("dataset", nargs="?", type=_safe_name, help="only this dataset's runs")
    p.add_argument("--device", help="torch device (default: cuda if available, else cpu)")
    p.add_argument("--no-probes", action="store_true", help="skip the teacher probe baselines")
    p.set_defaults(run=cmd_eval)

    p = sub.add_parser(
        "report",
        help="markdown report comparing a dataset's runs (table and plots)",
        description="Write data/reports/DATASET/report.md with a comparison table, training "
        "curves and per-class AP plots, and print the table.",
    )
    p.add_argument("dataset", type=_safe_name)
    p.set_defaults(run=cmd_report)

    p = sub.add_parser(
        "predict",
        help="tag audio files with a trained student",
        description="Tag audio files with the best checkpoint of a run: the student sees "
        "windows as long as its training items (half-overlapping, the last one aligned to the "
        "end) and each file gets the mean of their sigmoid probabilities. Exit status 1 when "
        "some files could not be read, 2 when none could.",
    )
    p.add_argument("files", nargs="+", metavar="FILE", help="audio files to tag")
    _add_run_option(p)
    p.add_argument("--csv", type=Path, help="also write every class probability to this CSV")
    p.add_argument("--top", type=_positive_int, default=5, help="tags shown per file")
    p.add_argument("--batch-size", type=_positive_int, default=16, help="windows per model call")
    p.add_argument("--device", help="torch device (default: cuda if available, else cpu)")
    p.set_defaults(run=cmd_predict)

    p = sub.add_parser(
        "onnx",
        help="export a trained student with its front end to ONNX",
        description="Write the run's best checkpoint, mel front end included, as one ONNX file: "
        "mono waveform (batch, samples) in, tag probabilities (batch, classes) out; the "
        "metadata names the sample rate, the window length and the classes. Checked against "
        "PyTorch with ONNX Runtime.",
    )
    _add_run_option(p)
    p.add_argument("-o", "--out", type=Path, help="ONNX file (default: RUN_DIR/student.onnx)")
    p.add_argument(
        "--no-check", dest="check", action="store_false", help="skip the ONNX Runtime check"
    )
    p.set_defaults(run=cmd_onnx)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    # KEY=VALUE settings may also follow the options (train demo --seeds 3 max_epochs=2).
    args, extra = parser.parse_known_args(argv)
    if extra and hasattr(args, "setting") and all("=" in e for e in extra):
        try:
            args.setting += [_key_value(e) for e in extra]
        except argparse.ArgumentTypeError as err:
            parser.error(str(err))
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    from pipeline.data.audio import AudioError
    from pipeline.data.manifest import ManifestError
    from pipeline.extract.local import ExtractionError
    from pipeline.stores.zarr_store import StoreError
    from pipeline.teachers import InvalidWeightsError
    from pipeline.train.config import ConfigError

    try:
        return args.run(args)
    # MissingWeightsError is a FileNotFoundError, as is a manifest not built yet; an OSError
    # is also a full disk or a folder that cannot be written.
    except (
        ManifestError,
        StoreError,
        OSError,
        InvalidWeightsError,
        ExtractionError,
        AudioError,
        ConfigError,
    ) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
