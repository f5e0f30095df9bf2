"""One epoch of training, one pass of validation, and the objective both compute.

A training step (:func:`train_one_epoch`): the band-limit jitter (OpenMIC) approximated by
warping the cached log-mels → SpecAugment on each clip → per-clip mixup with the partner the
loader appended → :func:`objective` = (1 − λ)·BCE + λ·regulariser → Adam step with the gradient
norm clipped. Validation (:func:`validate`) computes the same objective without augmentation,
and mAP.

Precision: the student's forward runs under autocast at the run's precision
(:func:`pipeline.devices.autocast`); its logits and features are cast to float32 before the
objective, so losses, gradients of the parameters (float32 themselves) and metrics are float32.
At fp16 a gradient scaler guards the backward pass against underflow.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from pipeline.devices import autocast, resolve_precision
from pipeline.evaluate.metrics import mean_average_precision
from pipeline.extract.frontends import frontend_config
from pipeline.extract.melbanks import jitter_mel_bands
from pipeline.students import Student
from pipeline.train.augment import draw_mixup, mixup, spec_augment
from pipeline.train.config import TrainConfig
from pipeline.train.device_data import Loader, to_device
from pipeline.train.loader import ClipDataset
from pipeline.train.losses import east_loss
from pipeline.train.probe import LinearProbe


def objective(
    cfg: TrainConfig,
    probes: Sequence[LinearProbe],
    logits: torch.Tensor,
    features: torch.Tensor,
    batch: dict[str, Any],
) -> tuple[torch.Tensor, dict[str, float]]:
    """(1 − λ)·BCE + λ·regulariser of a batch on the device, and its parts for logging.

    The regulariser is the teacher term (with KD from the frozen ``probes``, applied to the
    batch's — possibly mixed — embeddings, for EAsT-KD), as :func:`pipeline.train.losses.east_loss`.

    Parameters
    ----------
    cfg : TrainConfig
        λ, regulariser, teacher weights, alignment, KD weight.
    probes : sequence of LinearProbe
        One frozen probe per teacher for KD; empty without KD.
    logits : Tensor, shape (N, C)
        The student's logits.
    features : Tensor, shape (N, Ts, C')
        The student's last-stage features.
    batch : dict
        The batch on the device: ``labels`` and ``mask`` (N, C), ``teachers`` [(N, T_k, D_k)].

    Returns
    -------
    total : Tensor
        The scalar loss.
    logs : dict of str to float
        ``"total"``, ``"bce"`` and the regulariser's parts.
    """
    teacher_logits = None
    if probes:
        teacher_logits = torch.stack(
            [p(t) for p, t in zip(probes, batch["teachers"], strict=True)]
        ).mean(dim=0)
    return east_loss(
        logits,
        batch["labels"],
        batch["mask"],
        features,
        batch["teachers"],
        lam=cfg.regulariser_weight,
        regulariser=cfg.loss,
        teacher_weights=cfg.teacher_weights,
        align_mode=cfg.align,
        time_factors=cfg.time_factors,
        teacher_logits=teacher_logits,
        kd_weight=cfg.kd_weight,
        reg_weight=1.0 - cfg.kd_weight,
    )


def train_one_epoch(
    model: nn.Module,
    loader: Loader,
    optimizer: torch.optim.Optimizer,
    cfg: TrainConfig,
    probes: list[LinearProbe],
    generator: torch.Generator,
    device: torch.device,
    bar: tqdm,
    *,
    scaler: torch.amp.GradScaler | None = None,
    world_size: int = 1,
    max_steps: int | None = None,
) -> dict[str, float]:
    """One pass over this process's part of the training split (at most ``max_steps`` steps).

    ``model`` is a :class:`Student` or one wrapped in ``DistributedDataParallel``. Per batch:
    the band-limit jitter (``band_jitter``), SpecAugment on every clip, then (``mixup_alpha``
    > 0) each clip mixed with the partner the loader appended
    (:class:`pipeline.train.samplers.MixupBatchSampler`), then :func:`objective` on the (local)
    batch.

    Parameters
    ----------
    model : nn.Module
        The student, trained in place.
    loader : Loader
        This process's training batches.
    optimizer : torch.optim.Optimizer
        Steps once per batch.
    cfg : TrainConfig
        Augmentation settings, gradient clipping and the objective's.
    probes : list of LinearProbe
        KD probes (empty without KD).
    generator : torch.Generator
        Source of the augmentation draws (band jitter, SpecAugment, mixup weights).
    device : torch.device
        Where the batches go.
    bar : tqdm
        Progress bar; it counts the clips of all ``world_size`` processes.
    scaler : torch.amp.GradScaler or None
        Scales the loss at fp16 (one that is not enabled, or ``None``, leaves steps as they are).
    world_size : int
        Number of processes.
    max_steps : int or None
        Stop after this many batches; ``None`` = the whole loader.

    Returns
    -------
    dict of str to float
        The mean over this process's steps of each logged loss part.
    """
    model.train()
    mel_config = frontend_config(cfg.frontend)
    precision = resolve_precision(cfg.precision, device)
    scaler = scaler or torch.amp.GradScaler(device.type, enabled=False)
    sums: dict[str, float] = {}
    steps = 0
    for batch in loader if max_steps is None else itertools.islice(loader, max_steps):
        batch = to_device(batch, device)
        if cfg.band_jitter:
            batch["mel"] = jitter_mel_bands(batch["mel"], config=mel_config, generator=generator)
        if cfg.specaug_freq or cfg.specaug_time:
            batch["mel"] = spec_augment(
                batch["mel"],
                freq_mask=cfg.specaug_freq,
                time_mask=cfg.specaug_time,
                fill=mel_config.zero_log_mel,
                generator=generator,
            )
        if cfg.mixup_alpha > 0:
            lam = draw_mixup(len(batch["mel"]) // 2, alpha=cfg.mixup_alpha, generator=generator)
            batch = mixup(batch, lam=lam)

        with autocast(precision, device):
            logits, features = model(batch["mel"])
        loss, logs = objective(cfg, probes, logits.float(), features.float(), batch)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        scaler.step(optimizer)
        scaler.update()

        steps += 1
        for key, value in logs.items():
            sums[key] = sums.get(key, 0.0) + value
        bar.update(len(logits) * world_size)
        rate = bar.format_dict["n"] / max(bar.format_dict["elapsed"], 1e-9)
        bar.set_postfix(loss=f"{sums['total'] / steps:.4f}", clips_s=f"{rate:.1f}")
    return {key: value / max(steps, 1) for key, value in sums.items()}


@torch.no_grad()
def predict_logits(model: Student, loader: DataLoader, device: torch.device) -> torch.Tensor:
    """Logits (N, C) on the CPU, in the loader's order.

    Parameters
    ----------
    model : Student
        Put in eval mode.
    loader : DataLoader
        Batches with ``mel`` (B, n_mels, T).
    device : torch.device
        Where the model is.

    Returns
    -------
    Tensor, shape (N, C), float32
    """
    model.eval()
    return torch.cat([model(batch["mel"].to(device))[0].float().cpu() for batch in loader])


@torch.no_grad()
def validate(
    model: Student,
    loader: Loader,
    cfg: TrainConfig,
    probes: Sequence[LinearProbe],
    device: torch.device,
) -> dict[str, float]:
    """The training objective without augmentation, and mAP, on the loader's split.

    ``"loss"`` is the total (1 − λ)·BCE + λ·regulariser that the schedule and early stopping
    watch; the other parts (``"bce"``, ``"dc"``, ``"kd"``, …) come as logged in training. Each
    is computed per batch (the regulariser compares a batch's clips) and averaged weighted by
    the batches' clip counts, as Lightning's epoch figures are. ``"map"`` is over the split.

    Parameters
    ----------
    model : Student
        Put in eval mode.
    loader : Loader
        The split's batches, over a :class:`pipeline.train.loader.ClipDataset`.
    cfg : TrainConfig
        The objective's settings.
    probes : sequence of LinearProbe
        KD probes (empty without KD).
    device : torch.device
        Where the model is.

    Returns
    -------
    dict of str to float
        ``"loss"``, the other loss parts, and ``"map"``.
    """
    model.eval()
    precision = resolve_precision(cfg.precision, device)
    sums: dict[str, float] = {}
    chunks = []
    for batch in loader:
        batch = to_device(batch, device)
        with autocast(precision, device):
            logits, features = model(batch["mel"])
        logits = logits.float()
        _, logs = objective(cfg, probes, logits, features.float(), batch)
        for key, value in logs.items():
            sums[key] = sums.get(key, 0.0) + value * len(logits)
        chunks.append(logits.float().cpu())
    scores = torch.sigmoid(torch.cat(chunks)).numpy()
    dataset: ClipDataset = loader.dataset  # type: ignore[assignment]
    clips = len(scores)
    return {
        "loss": sums["total"] / clips,
        **{key: value / clips for key, value in sums.items() if key != "total"},
        "map": mean_average_precision(scores, dataset.labels, dataset.mask),
    }
