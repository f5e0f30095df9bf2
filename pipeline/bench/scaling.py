"""P6 and S1: memory and time per clip as the dataset grows.

For N = 1k, 5k and 10k clips (× ``ctx.scale``, at least 40 / 200 / 400) of 10 s each, over the
same audio files (:func:`pipeline.bench.corpus.make_corpus`: the manifests differ only in N),
two jobs run, each in a fresh Python process so that every peak is its own:

* extraction: :func:`pipeline.extract.local.extract` of the mobile_fcn mel store of the N
  clips, the real stage-one code path with the mel front end as encoder (cheap next to a
  teacher, so what grows with N in extract() itself is not hidden), decoding in ``ctx.workers``
  joblib processes, writing a fresh store (after an untimed one-batch extract() that starts the
  workers);
* training: one epoch of mobile_fcn with the EAsT loss
  (:func:`pipeline.train.steps.train_one_epoch`) over that mel store and a teacher-shaped store of
  random values (:func:`pipeline.bench.stores.build_teacher_store`, 11 × 768 per clip, written
  untimed beforehand), through :class:`pipeline.train.loader.ClipDataset` and the DataLoader
  settings of training (:func:`pipeline.bench.on_the_fly.store_loader`) with ``ctx.workers``
  workers.

Peak memory of a job (:func:`pipeline.bench.memory.peaks_mib`): the peak resident set (VmHWM) of
its process plus that of each of its worker processes, read from ``/proc`` while they are alive
at the end of the job, plus ``ru_maxrss`` of any worker already reaped. Pages a forked worker
shares with its parent count in both, so the sum is an upper bound of what was resident at any
one moment; details hold each part; the peaks include the imports (about 450 MiB of them), so
the details also give each process's resident set just before the timed call. Time: the wall
time of the timed call (extract() or the epoch; the epoch includes starting its DataLoader
workers). The jobs are in :mod:`pipeline.bench.scaling_jobs`.

Rows: "P6-extract" and "P6-train" = peak at the largest N ÷ peak at the smallest (target <= 1.1);
"S1-extract" and "S1-train" = seconds per clip at the largest N ÷ at the smallest (report). Each
job runs ``ctx.repeats`` times (a fresh process each); medians are reported.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

from pipeline.bench import BenchContext, Figure, device_name, error_figure
from pipeline.bench.corpus import make_corpus
from pipeline.bench.scaling_jobs import BATCH_SIZE, FRONTEND, JOBS, SHARD_SIZE

FULL_SIZES = (1000, 5000, 10_000)
MIN_SIZES = (40, 200, 400)
CLIP_S = 10.0
SHARD_NOTE = {
    "shard_size": SHARD_SIZE,
    "shard_note": (
        "extract() holds one shard's results until it writes them, so its peak may grow with N "
        "while N is below one shard, and not beyond"
    ),
}


def sizes(ctx: BenchContext) -> list[int]:
    """The N of each step: ``FULL_SIZES`` scaled, at least ``MIN_SIZES``.

    Parameters
    ----------
    ctx : BenchContext -- its ``scale`` is used

    Returns
    -------
    list of int -- clips per step, smallest first.
    """
    return [ctx.size(f, minimum=m) for f, m in zip(FULL_SIZES, MIN_SIZES, strict=True)]


def run_child(args: list[str]) -> dict[str, Any]:
    """Run one job in a fresh interpreter (same working folder); its ``RESULT`` line, parsed.

    Parameters
    ----------
    args : list of str -- the job name, then its options (see :func:`child_main`)

    Returns
    -------
    dict -- the job's result with the memory peaks of :func:`pipeline.bench.memory.peaks_mib`;
    :class:`RuntimeError` with the end of its stderr if the job fails.
    """
    import pipeline

    env = dict(os.environ)
    repo = str(Path(pipeline.__file__).resolve().parents[1])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (repo, env.get("PYTHONPATH")) if p)
    done = subprocess.run(
        [sys.executable, "-m", "pipeline.bench.scaling_jobs", *args],
        env=env,
        capture_output=True,
        text=True,
    )
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    if done.returncode != 0 or not lines:
        raise RuntimeError(
            f"scaling job {args[0]} failed (exit {done.returncode}):\n{done.stderr[-3000:]}"
        )
    return json.loads(lines[-1].removeprefix("RESULT "))


def _median_run(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Medians of seconds and total peak over repeated runs, with every run kept."""
    return {
        "clips": runs[0]["clips"],
        "seconds": statistics.median(r["seconds"] for r in runs),
        "peak_mib": statistics.median(r["total_mib"] for r in runs),
        "s_per_clip": statistics.median(r["seconds"] / r["clips"] for r in runs),
        "runs": runs,
    }


