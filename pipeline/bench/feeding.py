"""P9: training as stage two feeds it ÷ the same training on batches already on the device.

Setup: a corpus of ``ctx.size(256, minimum=32)`` clips of 10 s, its mobile_fcn log-mel store
(made by the real stage one) and a PaSST-shaped teacher store (:mod:`pipeline.bench.stores`).
The student is mobile_fcn with the EAsT distance-correlation term (λ = 0.5), batches of 16 as
in the paper, at the device's default precision (bf16 on a capable GPU, fp32 on the CPU).

Every side trains one pass with the step of :func:`pipeline.train.steps.train_one_epoch` over
the same batches in the same order:

* **resident** (the denominator): every batch built beforehand and held on the device, so the
  step never waits for data — the most any loader could give;
* **P9** — the loader training uses when the splits are not cached
  (:func:`pipeline.train.data.make_loaders` with ``cache_on_device="off"``): ``ctx.workers``
  workers read the stores, pinned memory, each batch copied to the GPU while the previous one
  computes;
* **P9-cache** — ``cache_on_device="on"``: the split held on the device, batches indexed there.

Ratios of clips/s; target >= 0.9 each. One untimed pass per side first (warm-up, worker start,
cuDNN's choice of algorithms), then the median of ``ctx.repeats`` passes, sides in turn.
"""

from __future__ import annotations

import statistics
import time
from typing import Any

import torch

from pipeline.bench import BenchContext, Figure, device_name, error_figure
from pipeline.bench.corpus import make_corpus
from pipeline.bench.epochs import epoch_runner
from pipeline.bench.stores import build_stores
from pipeline.devices import resolve_precision
from pipeline.students import create_student, on_device
from pipeline.train.config import TrainConfig
from pipeline.train.data import make_loaders
from pipeline.train.distributed import Processes
from pipeline.train.loader import ClipDataset

FULL_CLIPS = 256
MIN_CLIPS = 32
CLIP_S = 10.0
BATCH_SIZE = 16
STUDENT = "mobile_fcn"
WHAT = {
    "P9": "training clips/s with the streaming loader ÷ with every batch already on the device",
    "P9-cache": "training clips/s with the splits cached on the device ÷ every batch already there",
}


def _config(ctx: BenchContext, cache: str) -> TrainConfig:
    return TrainConfig(
        dataset="bench",
        student=STUDENT,
        teacher="passt",
        lam=0.5,
        batch_size=BATCH_SIZE,
        workers=ctx.workers,
        device=ctx.device,
        cache_on_device=cache,
    )


def measure(ctx: BenchContext) -> list[Figure]:
    """Time one training pass per side (see the module docstring).

    Parameters
    ----------
    ctx : BenchContext -- ``scale`` sizes the corpus, ``workers`` the streaming loader

    Returns
    -------
    list of Figure -- the rows P9 and P9-cache that ``ctx`` asks for.
    """
    manifest = make_corpus(ctx.root, ctx.size(FULL_CLIPS, minimum=MIN_CLIPS), duration_s=CLIP_S)
    mel_store, teacher_store = build_stores(ctx, manifest, manifest.name)
    dataset = ClipDataset(manifest, "train", mel_store, [teacher_store])
    device = torch.device(ctx.device)
    torch.manual_seed(0)
    model = on_device(
        create_student(STUDENT, n_classes=len(dataset.classes), n_mels=dataset.n_mels), device
    )
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)

    loaders: dict[str, Any] = {}
    for side, cache in (("P9", "off"), ("P9-cache", "on")):
        loader, epochs, _ = make_loaders(
            _config(ctx, cache), dataset, dataset, device, Processes(), say=lambda _: None
        )
        epochs.set_epoch(0)  # the same order on every side and every pass
        loaders[side] = loader
    resident = list(loaders["P9-cache"])  # every batch, built once, on the device
    cfg = _config(ctx, "off")
    passes = {
        "resident": epoch_runner(model, optimizer, cfg, lambda: resident, device),
        **{
            side: epoch_runner(model, optimizer, cfg, lambda ld=loader: ld, device)
            for side, loader in loaders.items()
        },
    }
    clips = len(resident) * BATCH_SIZE
    seconds: dict[str, list[float]] = {side: [] for side in passes}
    for run in passes.values():
        run()  # warm-up
    for _ in range(ctx.repeats):
        for side, run in passes.items():
            start = time.perf_counter()
            run()
            seconds[side].append(time.perf_counter() - start)
    rate = {side: clips / statistics.median(times) for side, times in seconds.items()}
    common = {
        "clips_per_pass": clips,
        "batch_size": BATCH_SIZE,
        "precision": resolve_precision(None, device),
        "workers": ctx.workers,
        "seconds_per_pass": {s: [round(t, 3) for t in times] for s, times in seconds.items()},
    }
    return [
        Figure(
            id=side,
            what=WHAT[side],
            ratio=rate[side] / rate["resident"],
            target=">= 0.9",
            numerator=f"{rate[side]:.1f} clips/s",
            denominator=f"{rate['resident']:.1f} clips/s",
            details=common,
            device=device_name(ctx.device),
        )
        for side in ("P9", "P9-cache")
        if ctx.wants(side)
    ]


def run(ctx: BenchContext) -> list[Figure]:
    """P9 and P9-cache (those ``ctx`` asks for); a failure becomes an error row.

    Parameters
    ----------
    ctx : BenchContext

    Returns
    -------
    list of Figure
    """
    if not (ctx.wants("P9") or ctx.wants("P9-cache")):
        return []
    try:
        return measure(ctx)
    except Exception as err:
        return [error_figure("P9", WHAT["P9"], err)]
