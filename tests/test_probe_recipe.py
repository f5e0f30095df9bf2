"""The KD probe follows the official lr_*.json recipe: raw inputs, mean before the linear layer,
batches of 16 (the last one kept), a step limit, and no mean/std state that old probes carried."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from pipeline.train.losses import masked_bce
from pipeline.train.probe import LinearProbe, batchwise_bce, fit_probe


def _data(seed: int, n: int = 100, d: int = 8):
    rng = np.random.default_rng(seed)
    x = (rng.normal(size=(n, d)) * 3 + 10).astype(np.float32)
    y = (x[:, :3] > 10).astype(np.float32)
    return x, y, rng.random(y.shape) < 0.9


def test_probe_averages_over_time_then_applies_one_linear_layer_to_raw_inputs() -> None:
    probe = LinearProbe(5, 3)
    assert set(probe.state_dict()) == {"linear.weight", "linear.bias", "offset", "scale"}
    seq = torch.randn(4, 7, 5) * 4 + 100
    torch.testing.assert_close(probe(seq), probe.linear(seq.mean(dim=1)))  # raw by default
    x, y, m = _data(0)
    raw, _ = fit_probe(x, y, m, x, y, m, max_epochs=2)
    assert raw.offset.eq(0).all() and raw.scale.eq(1).all()


def test_a_standardising_probe_equals_a_raw_probe_on_standardised_inputs() -> None:
    x, y, m = _data(0)
    vx, vy, vm = _data(1)
    probe, info = fit_probe(x, y, m, vx, vy, vm, max_epochs=4, standardise=True, seed=3)
    mean, std = x.mean(axis=0), x.std(axis=0, ddof=1)
    np.testing.assert_allclose(probe.offset.numpy(), mean, rtol=1e-5)
    np.testing.assert_allclose(probe.scale.numpy(), std, rtol=1e-4)
    z = lambda a: ((a - mean) / std).astype(np.float32)  # noqa: E731
    plain, plain_info = fit_probe(z(x), y, m, z(vx), vy, vm, max_epochs=4, seed=3)
    torch.testing.assert_close(probe(torch.as_tensor(vx)), plain(torch.as_tensor(z(vx))))
    assert info["valid_map"] == pytest.approx(plain_info["valid_map"])


def test_a_probe_saved_with_standardisation_statistics_is_refused() -> None:
    old = {**LinearProbe(5, 3).state_dict(), "mean": torch.zeros(5), "std": torch.ones(5)}
    with pytest.raises(RuntimeError, match="Unexpected key"):
        LinearProbe(5, 3).load_state_dict(old)


def test_batches_of_16_with_the_last_one_kept_and_a_step_limit() -> None:
    x, y, m = _data(0)
    vx, vy, vm = _data(1)
    _, info = fit_probe(x, y, m, vx, vy, vm, max_epochs=3)
    assert info["epochs"] == 3 and info["steps"] == 3 * math.ceil(100 / 16)
    _, info = fit_probe(x, y, m, vx, vy, vm, max_steps=10)
    assert (info["steps"], info["epochs"]) == (10, 1)  # the cut second epoch is not validated
    assert 1 <= info["best_epoch"] <= info["epochs"]


def test_validation_loss_is_the_clip_weighted_mean_of_batch_losses() -> None:
    g = torch.Generator().manual_seed(0)
    logits, labels = torch.randn(20, 3, generator=g), (torch.rand(20, 3, generator=g) > 0.5)
    mask = torch.rand(20, 3, generator=g) > 0.3
    parts = [(masked_bce(logits[s], labels[s].float(), mask[s]), len(logits[s])) for s in
             (slice(0, 16), slice(16, 20))]  # fmt: skip
    expected = sum(loss.item() * n for loss, n in parts) / 20
    got = batchwise_bce(logits, labels.float(), mask, batch_size=16)
    assert got == pytest.approx(expected)


def test_the_kept_epoch_is_reported_with_its_figures() -> None:
    x, y, m = _data(2)
    vx, vy, vm = _data(3)
    probe, info = fit_probe(x, y, m, vx, vy, vm, lr=0.2, max_epochs=6, seed=4)
    with torch.no_grad():
        logits = probe(torch.as_tensor(vx))
    assert info["valid_loss"] == pytest.approx(
        batchwise_bce(logits, torch.as_tensor(vy), torch.as_tensor(vm), batch_size=16)
    )
    assert not any(p.requires_grad for p in probe.parameters())
