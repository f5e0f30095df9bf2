"""``python -m pipeline.bench``: run the benchmark modules, write and print the results table.

Modules run in the order of :data:`MODULES`, each imported only when its turn comes. A module
that is missing or raises becomes an error row (target "error", the cause in its details) and
the run goes on; the exit status is 1 if any row is an error, else 0. ``--only`` keeps the
figures whose ID is listed ("P3" also keeps variants such as "P3-h5") and skips the modules that
offer none of them.
"""

from __future__ import annotations

import argparse
import datetime
import importlib
import os
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path

import torch

from pipeline.bench import (
    BenchContext,
    Figure,
    device_name,
    error_figure,
    format_table,
    is_error,
    write_results,
)
from pipeline.extract.decode import usable_cores

# Module (under pipeline.bench) → the figure IDs it reports, in running order.
MODULES: dict[str, tuple[str, ...]] = {
    "loading": ("P2", "P3", "P3-h5"),
    "extraction": ("P4",),
    "decoding": ("P7-wav", "P7-flac", "P7-ogg", "P7-mp3"),
    "on_the_fly": ("P1",),
    "scaling": ("P6", "S1"),
    "steps": ("T1",),
    "feeding": ("P9", "P9-cache"),
    "precision": (
        "PR-musicnn",
        "PR-aisfx",
        "PR-panns",
        "PR-vggish",
        "PR-openl3",
        "PR-passt",
        "PR-hear",
    ),
}


def _default_scale() -> float:
    return float(os.environ.get("BENCH_SCALE", "1.0"))


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The command line of ``python -m pipeline.bench``, checked and with defaults filled in.

    Parameters
    ----------
    argv : sequence of str, optional -- the arguments (default: ``sys.argv[1:]``)

    Returns
    -------
    argparse.Namespace -- ``scale``, ``only`` (frozenset of figure IDs or None), ``device``,
    ``repeats``, ``workers``, ``out`` and ``root``; the parser exits on a bad value.
    """
    parser = argparse.ArgumentParser(
        prog="python -m pipeline.bench",
        description="Benchmarks as ratios measured side by side; writes results.json/.md.",
    )
    parser.add_argument(
        "--scale",
        type=float,
        default=None,
        help="multiplies every size: 1 is the full benchmark (default: $BENCH_SCALE or 1)",
    )
    parser.add_argument(
        "--only",
        default=None,
        help="comma-separated figure IDs to run, e.g. P2,P3 (default: all)",
    )
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--repeats", type=int, default=3, help="timed repeats (median)")
    parser.add_argument(
        "--workers",
        type=int,
        default=None,
        help="DataLoader workers / decode jobs (default: the usable CPU cores)",
    )
    parser.add_argument("--out", type=Path, default=Path("data/bench"), help="results folder")
    parser.add_argument(
        "--root", type=Path, default=Path("data/bench/work"), help="corpus and stores folder"
    )
    args = parser.parse_args(argv)
    args.scale = _default_scale() if args.scale is None else args.scale
    args.workers = usable_cores() if args.workers is None else args.workers
    if args.scale <= 0:
        parser.error(f"--scale must be positive, got {args.scale}")
    if args.repeats < 1:
        parser.error(f"--repeats must be at least 1, got {args.repeats}")
    if args.workers < 0:
        parser.error(f"--workers must be non-negative, got {args.workers}")
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device is available")
    if args.only is not None:
        args.only = frozenset(x.strip() for x in args.only.split(",") if x.strip())
        known = {fid for ids in MODULES.values() for fid in ids}
        unknown = sorted(args.only - known - {fid.split("-")[0] for fid in known})
        if unknown:
            parser.error(f"--only: unknown figure IDs {unknown}; known: {sorted(known)}")
    return args


def run_module(name: str, ctx: BenchContext) -> list[Figure]:
    """The figures of module ``pipeline.bench.<name>`` that ``ctx`` asks for, or an error row.

    Parameters
    ----------
    name : str -- a key of :data:`MODULES`
    ctx : BenchContext

    Returns
    -------
    list of Figure -- one error row if the module cannot be imported or its ``run`` raises.
    """
    ids = [fid for fid in MODULES[name] if ctx.wants(fid)]
    try:
        module = importlib.import_module(f"pipeline.bench.{name}")
        figures = list(module.run(ctx))
    except Exception as err:
        return [error_figure("/".join(ids), f"pipeline.bench.{name} failed", err)]
    return [f for f in figures if ctx.wants(f.id)]


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmarks, write ``results.json`` and ``results.md`` and print the table.

    Parameters
    ----------
    argv : sequence of str, optional -- the arguments (default: ``sys.argv[1:]``)

    Returns
    -------
    int -- the exit status: 1 if any figure is an error row, else 0.
    """
    args = parse_args(argv)
    ctx = BenchContext(
        root=args.root,
        scale=args.scale,
        device=args.device,
        repeats=args.repeats,
        workers=args.workers,
        only=args.only,
    )
    ctx.root.mkdir(parents=True, exist_ok=True)
    figures: list[Figure] = []
    for name, ids in MODULES.items():
        if not any(ctx.wants(fid) for fid in ids):
            continue
        print(f"[bench] {name} ({', '.join(f for f in ids if ctx.wants(f))})", flush=True)
        figures.extend(run_module(name, ctx))
    failed = [f.id for f in figures if is_error(f)]
    meta = {
        "scale": ctx.scale,
        "device": device_name(ctx.device),
        "torch": torch.__version__,
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "command": shlex.join(
            [sys.executable, "-m", "pipeline.bench", *(sys.argv[1:] if argv is None else argv)]
        ),
        "cpu_count": usable_cores(),
        "repeats": ctx.repeats,
        "workers": ctx.workers,
        "only": None if ctx.only is None else sorted(ctx.only),
        "failed": failed,
    }
    json_path, md_path = write_results(figures, args.out, meta)
    print(format_table(figures))
    print(f"[bench] wrote {json_path} and {md_path}")
    for figure in figures:
        if is_error(figure):
            print(f"[bench] {figure.id} failed:\n{figure.details['traceback']}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
