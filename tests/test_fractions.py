"""The label-scarce regime: ``labelled_subset`` and ``TrainConfig.label_fraction``."""

from __future__ import annotations

import itertools
import json
import math
from pathlib import Path

import numpy as np
import pytest
from command_line import run_cli

from pipeline.data.fractions import SUBSET_STREAM, labelled_subset
from pipeline.train.config import ConfigError, train_config

FRACTIONS = (0.1, 0.25, 0.5, 1.0)
SEEDS = (0, 1, 1223, 2024)

# TrainConfig digests from before label_fraction existed: run names must not change.
# The demo preset of 20 epochs, before label_fraction existed.
DEMO_MUSICNN_DIGEST = "53877c4901e07981a58c799d4f14364fc0a7b85bf69ad44a9bdfb3744c098f83"
OPENMIC_DIGEST = "efdaab0c67ff165f806bd0f483f6ce094e80ad514906a8773861cd8bd39c8af8"


@pytest.fixture(scope="module")
def matrix() -> tuple[np.ndarray, np.ndarray]:
    """(500, 8) labels and mask: some unknown labels, class 7 with only 3 known positives."""
    rng = np.random.default_rng(7)
    n, c = 500, 8
    labels = (rng.random((n, c)) < np.linspace(0.05, 0.5, c)).astype(np.float32)
    labels[:, 7] = 0.0
    labels[rng.choice(n, 6, replace=False), 7] = 1.0
    mask = rng.random((n, c)) < 0.7
    mask[np.flatnonzero(labels[:, 7])[:3], 7] = False  # half the rare positives are unknown
    labels[~mask] = 0.0  # as the manifest gives them
    assert ((labels[:, 7] > 0) & mask[:, 7]).sum() == 3
    return labels, mask


def test_every_class_keeps_its_share_of_positives(matrix) -> None:
    labels, mask = matrix
    positives = (labels > 0.5) & mask
    for seed in SEEDS:
        for fraction in (0.01, *FRACTIONS):
            keep = labelled_subset(labels, mask, fraction=fraction, seed=seed)
            assert keep.dtype == bool and keep.shape == (len(labels),)
            for c in range(labels.shape[1]):
                n_c = int(positives[:, c].sum())
                kept = int(positives[keep, c].sum())
                assert kept >= max(1, math.floor(fraction * n_c)), (seed, fraction, c)


def test_same_seed_same_subset_other_seed_other_subset(matrix) -> None:
    labels, mask = matrix
    a = labelled_subset(labels, mask, fraction=0.25, seed=1223)
    b = labelled_subset(labels.copy(), mask.copy(), fraction=0.25, seed=1223)
    c = labelled_subset(labels, mask, fraction=0.25, seed=1224)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


@pytest.mark.parametrize("seed", SEEDS)
def test_subsets_are_nested_across_fractions(matrix, seed: int) -> None:
    labels, mask = matrix
    subsets = [labelled_subset(labels, mask, fraction=f, seed=seed) for f in FRACTIONS]
    for smaller, larger in itertools.pairwise(subsets):
        assert not (smaller & ~larger).any()
        assert smaller.sum() < larger.sum()


def test_size_is_close_to_the_fraction(matrix) -> None:
    """At least round(f·N); beyond that only positives the class guarantees add.

    Not bounded by round(f·N) + C: a class's first floor(f·n_c) positives may lie past the
    first round(f·N) clips by chance (about sqrt(f(1-f)·n_c) of them), so the slack allows
    C + Σ 2·sqrt(f(1-f)·n_c) (the worst of 2,000 seeds used 38 % of it).
    """
    labels, mask = matrix
    n, c = labels.shape
    positives = (labels > 0.5) & mask
    n_c = positives.sum(axis=0)
    for seed in SEEDS:
        first = np.random.default_rng([seed, SUBSET_STREAM]).permutation(n)
        for fraction in (0.01, 0.1, 0.25, 0.5, 0.9):
            keep = labelled_subset(labels, mask, fraction=fraction, seed=seed)
            base = round(fraction * n)
            assert keep[first[:base]].all()
            extra = keep.copy()
            extra[first[:base]] = False
            assert positives[extra].any(axis=1).all()  # no clip beyond the guarantees
            slack = c + sum(math.ceil(2 * math.sqrt(fraction * (1 - fraction) * k)) for k in n_c)
            assert base <= keep.sum() <= base + slack, (seed, fraction)


def test_full_fraction_keeps_all_and_invalid_fractions_raise(matrix) -> None:
    labels, mask = matrix
    assert labelled_subset(labels, mask, fraction=1.0, seed=3).all()
    for bad in (0.0, -0.1, 1.5, float("nan")):
        with pytest.raises(ValueError, match="fraction must lie in"):
            labelled_subset(labels, mask, fraction=bad, seed=3)
    with pytest.raises(ValueError, match="must be equal"):
        labelled_subset(labels, mask[:-1], fraction=0.5, seed=3)


def test_tiny_fraction_keeps_at_least_one_clip() -> None:
    labels = np.zeros((10, 2), dtype=np.float32)
    mask = np.ones((10, 2), dtype=bool)
    assert labelled_subset(labels, mask, fraction=0.01, seed=0).sum() == 1


def test_config_refuses_label_fractions_outside_zero_one() -> None:
    for bad in (0, 1.5, -0.5):
        with pytest.raises(ConfigError, match="label_fraction must lie in"):
            train_config("demo", label_fraction=bad)
    assert train_config("demo", label_fraction=1).label_fraction == 1.0


def test_default_label_fraction_leaves_digests_and_run_names_unchanged() -> None:
    assert train_config("demo", teacher="musicnn", max_epochs=20).digest() == DEMO_MUSICNN_DIGEST
    assert train_config("openmic").digest() == OPENMIC_DIGEST
    assert train_config("demo", label_fraction=1.0).run_name() == train_config("demo").run_name()
    half = train_config("demo", teacher="musicnn", max_epochs=20, label_fraction=0.5)
    assert half.digest() != DEMO_MUSICNN_DIGEST
    assert half.run_name() != train_config("demo", teacher="musicnn").run_name()


@pytest.mark.slow
def test_training_with_half_the_labels_records_the_labelled_clips(tmp_path: Path) -> None:
    from pipeline.train.loop import train

    run_cli(tmp_path, "data", "demo", "--clips", "32")
    run_cli(tmp_path, "mels", "demo", "--frontend", "mobile_fcn", "--quiet")
    cfg = train_config("demo", teacher="none", max_steps=2, workers=0, label_fraction=0.5)
    result = train(cfg, tmp_path, progress=False)
    config = json.loads((result.run_dir / "config.json").read_text())
    summary = json.loads((result.run_dir / "train.json").read_text())
    assert config["label_fraction"] == 0.5
    assert 0 < config["labelled_train_clips"] < summary["train_clips"]
