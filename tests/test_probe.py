"""The KD linear probe learns from embeddings, ignores unknown labels, and mixes linearly."""

from __future__ import annotations

import numpy as np
import torch

from pipeline.train.probe import fit_probe

RULE = np.random.default_rng(123).normal(size=(16, 3))


def _embeddings(seed: int, n: int = 200, d: int = 16, w: np.ndarray = RULE):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d)).astype(np.float32) * 5 + 3  # unstandardised on purpose
    y = ((x - 3) @ w > 0).astype(np.float32)
    mask = rng.random(y.shape) < 0.8
    return x, y, mask


def test_probe_learns_a_linear_rule_and_is_frozen() -> None:
    x, y, m = _embeddings(0)
    vx, vy, vm = _embeddings(1)
    probe, info = fit_probe(x, y, m, vx, vy, vm, seed=0)
    assert info["valid_map"] > 0.9
    assert not any(p.requires_grad for p in probe.parameters())


def test_unknown_labels_do_not_change_the_probe() -> None:
    x, y, m = _embeddings(0)
    scrambled = np.where(m, y, 1 - y)
    a, _ = fit_probe(x, y, m, x, y, m, seed=0, max_epochs=5)
    b, _ = fit_probe(x, scrambled, m, x, scrambled, m, seed=0, max_epochs=5)
    assert torch.equal(a.linear.weight, b.linear.weight)


def test_probe_of_mixed_embeddings_is_the_mix_of_logits() -> None:
    x, y, m = _embeddings(0)
    probe, _ = fit_probe(x, y, m, x, y, m, seed=0, max_epochs=3)
    seqs = torch.as_tensor(np.random.default_rng(5).normal(size=(4, 7, 16)), dtype=torch.float32)
    lam = 0.7
    mixed = lam * seqs + (1 - lam) * seqs.flip(0)
    expected = lam * probe(seqs) + (1 - lam) * probe(seqs.flip(0))
    assert torch.allclose(probe(mixed), expected, atol=1e-5)
