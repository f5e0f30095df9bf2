"""Masked multi-label metrics agree with scikit-learn on the observed entries."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import average_precision_score

from pipeline.evaluate.metrics import average_precision, label_frequency_map, mean_average_precision


def _data(seed: int = 0, n: int = 60, c: int = 5):
    rng = np.random.default_rng(seed)
    labels = (rng.random((n, c)) < 0.3).astype(np.float32)
    scores = labels * 0.5 + rng.random((n, c))
    mask = rng.random((n, c)) < 0.7
    return scores, labels, mask


def test_per_class_ap_equals_sklearn_on_observed_rows() -> None:
    scores, labels, mask = _data()
    ap = average_precision(scores, labels, mask)
    for c in range(labels.shape[1]):
        m = mask[:, c]
        assert ap[c] == pytest.approx(average_precision_score(labels[m, c], scores[m, c]))


def test_unobserved_entries_do_not_matter() -> None:
    scores, labels, mask = _data(1)
    flipped = np.where(mask, labels, 1 - labels)
    noisy = np.where(mask, scores, 100.0)
    assert mean_average_precision(noisy, flipped, mask) == mean_average_precision(
        scores, labels, mask
    )


def test_class_without_positives_is_left_out() -> None:
    scores, labels, mask = _data(2)
    labels[:, 0] = 0
    ap = average_precision(scores, labels, mask)
    assert np.isnan(ap[0])
    assert mean_average_precision(scores, labels, mask) == pytest.approx(np.mean(ap[1:]))


def test_perfect_and_label_frequency_scores() -> None:
    _, labels, mask = _data(3)
    assert mean_average_precision(labels, labels, mask) == pytest.approx(1.0)
    rates = [labels[mask[:, c], c].mean() for c in range(labels.shape[1])]
    assert label_frequency_map(labels, mask) == pytest.approx(np.mean(rates))
