"""Linear probes: a frozen linear classifier on cached teacher embeddings.

As the official ``PretrainedFeatureClassifier``, a probe averages a teacher's embedding sequence
over time and applies one linear layer to the average — for the paper's four teachers the raw
cached embeddings after the teacher's load normalisation only (VGGish (x − 128)/256, OpenL3
x − 2.24, PaSST and PANNs as stored; see :class:`pipeline.train.loader.ClipDataset`). Teachers the
paper did not use have no official load normalisation; their probes standardise each dimension
with the training split's mean and standard deviation first (``standardise=True``; see
:func:`pipeline.train.presets.probe_standardises`): on raw musicnn embeddings (values up to 128) the
official SGD recipe stops far from the optimum (demo test mAP 0.822, against 0.949 standardised).
A probe is the soft-target source of EAsT-KD and, evaluated on the test split, the reference line
of how well the teacher alone does. Being affine, a probe applied to mixed-up embeddings equals
the same mix of its logits, so it can run on the batches the student sees.

Training follows the official ``lr_*.json`` configs: SGD without momentum or weight decay,
batches of 16, gradient norm clipped at 1, the learning rate ×0.1 after a validation loss that
did not improve for more than 1 epoch, stopping after 3 epochs without a lower one (or after
``max_steps`` optimiser steps), keeping the epoch of the best validation mAP
(:func:`pipeline.train.schedule.review`). For a KD run, :func:`kd_probes` fits one probe per
teacher once and keeps it in the run folder.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import Tensor, nn

from pipeline.evaluate.metrics import mean_average_precision
from pipeline.fileio import write_json
from pipeline.train.checkpoints import save_checkpoint
from pipeline.train.config import TrainConfig
from pipeline.train.distributed import Processes, barrier
from pipeline.train.losses import masked_bce
from pipeline.train.presets import probe_standardises
from pipeline.train.schedule import best_epoch, review

if TYPE_CHECKING:
    from pipeline.train.loader import ClipDataset


class LinearProbe(nn.Module):
    """(N, T, D) or (N, D) embeddings → (N, n_classes) logits: time mean, then a linear layer.

    The time mean is shifted by ``offset`` and divided by ``scale`` (buffers, (D,)) before the
    linear layer: 0 and 1 (raw inputs) unless the probe standardises its inputs.
    """

    offset: Tensor
    scale: Tensor

    def __init__(self, n_inputs: int, n_classes: int) -> None:
        super().__init__()
        self.linear = nn.Linear(n_inputs, n_classes)
        self.register_buffer("offset", torch.zeros(n_inputs))
        self.register_buffer("scale", torch.ones(n_inputs))

    def forward(self, embeddings: Tensor) -> Tensor:
        """(N, T, D) or (N, D) embeddings → (N, n_classes) logits."""
        x = embeddings.mean(dim=1) if embeddings.ndim == 3 else embeddings
        return self.linear((x - self.offset) / self.scale)


def batchwise_bce(logits: Tensor, labels: Tensor, mask: Tensor, *, batch_size: int) -> float:
    """Masked BCE of consecutive batches of ``batch_size`` clips, averaged weighted by clips.

    The epoch figure Lightning logs for a validation loss computed per batch.

    Parameters
    ----------
    logits, labels, mask : Tensor, shape (N, C)
        As :func:`pipeline.train.losses.masked_bce`'s.
    batch_size : int
        Clips per batch.

    Returns
    -------
    float
    """
    total = 0.0
    for start in range(0, len(logits), batch_size):
        part = slice(start, start + batch_size)
        loss = masked_bce(logits[part], labels[part], mask[part].bool())
        total += loss.item() * len(logits[part])
    return total / max(len(logits), 1)


def fit_probe(
    train_x: np.ndarray,
    train_y: np.ndarray,
    train_mask: np.ndarray,
    valid_x: np.ndarray,
    valid_y: np.ndarray,
    valid_mask: np.ndarray,
    *,
    lr: float = 0.1,
    max_steps: int = 80_000,
    max_epochs: int | None = None,
    batch_size: int = 16,
    grad_clip: float = 1.0,
    plateau_factor: float = 0.1,
    plateau_patience: int = 1,
    early_stop_patience: int = 3,
    standardise: bool = False,
    seed: int = 0,
) -> tuple[LinearProbe, dict[str, float]]:
    """Train a probe with SGD on masked BCE; keep the epoch with the highest validation mAP.

    Parameters
    ----------
    train_x, valid_x :
        (N, D) time-mean embeddings (the probe's mean over time comes first, so the mean of a
        clip's frames is all it sees).
    train_y, train_mask, valid_y, valid_mask :
        (N, C) labels and known-label masks.
    lr, max_steps, max_epochs, batch_size, grad_clip :
        SGD step size, limits (whichever comes first; an epoch cut short by ``max_steps`` is
        not validated), clips per step, max gradient norm.
    plateau_factor, plateau_patience, early_stop_patience :
        The schedule on the validation loss (:func:`pipeline.train.schedule.review`).
    standardise :
        Standardise each input dimension with ``train_x``'s mean and standard deviation (kept
        in the probe); False = raw inputs, as the official probes.
    seed :
        Seeds the initialisation and the batch order.

    Returns
    -------
    probe : LinearProbe
        In eval mode, frozen.
    info : dict
        ``valid_loss`` and ``valid_map`` of the kept epoch, ``epochs`` and ``steps`` run,
        ``best_epoch`` (1-based).
    """
    generator = torch.Generator().manual_seed(seed)
    x, y, m = (torch.as_tensor(a) for a in (train_x, train_y, train_mask))
    vx, vy, vm = (torch.as_tensor(a) for a in (valid_x, valid_y, valid_mask))
    x, vx, m, vm = x.float(), vx.float(), m.bool(), vm.bool()
    torch.manual_seed(seed)
    probe = LinearProbe(x.shape[1], y.shape[1])
    if standardise:
        probe.offset.copy_(x.mean(dim=0))
        probe.scale.copy_(x.std(dim=0).clamp(min=1e-6) if len(x) > 1 else torch.ones(x.shape[1]))
    optimizer = torch.optim.SGD(probe.parameters(), lr=lr, weight_decay=0.0)
    losses: list[float] = []
    maps: list[float] = []
    best_state, steps = None, 0
    while (max_epochs is None or len(losses) < max_epochs) and steps < max_steps:
        probe.train()
        batches = torch.randperm(len(x), generator=generator).split(batch_size)
        taken = batches[: max_steps - steps]
        for idx in taken:
            loss = masked_bce(probe(x[idx]), y[idx], m[idx])
            optimizer.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(probe.parameters(), grad_clip)
            optimizer.step()
        steps += len(taken)
        if len(taken) < len(batches):
            break
        probe.eval()
        with torch.no_grad():
            logits = probe(vx)
        losses.append(batchwise_bce(logits, vy, vm, batch_size=batch_size))
        maps.append(mean_average_precision(torch.sigmoid(logits).numpy(), valid_y, valid_mask))
        decision = review(
            losses,
            maps,
            lr=lr,
            factor=plateau_factor,
            plateau_patience=plateau_patience,
            early_stop_patience=early_stop_patience,
        )
        for group in optimizer.param_groups:
            group["lr"] = decision.lr
        if decision.best_epoch == len(losses):
            best_state = copy.deepcopy(probe.state_dict())
        if decision.stop:
            break
    if best_state is not None:
        probe.load_state_dict(best_state)
    probe.eval().requires_grad_(False)
    with torch.no_grad():
        logits = probe(vx)
    info = {
        "valid_loss": batchwise_bce(logits, vy, vm, batch_size=batch_size),
        "valid_map": mean_average_precision(torch.sigmoid(logits).numpy(), valid_y, valid_mask),
        "epochs": len(losses),
        "steps": steps,
        "best_epoch": best_epoch(maps),
    }
    return probe, info


def kd_probes(
    cfg: TrainConfig,
    train_set: ClipDataset,
    valid_set: ClipDataset,
    run_dir: Path,
    procs: Processes,
    device: torch.device,
) -> list[LinearProbe]:
    """One frozen linear probe per teacher for KD, trained once and kept in the run folder.

    Rank 0 fits each probe missing from ``run_dir`` (``probe-<teacher>.pt``, its figures in
    ``probe-<teacher>.json``) and loads the others; the other processes then load its files.

    Parameters
    ----------
    cfg : TrainConfig
        Teachers, probe learning rates and step limit, seed.
    train_set, valid_set : ClipDataset
        The splits whose time-mean teacher embeddings the probes are fitted on.
    run_dir : Path
        The run folder.
    procs : Processes
        This process's rank and the number of processes.
    device : torch.device
        Where the probes go.

    Returns
    -------
    list of LinearProbe
        Frozen, in eval mode, in ``cfg.teachers`` order.
    """
    probes: list[LinearProbe] = []
    if procs.main:
        probes = _fit_or_load(cfg, train_set, valid_set, run_dir)
    barrier(procs)
    if not procs.main:
        probes = _fit_or_load(cfg, train_set, valid_set, run_dir)
    return [p.to(device) for p in probes]


def _fit_or_load(
    cfg: TrainConfig, train_set: ClipDataset, valid_set: ClipDataset, run_dir: Path
) -> list[LinearProbe]:
    """The probes of :func:`kd_probes` on the CPU: loaded from ``run_dir``, else fitted there."""
    probes = []
    for k, (teacher, lr) in enumerate(zip(cfg.teachers, cfg.probe_lrs, strict=True)):
        path = run_dir / f"probe-{teacher}.pt"
        probe = LinearProbe(train_set.teacher_shapes[k][1], len(train_set.classes))
        if path.is_file():
            probe.load_state_dict(torch.load(path, weights_only=True))
        else:
            inputs = [dataset.mean_embeddings(k) for dataset in (train_set, valid_set)]
            probe, info = fit_probe(
                inputs[0],
                train_set.labels,
                train_set.mask,
                inputs[1],
                valid_set.labels,
                valid_set.mask,
                lr=lr,
                max_steps=cfg.probe_max_steps,
                standardise=probe_standardises(teacher),
                seed=cfg.seed,
            )
            save_checkpoint(probe.state_dict(), path)
            write_json(path.with_suffix(".json"), info)
            print(f"linear probe on {teacher}: valid mAP {info['valid_map']:.3f}")
        probes.append(probe.eval().requires_grad_(False))
    return probes
