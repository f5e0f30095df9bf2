"""The two jobs of P6 and S1 (:mod:`pipeline.bench.scaling`), each run in a fresh process.

``python -m pipeline.bench.scaling_jobs extract|train --manifest ... --mel-store ...`` runs one
job and prints ``RESULT <json>``: the job's seconds, clips and resident set before the timed
call, with the memory peaks of the process and its workers
(:func:`pipeline.bench.memory.peaks_mib`), read while the workers are still alive. Heavy modules
are imported inside the jobs, so the parent reads this module's constants cheaply.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pipeline.bench.memory import peaks_mib, rss_kib

BATCH_SIZE = 16
FRONTEND = "mobile_fcn"
JOBS = ("extract", "train")
SHARD_SIZE = 256  # extract()'s default


def job_extract(manifest_path: Path, store: Path, workers: int, device: str) -> dict[str, Any]:
    """extract() of the mel store; returns seconds, clips and the memory before the work.

    An untimed extract() of the first batch into a scratch store comes first: it starts the
    decode workers (joblib keeps them), a fixed cost that would otherwise swamp small N.

    Parameters
    ----------
    manifest_path : Path -- the N clips' manifest
    store : Path -- the mel store to write (overwritten)
    workers : int >= 1 -- decode worker processes
    device : str -- torch device of the mel front end

    Returns
    -------
    dict -- ``seconds`` of the timed extract(), ``clips`` and ``baseline_mib`` (this process's
    resident set just before it).
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
    baseline = rss_kib() / 1024
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
    """One training epoch of mobile_fcn; returns seconds, clips trained and the time to batch 1.

    Parameters
    ----------
    manifest_path : Path -- the N clips' manifest
    mel_store, teacher_store : Path -- complete stores of those clips
    workers : int >= 0 -- DataLoader worker processes
    device : str -- torch device of the training step
    batch_size : int > 0 -- clips per step; the last partial batch is dropped

    Returns
    -------
    dict -- ``seconds`` of the epoch, ``clips`` trained, ``first_batch_s`` (seconds to the first
    batch), ``baseline_mib`` (resident set before the epoch) and ``_keep``, the loader, whose
    persistent workers must stay alive until their peaks are read.
    """
    import torch
    from tqdm.auto import tqdm

    from pipeline.bench.on_the_fly import store_loader
    from pipeline.data.manifest import Manifest
    from pipeline.students import create_student
    from pipeline.train.config import TrainConfig
    from pipeline.train.loader import ClipDataset
    from pipeline.train.steps import train_one_epoch

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

    baseline = rss_kib() / 1024
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
    """Entry point of the child process: run one job, print its result as JSON.

    Parameters
    ----------
    argv : sequence of str, optional -- the job's arguments (default: ``sys.argv[1:]``)
    """
    parser = argparse.ArgumentParser(prog="python -m pipeline.bench.scaling_jobs")
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


if __name__ == "__main__":
    child_main()