def measure(ctx: BenchContext) -> dict[str, dict[int, dict[str, Any]]]:
    """Per job and N: medians and the raw runs (see :func:`_median_run`).

    Parameters
    ----------
    ctx : BenchContext

    Returns
    -------
    dict -- job → N → ``clips``, ``seconds``, ``peak_mib``, ``s_per_clip`` and ``runs``.
    """
    from pipeline.bench.stores import build_teacher_store

    results: dict[str, dict[int, dict[str, Any]]] = {job: {} for job in JOBS}
    ns = sizes(ctx)
    batch_size = min(BATCH_SIZE, *ns)  # one batch size for every N
    for n in ns:
        folder = Path(ctx.root) / "scaling" / f"n{n}-{CLIP_S:g}s"
        folder.mkdir(parents=True, exist_ok=True)
        manifest = make_corpus(ctx.root, n, duration_s=CLIP_S)
        manifest_path = manifest.write(folder / "manifest.parquet")
        mel, teacher = folder / f"mel-{FRONTEND}.zarr", folder / "teacher-random.zarr"
        build_teacher_store(manifest, teacher)
        common = ["--manifest", str(manifest_path), "--mel-store", str(mel)]
        common += ["--workers", str(ctx.workers), "--device", ctx.device]
        common += ["--batch-size", str(batch_size)]
        for job in JOBS:
            extra = ["--teacher-store", str(teacher)] if job == "train" else []
            runs = [run_child([job, *common, *extra]) for _ in range(ctx.repeats)]
            results[job][n] = _median_run(runs)
    return results


def figures_from(ctx: BenchContext, results: dict[str, dict[int, dict[str, Any]]]) -> list[Figure]:
    """P6-<job> and S1-<job> rows from :func:`measure`'s results.

    Parameters
    ----------
    ctx : BenchContext -- its ``device`` and ``workers`` are reported
    results : dict -- as :func:`measure` returns it

    Returns
    -------
    list of Figure -- P6-<job> (peak memory ratio) and S1-<job> (seconds per clip ratio) per job.
    """
    device = device_name(ctx.device)
    names = {"extract": "extraction of the mel store", "train": "one training epoch"}
    figures = []
    for job, by_n in results.items():
        ns = sorted(by_n)
        small, large = by_n[ns[0]], by_n[ns[-1]]
        common = {"sizes": ns, "clip_s": CLIP_S, "workers": ctx.workers}
        common["by_n"] = {str(n): by_n[n] for n in ns}
        figures.append(
            Figure(
                id=f"P6-{job}",
                what=f"peak memory of {names[job]}: {ns[-1]} clips ÷ {ns[0]} clips",
                ratio=large["peak_mib"] / small["peak_mib"],
                target="<= 1.1",
                numerator=f"{large['peak_mib']:.0f} MiB at N={ns[-1]}",
                denominator=f"{small['peak_mib']:.0f} MiB at N={ns[0]}",
                details={
                    **common,
                    "peak_mib": {str(n): by_n[n]["peak_mib"] for n in ns},
                    **(SHARD_NOTE if job == "extract" else {}),
                    "peak_note": (
                        "main process + every worker process, each at its own peak (VmHWM / "
                        "ru_maxrss); shared pages count once per process, so an upper bound"
                    ),
                },
                device=device,
            )
        )
        per_clip = {str(n): by_n[n]["s_per_clip"] for n in ns}
        figures.append(
            Figure(
                id=f"S1-{job}",
                what=f"seconds per clip of {names[job]}: {ns[-1]} clips ÷ {ns[0]} clips",
                ratio=large["s_per_clip"] / small["s_per_clip"],
                target="report",
                numerator=f"{large['s_per_clip'] * 1e3:.1f} ms/clip at N={ns[-1]}",
                denominator=(
                    f"{small['s_per_clip'] * 1e3:.1f} ms/clip at N={ns[0]} ("
                    + ", ".join(f"N={n}: {by_n[n]['s_per_clip'] * 1e3:.1f}" for n in ns)
                    + " ms/clip)"
                ),
                details={**common, "s_per_clip": per_clip},
                device=device,
            )
        )
    return figures


def run(ctx: BenchContext) -> list[Figure]:
    """P6-extract, P6-train, S1-extract and S1-train (those ``ctx`` asks for).

    Parameters
    ----------
    ctx : BenchContext

    Returns
    -------
    list of Figure -- error rows for every asked figure if a job fails.
    """
    if not (ctx.wants("P6") or ctx.wants("S1")):
        return []
    try:
        results = measure(ctx)
    except Exception as err:
        ids = [f"{fid}-{job}" for fid in ("P6", "S1") for job in JOBS if ctx.wants(fid)]
        return [error_figure(fid, "scaling with the number of clips", err) for fid in ids]
    return [f for f in figures_from(ctx, results) if ctx.wants(f.id)]
