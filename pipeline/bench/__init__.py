"""Benchmarks: what the embedding cache buys, as ratios measured side by side in one run.

``make bench`` (``python -m pipeline.bench``) runs every benchmark module and writes
``data/bench/results.json`` and ``data/bench/results.md``. Each figure is the ratio of two
timings (or memory peaks) taken in the same process run on the same data, with medians over
repeats: the machines these run on are noisy, so absolute times are context only. Sizes scale
with ``--scale`` (``BENCH_SCALE``), so the test suite runs a tiny smoke version.

A benchmark module offers ``run(ctx: BenchContext) -> list[Figure]``.
"""

from __future__ import annotations

import json
import platform
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from pipeline.fileio import write_text


@dataclass(frozen=True)
class BenchContext:
    """What every benchmark gets.

    Attributes
    ----------
    root : folder for the benchmark's own files (audio corpus, stores, temporary runs); reused
        between runs so the corpus is written once
    scale : multiplies every size; 1.0 is the full benchmark, 0.01 a smoke test
    device : torch device for teachers and students ("cpu", "cuda")
    repeats : timings per measurement; the median is reported
    workers : DataLoader workers / decode jobs where a benchmark uses them
    only : figure IDs asked for (``--only``); None for all. See :meth:`wants`.
    """

    root: Path
    scale: float = 1.0
    device: str = "cpu"
    repeats: int = 3
    workers: int = 1
    only: frozenset[str] | None = None

    def size(self, full: int, minimum: int = 1) -> int:
        """``full`` scaled, at least ``minimum``.

        Parameters
        ----------
        full : int -- the size at scale 1
        minimum : int -- the smallest size returned

        Returns
        -------
        int -- ``max(minimum, round(full * scale))``.
        """
        return max(minimum, round(full * self.scale))

    def wants(self, figure_id: str) -> bool:
        """Whether figure ``figure_id`` is asked for; "P3" also selects variants like "P3-h5".

        Parameters
        ----------
        figure_id : str -- e.g. "P3-h5"

        Returns
        -------
        bool -- True when ``only`` is None, lists ``figure_id`` or its part before "-".
        """
        if self.only is None:
            return True
        return figure_id in self.only or figure_id.split("-")[0] in self.only


@dataclass
class Figure:
    """One row of the results table.

    Attributes
    ----------
    id : e.g. "P1"
    what : one line saying what is compared
    ratio : the measured ratio (None for "report" rows such as S1)
    target : e.g. ">= 20", "<= 1.1", "report"
    numerator, denominator : the two measured quantities with units, e.g. "41.2 s/epoch"
    details : any further numbers (sizes, per-repeat timings, clips/s)
    device : where it ran, e.g. "cpu (2 cores)" or "cuda (NVIDIA H100)"
    """

    id: str
    what: str
    ratio: float | None
    target: str
    numerator: str = ""
    denominator: str = ""
    details: dict[str, Any] = field(default_factory=dict)
    device: str = ""

    @property
    def met(self) -> bool | None:
        """Whether ``ratio`` meets ``target``; None for report-only rows."""
        if self.ratio is None or self.target[:2] not in (">=", "<="):
            return None
        bound = float(self.target[2:])
        return self.ratio >= bound if self.target.startswith(">=") else self.ratio <= bound


def error_figure(figure_id: str, what: str, error: BaseException) -> Figure:
    """A row for a figure that could not be measured: target "error", the cause in details.

    Parameters
    ----------
    figure_id : str -- the row's ID
    what : str -- what the row would have compared
    error : BaseException -- the cause

    Returns
    -------
    Figure -- its ``details`` hold ``error`` (type and message) and the ``traceback``.
    """
    import traceback

    cause = f"{type(error).__name__}: {error}"
    return Figure(
        id=figure_id,
        what=what,
        ratio=None,
        target="error",
        numerator=cause.splitlines()[0][:200],
        details={
            "error": cause,
            "traceback": "".join(traceback.format_exception(error)),
        },
    )


