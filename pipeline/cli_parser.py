"""The command line's arguments: one subparser per stage, with its options and help texts.

:mod:`pipeline.cli` parses with :func:`build_parser` and runs the stage it names. Names that
become folder names are checked here (:func:`pipeline.paths.is_safe_name`), so a bad one is a
usage error before anything runs.
"""

from __future__ import annotations

import argparse
import ast
from pathlib import Path
from typing import Any

from pipeline.paths import is_safe_name, store_name

DATA_DIR = Path("data")


def key_value(text: str) -> tuple[str, Any]:
    """A ``KEY=VALUE`` setting: the value as a Python literal where it is one, else the text.

    Parameters
    ----------
    text : str
        ``KEY=VALUE`` with KEY an identifier, e.g. ``lam=0.6`` or ``loss=cosine``.

    Returns
    -------
    tuple of (str, Any)
        The key and the value (``0.6``, ``"cosine"``, ``{'rho': 5}``, …).

    Raises
    ------
    argparse.ArgumentTypeError
        When there is no ``=`` or the key is not an identifier.
    """
    key, sep, raw = text.partition("=")
    if not sep or not key.isidentifier():
        raise argparse.ArgumentTypeError(f"{text!r}: expected KEY=VALUE")
    try:
        return key, ast.literal_eval(raw)
    except (ValueError, SyntaxError):
        return key, raw


def _safe_name(value: str) -> str:
    """Dataset and teacher names become folder names: letters, digits, '-', '_', '.' only."""
    if not is_safe_name(value):
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


def _store_arg(value: str) -> str:
    try:
        return store_name(value)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: expected a positive integer")
    return value


def _failure_limit(text: str) -> float:
    from pipeline.extract.local import check_failure_limit

    try:
        return check_failure_limit(float(text))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected a fraction from 0 to 1") from None


def _add_store_options(p: argparse.ArgumentParser) -> None:
    """Options of the stages that fill a clip store (extract, mels)."""
    from pipeline.extract.local import MAX_FAILED_FRACTION

    p.add_argument("--shard-size", type=int, default=256, help="clips per shard (unit of resume)")
    p.add_argument("--jobs", type=int, help="decode worker processes (default: CPUs − 1)")
    p.add_argument("--max-duration", type=float, help="seconds of each clip to keep")
    p.add_argument(
        "--max-failed",
        type=_failure_limit,
        default=MAX_FAILED_FRACTION,
        metavar="FRACTION",
        help="mark the store complete unless more than this fraction of its clips failed "
        f"(0 to 1, default {MAX_FAILED_FRACTION})",
    )
    p.add_argument("--overwrite", action="store_true", help="delete an existing store first")
    p.add_argument(
        "--hash-audio",
        action="store_true",
        help="record each clip's audio sha256 and, where recorded, let the content decide "
        "whether a clip's audio changed (else: its path, size and modification time)",
    )


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


