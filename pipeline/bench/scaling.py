"""P6 and S1: memory and time per clip as the dataset grows.

For N = 1k, 5k and 10k clips (× ``ctx.scale``, at least 40 / 200 / 400) of 10 s each, over the
same audio files (:func:`pipeline.bench.corpus.make_corpus`: the manifests differ only in N),
two jobs run, each in a fresh Python process so that every peak is its own:

* extraction: :func:`pipeline.extract.local.extract` of the mobile_fcn mel store of the N clips, the
  real stage-one code path with the mel front end as encoder (cheap next to a teacher, so what
  grows with N in extract() itself is not hidden), decoding in ``ctx.workers`` joblib processes,
  writing a fresh store (after an untimed one-batch extract() that starts the workers);
* training: one epoch of mobile_fcn with the EAsT loss (:func:`pipeline.train.loop.train_one_epoch`)
  over that mel store and a teacher-shaped store of random values
  (:func:`pipeline.bench.stores.build_teacher_store`, 11 × 768 per clip, written untimed
  beforehand), through :class:`pipeline.train.loader.ClipDataset` and the DataLoader settings of
  training (:func:`pipeline.bench.on_the_fly.store_loader`) with ``ctx.workers`` workers.

Peak memory of a job: the peak resident set (VmHWM) of its process plus that of each of its
worker processes, read from ``/proc`` while they are alive at the end of the job, plus
``ru_maxrss`` of any worker already reaped. Pages a forked worker shares with its parent count
in both, so the sum is an upper bound of what was resident at any one moment; details hold each
part; the peaks include the imports (about 450 MiB of them), so the details also give each
process's resident set just before the timed call. Time: the wall time of the timed call
(extract() or the epoch; the epoch includes starting its DataLoader workers).

Rows: "P6-extract" and "P6-train" = peak at the largest N ÷ peak at the smallest (target <= 1.1);
"S1-extract" and "S1-train" = seconds per clip at the largest N ÷ at the smallest (report). Each
job runs ``ctx.repeats`` times (a fresh process each); medians are reported.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pipeline.bench import BenchContext, Figure, device_name, error_figure
from pipeline.bench.corpus import make_corpus

FULL_SIZES = (1000, 5000, 10_000)
MIN_SIZES = (40, 200, 400)
CLIP_S = 10.0
BATCH_SIZE = 16
FRONTEND = "mobile_fcn"
JOBS = ("extract", "train")
SHARD_SIZE = 256  # extract()'s default
SHARD_NOTE = {
    "shard_size": SHARD_SIZE,
    "shard_note": (
        "extract() holds one shard's results until it writes them, so its peak may grow with N "
        "while N is below one shard, and not beyond"
    ),
}


# -- memory of this process and its workers --------------------------------------------------------
def _children(pid: int) -> list[int]:
    """PIDs of the live descendants of ``pid`` (Linux ``/proc``; empty elsewhere)."""
    parents: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:  # the process ended while we looked
            continue
        ppid = int(text[text.rindex(")") + 2 :].split()[1])
        parents.setdefault(ppid, []).append(int(stat.parent.name))
    found, todo = [], [pid]
    while todo:
        kids = parents.get(todo.pop(), [])
        found += kids
        todo += kids
    return found


def _vm_hwm_kib(pid: int) -> int:
    """Peak resident set of a live process in KiB (``VmHWM``); 0 if it cannot be read."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def _rss_kib() -> int:
    """Current resident set of this process in KiB (``VmRSS``); 0 if it cannot be read."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def peaks_mib() -> dict[str, Any]:
    """Peak memory (MiB) of this process and its workers; call while the workers are alive."""
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    reaped = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    workers = [_vm_hwm_kib(pid) / 1024 for pid in _children(os.getpid())]
    workers = [w for w in workers if w > 0]
    return {
        "main_mib": own,
        "workers_mib": workers,
        "reaped_worker_max_mib": reaped,
        "total_mib": own + sum(workers) + reaped,
    }


# -- the two jobs, run in a child process ---------------------------------------------------------
def job_extract(manifest_path: Path, store: Path, workers: int, device: str) -> dict[str, Any]:
    """extract() of the mel store; returns seconds, clips and the memory before the work.

    An untimed extract() of the first batch into a scratch store comes first: it starts the
    decode workers (joblib keeps them), a fixed cost that would otherwise swamp small N.
    """
    from pipeline.data.manifest import Manifest
    from pipeline.extract.frontends import create_frontend
    from pipeline.extract.local import extract

    manifest = Manifest.read(manifest_path)
    frontend = create_frontend(FRONTEND, device=device)
    first = Manifest(manifest.name, manifest.classes, manifest.clips.iloc[:BATCH_SIZE])
    warmup = store.with_name(store.name + ".warmup")
    options = {"shard_size": SHARD_SIZE, "jobs": workers, "overwrite": True, "progress": False}
    extract(first, frontend, warmup, **options)
    baseline = _rss_kib() / 1024
    start = time.perf_counter()
    summary = extract(manifest, frontend, store, **options)
    seconds = time.perf_counter() - start
    if summary.embedded != len(manifest):
        raise RuntimeError(f"only {summary.embedded} of {len(manifest)} clips extracted")
    return {"seconds": seconds, "clips": len(manifest), "baseline_mib": baseline}


def job_train(
    manifest_path: Path,
    mel_store: Path,
    teacher_store: Path,
    workers: int,
    device: str,
    batch_size: int = BATCH_SIZE,
) -> dict[str, Any]:
    """One training epoch of mobile_fcn; returns seconds, clips trained and the time to batch 1."""
    import torch
    from tqdm.auto import tqdm

    from pipeline.bench.on_the_fly import store_loader
    from pipeline.data.manifest import Manifest
    from pipeline.students import create_student
    from pipeline.train.config import TrainConfig
    from pipeline.train.loader import ClipDataset
    from pipeline.train.loop import train_one_epoch

    manifest = Manifest.read(manifest_path)
    cfg = TrainConfig(
        dataset="bench",
        student="mobile_fcn",
        teacher="passt",  # the teacher store's shape; its values are random
        frontend=FRONTEND,
        batch_size=batch_size,
        workers=workers,
        device=device,
    )
    dev = torch.device(device)
    dataset = ClipDataset(manifest, "train", mel_store, [teacher_store])
    loader, _ = store_loader(dataset, cfg, dev)
    torch.manual_seed(cfg.seed)
    model = create_student("mobile_fcn", n_classes=len(manifest.classes), n_mels=dataset.n_mels)
    model = model.to(dev)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    generator = torch.Generator().manual_seed(cfg.seed)
    first: list[float] = []

    def batches():
        for batch in loader:
            if not first:
                first.append(time.perf_counter())
            yield batch

    baseline = _rss_kib() / 1024
    start = time.perf_counter()
    with tqdm(disable=True) as bar:
        train_one_epoch(model, batches(), optimizer, cfg, [], generator, dev, bar)
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
    seconds = time.perf_counter() - start
    return {
        "seconds": seconds,
        "clips": len(loader) * batch_size,
        "first_batch_s": first[0] - start if first else None,
        "baseline_mib": baseline,
        "_keep": loader,  # persistent workers stay alive until the peaks are read
    }


def child_main(argv: Sequence[str] | None = None) -> None:
    """Entry point of the child process: run one job, print its result as JSON."""
    parser = argparse.ArgumentParser(prog="python -m pipeline.bench.scaling")
    parser.add_argument("job", choices=JOBS)
    parser.add_argument("--manifest", type=Path, required=True)
    parser.add_argument("--mel-store", type=Path, required=True)
    parser.add_argument("--teacher-store", type=Path)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch-size", type=int, default=BATCH_SIZE)
    args = parser.parse_args(argv)
    if args.job == "extract":
        result = job_extract(args.manifest, args.mel_store, args.workers, args.device)
    else:
        result = job_train(
            args.manifest,
            args.mel_store,
            args.teacher_store,
            args.workers,
            args.device,
            args.batch_size,
        )
    keep = result.pop("_keep", None)  # noqa: F841 -- its workers must outlive peaks_mib()
    result.update(peaks_mib())
    print("RESULT " + json.dumps(result), flush=True)


# -- the parent side ----------------------------------------------------------------------------
def sizes(ctx: BenchContext) -> list[int]:
    """The N of each step: ``FULL_SIZES`` scaled, at least ``MIN_SIZES``."""
    return [ctx.size(f, minimum=m) for f, m in zip(FULL_SIZES, MIN_SIZES, strict=True)]


def run_child(args: list[str]) -> dict[str, Any]:
    """Run one job in a fresh interpreter (same working folder); its ``RESULT`` line, parsed."""
    import pipeline

    env = dict(os.environ)
    repo = str(Path(pipeline.__file__).resolve().parents[1])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (repo, env.get("PYTHONPATH")) if p)
    done = subprocess.run(
        [sys.executable, "-m", "pipeline.bench.scaling", *args],
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
    """Per job and N: medians and the raw runs (see :func:`_median_run`)."""
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
    """P6-<job> and S1-<job> rows from :func:`measure`'s results."""
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
    """P6-extract, P6-train, S1-extract and S1-train (those ``ctx`` asks for)."""
    if not (ctx.wants("P6") or ctx.wants("S1")):
        return []
    try:
        results = measure(ctx)
    except Exception as err:
        ids = [f"{fid}-{job}" for fid in ("P6", "S1") for job in JOBS if ctx.wants(fid)]
        return [error_figure(fid, "scaling with the number of clips", err) for fid in ids]
    return [f for f in figures_from(ctx, results) if ctx.wants(f.id)]


if __name__ == "__main__":
    child_main()