def is_error(figure: Figure) -> bool:
    """Whether ``figure`` is an error row (see :func:`error_figure`).

    Parameters
    ----------
    figure : Figure

    Returns
    -------
    bool
    """
    return figure.target == "error"


def median_seconds(fn: Callable[[], Any], repeats: int, warmup: int = 0) -> tuple[float, list]:
    """Median wall time of ``fn()`` over ``repeats`` calls (after ``warmup`` untimed ones).

    Parameters
    ----------
    fn : callable -- the work to time, called without arguments
    repeats : int >= 1 -- timed calls
    warmup : int >= 0 -- untimed calls first

    Returns
    -------
    median_s : float -- median seconds per call
    times : list of float -- seconds of each timed call, in order
    """
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), times


def measure_cases(
    ctx: BenchContext,
    cases: Sequence[Any],
    measure: Callable[[BenchContext, Any], Figure],
    what: Callable[[Any], str],
) -> list[Figure]:
    """``measure(ctx, case)`` for each case whose ``id`` ``ctx`` asks for, in order.

    A case that raises (missing weights, out of memory, …) becomes an error row described by
    ``what(case)``, and the others still run.

    Parameters
    ----------
    ctx : BenchContext
    cases : sequence -- objects with an ``id``
    measure : callable -- ``measure(ctx, case)`` gives the case's row
    what : callable -- ``what(case)`` describes the case for its error row

    Returns
    -------
    list of Figure -- one per case asked for, in the order of ``cases``.
    """
    figures = []
    for case in cases:
        if not ctx.wants(case.id):
            continue
        try:
            figures.append(measure(ctx, case))
        except Exception as err:
            figures.append(error_figure(case.id, what(case), err))
    return figures


def device_name(device: str) -> str:
    """Readable name of a torch device, with the GPU model or the CPU count.

    Parameters
    ----------
    device : str -- e.g. "cpu", "cuda", "cuda:1"

    Returns
    -------
    str -- e.g. "cuda (NVIDIA H100)" or "cpu (2 cores, x86_64)".
    """
    if device.startswith("cuda") and torch.cuda.is_available():
        return f"cuda ({torch.cuda.get_device_name(torch.device(device))})"
    import os

    return f"cpu ({os.cpu_count()} cores, {platform.processor() or platform.machine()})"


def format_table(figures: list[Figure]) -> str:
    """Markdown table of the figures.

    Parameters
    ----------
    figures : list of Figure

    Returns
    -------
    str -- a header and one row per figure, without a final newline.
    """
    lines = [
        "| id | what | ratio | target | met | measured | against | device |",
        "|---|---|--:|---|---|---|---|---|",
    ]
    for f in figures:
        ratio = "–" if f.ratio is None else f"{f.ratio:.3g}"
        met = {True: "yes", False: "**no**", None: "–"}[f.met]
        lines.append(
            f"| {f.id} | {f.what} | {ratio} | {f.target} | {met} | {f.numerator} | "
            f"{f.denominator} | {f.device} |"
        )
    return "\n".join(lines)


def write_results(figures: list[Figure], out: Path, meta: dict[str, Any]) -> tuple[Path, Path]:
    """``out/results.json`` (figures and run metadata) and ``out/results.md``, each atomically.

    Parameters
    ----------
    figures : list of Figure
    out : Path -- the results folder (created if missing)
    meta : dict -- run metadata, written at the top of ``results.json``

    Returns
    -------
    tuple of Path -- the JSON file and the Markdown file.
    """
    out.mkdir(parents=True, exist_ok=True)
    payload = {
        **meta,
        "figures": [{**asdict(f), "met": f.met} for f in figures],
    }
    json_path, md_path = out / "results.json", out / "results.md"
    write_text(json_path, json.dumps(payload, indent=2) + "\n")
    write_text(md_path, format_table(figures) + "\n")
    return json_path, md_path