def build_parser(description: str | None = None) -> argparse.ArgumentParser:
    """The parser of ``python -m pipeline``: one subparser per stage.

    Parameters
    ----------
    description : str, optional
        The program's description in ``--help``.

    Returns
    -------
    argparse.ArgumentParser
        Parsing sets ``command``, the name of the chosen stage, next to its options.
    """
    from pipeline.data.datasets import list_datasets
    from pipeline.devices import AUTO, PRECISIONS
    from pipeline.extract.frontends import list_frontends
    from pipeline.teachers import list_teachers

    parser = argparse.ArgumentParser(prog="pipeline", description=description)
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
        "--precision",
        choices=(AUTO, *PRECISIONS),
        default=AUTO,
        help="arithmetic of the teacher's network (default: auto, bf16 on a GPU that supports "
        "it for a teacher whose bf16 embeddings agree with fp32, else fp32); recorded in the "
        "store, not part of its fingerprint",
    )
    p.add_argument(
        "-o",
        "--option",
        type=key_value,
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

    p = sub.add_parser(
        "train",
        help="stage two: train a student on cached mels and teacher embeddings",
        description="Train a student with the dataset's preset, changed by KEY=VALUE settings "
        "(e.g. teacher=panns+vggish loss=cosine lam=0.6 kd=True student_options={'rho':5}). "
        "A run lives in data/runs/DATASET/ and resumes from its last epoch when started again.",
    )
    p.add_argument("dataset", type=_safe_name)
    p.add_argument("setting", type=key_value, nargs="*", metavar="KEY=VALUE")
    _add_training_options(p)

    p = sub.add_parser(
        "compare",
        help="baseline, EAsT and EAsT-KD over seeds (and label fractions, λ), with 95 %% CIs",
        description="Train the arms of a comparison where their runs are missing (the student "
        "without a teacher, EAsT and EAsT-KD with TEACHER, each with --seeds seeds, for every "
        "label fraction and λ given), evaluate them and write the report with each arm's mean "
        "test mAP, its 95 % confidence interval over seeds and test clips, and the paired "
        "difference to the student without a teacher.",
    )
    p.add_argument("dataset", type=_safe_name)
    p.add_argument("teacher", help="teacher store name(s), '+'-joined for several")
    p.add_argument("setting", type=key_value, nargs="*", metavar="KEY=VALUE")
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

    p = sub.add_parser(
        "paper",
        help="the paper's table: four teachers' probes, baseline, EAsT, EAsT-KD, with seeds",
        description="Train (where missing) and evaluate every run of the paper's table for "
        "openmic or magnatagatune (the teacher stores must exist: make extract), print the "
        "estimated training time first and the published figures beside ours at the end "
        "(data/reports/DATASET/paper.md).",
    )
    p.add_argument("dataset", choices=["openmic", "magnatagatune"])
    p.add_argument("setting", type=key_value, nargs="*", metavar="KEY=VALUE")
    p.add_argument("--seeds", type=_positive_int, default=3, help="seeds per arm (default 3)")
    p.add_argument("--teachers", help="'+'-joined subset of vggish+openl3+passt+panns")
    p.add_argument("--estimate-only", action="store_true", help="print the estimate and stop")
    _add_training_options(p)

    p = sub.add_parser("probes", help="rank teacher stores by linear-probe test mAP (no students)")
    p.add_argument("dataset", type=_safe_name)
    p.add_argument("stores", nargs="*", type=_store_arg, metavar="STORE", help="default: all")
    p.add_argument("--seeds", type=_positive_int, default=3, help="probes per store (default 3)")
    p.add_argument("-q", "--quiet", action="store_true", help="no line per fit")

    p = sub.add_parser(
        "eval",
        help="test-split metrics of every trained run not yet evaluated",
        description="Evaluate each finished run's best checkpoint on the test split "
        "(metrics.json in its folder) and each teacher's linear-probe baseline.",
    )
    p.add_argument("dataset", nargs="?", type=_safe_name, help="only this dataset's runs")
    p.add_argument("--device", help="torch device (default: cuda if available, else cpu)")
    p.add_argument("--no-probes", action="store_true", help="skip the teacher probe baselines")

    p = sub.add_parser(
        "report",
        help="markdown report comparing a dataset's runs (table and plots)",
        description="Write data/reports/DATASET/report.md with a comparison table, training "
        "curves and per-class AP plots, and print the table.",
    )
    p.add_argument("dataset", type=_safe_name)

    p = sub.add_parser(
        "predict",
        help="tag audio files with a trained student",
        description="Tag audio files with the best checkpoint of a run: the student sees "
        "windows as long as its training items (half-overlapping, the last one aligned to the "
        "end) and each file gets the mean of their sigmoid probabilities (--frames: one row "
        "per window, with its start and end in seconds). Exit status 1 when some files could "
        "not be read, 2 when none could.",
    )
    p.add_argument(
        "files",
        nargs="+",
        metavar="FILE",
        help="audio files, folders (searched recursively) or glob patterns such as 'dir/*.wav'",
    )
    _add_run_option(p)
    p.add_argument(
        "--csv", "-o", "--out", type=Path, help="also write every class probability to this CSV"
    )
    p.add_argument(
        "--frames", action="store_true", help="one row per window (file, start_s, end_s, tags)"
    )
    p.add_argument("--top", type=_positive_int, default=5, help="tags shown per file")
    p.add_argument("--batch-size", type=_positive_int, default=16, help="windows per model call")
    p.add_argument("--device", help="torch device (default: cuda if available, else cpu)")

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

    p = sub.add_parser(
        "inspect",
        help="health report of a clip store (teacher embeddings or mels)",
        description="Read a clip store (a .zarr folder or a .h5 export) in chunks and report "
        "its clips, failures, padded clips, frame counts, non-finite values, per-dimension "
        "mean and std, collapsed (constant) dimensions and fingerprint. Exit status 0 when "
        "healthy, 1 when clips failed, values are not finite, dimensions collapsed or the "
        "store is incomplete, 2 when there is no store.",
    )
    p.add_argument("store", type=Path, help="the store, e.g. data/cache/openmic/musicnn.zarr")
    return parser
