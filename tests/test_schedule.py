"""The end-of-epoch decisions replayed from a fake validation history: plateau LR and early
stopping follow the total loss, the kept checkpoint follows mAP (the official Lightning setup)."""

from __future__ import annotations

import math

import pytest
import torch

from pipeline.train.schedule import best_epoch, early_stop_wait, plateau_lr, review

OPENMIC = {"lr": 1e-4, "factor": 0.2, "plateau_patience": 8, "early_stop_patience": 15}


def _lrs(losses, **kw):
    """The learning rate in force after each epoch."""
    return [review(losses[: k + 1], [0.0] * (k + 1), **kw).lr for k in range(len(losses))]


def test_rising_loss_with_rising_map_lowers_lr_and_stops_but_keeps_the_best_map():
    losses = [1.0] + [1.0 + 0.01 * k for k in range(1, 20)]  # only the first epoch is lowest
    maps = [0.5 + 0.01 * k for k in range(20)]  # improves every epoch
    lrs = _lrs(losses, **OPENMIC)
    # 9 epochs without improvement (> patience 8) → ×0.2 after epoch 10; again 9 later.
    assert lrs[:9] == [1e-4] * 9
    assert lrs[9] == pytest.approx(2e-5) and lrs[17] == pytest.approx(2e-5)
    assert lrs[18] == pytest.approx(4e-6)
    stops = [review(losses[:k], maps[:k], **OPENMIC).stop for k in range(1, 21)]
    assert stops.index(True) == 15  # after epoch 16: 15 epochs without a lower loss
    decision = review(losses[:16], maps[:16], **OPENMIC)
    assert decision.wait == 15 and decision.best_epoch == 16  # best.pt per mAP: the last


def test_falling_loss_with_falling_map_keeps_lr_and_the_first_checkpoint():
    losses = [1.0 / (k + 1) for k in range(30)]
    maps = [0.9 - 0.01 * k for k in range(30)]
    decision = review(losses, maps, **OPENMIC)
    assert (decision.lr, decision.stop, decision.wait, decision.best_epoch) == (1e-4, False, 0, 1)


def test_matches_torch_reduce_lr_on_plateau_stepped_live():
    losses = [1.0, 0.9, 0.89995, 0.91, 0.9, 0.95, 0.5, 0.49999, 0.6, 0.7, 0.8, 0.8, 0.8, 0.1]
    param = torch.zeros(1, requires_grad=True)
    optimizer = torch.optim.Adam([param], lr=1e-3)
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, factor=0.1, patience=1)
    for k, loss in enumerate(losses):
        scheduler.step(loss)
        assert plateau_lr(losses[: k + 1], lr=1e-3, factor=0.1, patience=1) == pytest.approx(
            optimizer.param_groups[0]["lr"]
        )


def test_plateau_needs_a_relative_improvement_early_stopping_any():
    # 0.99995 is lower than 1.0, but by less than 1e-4 relative: a plateau epoch for the LR,
    # an improvement for early stopping (min_delta 0).
    losses = [1.0, 0.99995, 0.99991]
    assert plateau_lr(losses, lr=1.0, factor=0.1, patience=1) == pytest.approx(0.1)
    assert early_stop_wait(losses) == (0, False)


def test_early_stopping_counts_epochs_without_a_strictly_lower_loss():
    assert early_stop_wait([3.0, 2.0, 2.0, 2.5]) == (2, False)  # equal is no improvement
    assert early_stop_wait([]) == (0, False)
    probe = {"lr": 0.1, "factor": 0.1, "plateau_patience": 1, "early_stop_patience": 3}
    assert not review([1.0, 1.1, 1.2], [0.1] * 3, **probe).stop
    assert review([1.0, 1.1, 1.2, 1.3], [0.1] * 4, **probe).stop
    assert review([1.0, math.nan], [0.1, 0.2], **probe).stop  # a non-finite loss stops at once


def test_best_epoch_is_the_first_strict_maximum_and_nan_never_wins():
    assert best_epoch([0.3, 0.5, 0.5, 0.4]) == 2
    assert best_epoch([math.nan, 0.1, math.nan]) == 2
    assert best_epoch([]) == 0
    with pytest.raises(ValueError, match="2 losses but 1"):
        review([1.0, 2.0], [0.1], **OPENMIC)
