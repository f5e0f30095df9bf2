"""End-of-epoch decisions of a training run, replayed from its validation history.

The official recipe (PyTorch Lightning callbacks) watches two validation figures each epoch:

* the **total loss** (the training objective without augmentation) drives the learning rate —
  torch's ``ReduceLROnPlateau`` in mode ``min`` with a relative threshold of 1e-4, multiplying
  it by ``factor`` once more than ``plateau_patience`` epochs in a row brought no improvement —
  and **early stopping**, after ``early_stop_patience`` epochs in a row without a strictly
  lower loss (``min_delta`` 0), or at once on a loss that is not finite;
* the **mAP** chooses the kept checkpoint: an epoch is the new best when its mAP is strictly
  higher than every earlier one (the first epoch always is).

:func:`review` derives all three from the history alone, so a resumed run decides exactly as an
uninterrupted one, and the decision can be tested without training anything. The learning rate
comes from torch's own scheduler, replayed on a throwaway optimiser: the one Lightning steps.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Review:
    """What the history so far implies.

    Attributes
    ----------
    lr : learning rate for the next epoch
    stop : early stopping fires after the last epoch
    wait : epochs since the validation loss last fell (0 when the last epoch lowered it)
    best_epoch : 1-based epoch of the highest validation mAP (0 for an empty history)
    """

    lr: float
    stop: bool
    wait: int
    best_epoch: int


def plateau_lr(
    losses: Sequence[float], *, lr: float, factor: float, patience: int, threshold: float = 1e-4
) -> float:
    """Learning rate after torch's ``ReduceLROnPlateau`` (mode min, relative threshold) has
    stepped through ``losses``, starting from ``lr``.

    Parameters
    ----------
    losses : sequence of float
        Validation losses, oldest first.
    lr : float
        The initial learning rate.
    factor, patience, threshold : float, int, float
        Of ``ReduceLROnPlateau``.

    Returns
    -------
    float
        The learning rate for the next epoch.
    """
    param = torch.zeros(1, requires_grad=True)
    optimizer = torch.optim.SGD([param], lr=lr)
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
        optimizer,
        mode="min",
        factor=factor,
        patience=patience,
        threshold=threshold,
        threshold_mode="rel",
    )
    for loss in losses:
        scheduler.step(loss)
    return float(optimizer.param_groups[0]["lr"])


def early_stop_wait(losses: Sequence[float]) -> tuple[int, bool]:
    """Epochs since the loss was last strictly lower than all before it, and divergence.

    Parameters
    ----------
    losses : sequence of float
        Validation losses, oldest first.

    Returns
    -------
    wait : int
        Epochs since the last new lowest loss (counted up to the first non-finite one).
    diverged : bool
        Whether a non-finite loss was seen.
    """
    best, wait = math.inf, 0
    for loss in losses:
        if not math.isfinite(loss):
            return wait, True
        if loss < best:
            best, wait = loss, 0
        else:
            wait += 1
    return wait, False


def best_epoch(maps: Sequence[float]) -> int:
    """1-based epoch of the first strictly highest mAP; a non-finite mAP counts as −∞.

    Parameters
    ----------
    maps : sequence of float
        Validation mAP per epoch, oldest first.

    Returns
    -------
    int
        The epoch; 0 for an empty history.
    """
    best, epoch = -math.inf, 0
    for k, value in enumerate(maps, start=1):
        value = value if math.isfinite(value) else -math.inf
        if epoch == 0 or value > best:
            best, epoch = value, k
    return epoch


def review(
    losses: Sequence[float],
    maps: Sequence[float],
    *,
    lr: float,
    factor: float,
    plateau_patience: int,
    early_stop_patience: int,
) -> Review:
    """Learning rate, early stopping and best epoch after the epochs of a history.

    Parameters
    ----------
    losses, maps :
        Validation total loss and mAP of each epoch so far, oldest first (equal lengths).
    lr :
        The initial learning rate.
    factor, plateau_patience :
        Of ``ReduceLROnPlateau`` on ``losses``.
    early_stop_patience :
        Epochs without a strictly lower loss after which training stops.

    Returns
    -------
    Review

    Raises
    ------
    ValueError
        When ``losses`` and ``maps`` differ in length.
    """
    if len(losses) != len(maps):
        raise ValueError(f"{len(losses)} losses but {len(maps)} mAP values")
    wait, diverged = early_stop_wait(losses)
    return Review(
        lr=plateau_lr(losses, lr=lr, factor=factor, patience=plateau_patience),
        stop=diverged or wait >= early_stop_patience,
        wait=wait,
        best_epoch=best_epoch(maps),
    )
