"""Multi-label metrics over observed labels only.

Every function takes ``scores`` (N, C) (probabilities or logits; only their order matters for AP),
``labels`` (N, C) in {0, 1} and ``mask`` (N, C) bool, true where the label is known. A class
whose observed labels are all positive or all negative has no defined AP; it gets NaN and is left
out of the mean.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from sklearn.metrics import (
    average_precision_score,
    f1_score,
    precision_recall_curve,
    roc_auc_score,
)


def average_precision(scores: np.ndarray, labels: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Per-class average precision over observed entries.

    Parameters
    ----------
    scores : (N, C) probabilities or logits
    labels : (N, C) in {0, 1}
    mask : (N, C) bool, true where the label is known

    Returns
    -------
    np.ndarray -- (C,) float, NaN where a class has no observed positive or no observed negative
    """
    return _per_class(average_precision_score, scores, labels, mask)


def mean_average_precision(scores: np.ndarray, labels: np.ndarray, mask: np.ndarray) -> float:
    """Mean of :func:`average_precision` over the classes where it is defined.

    Parameters
    ----------
    scores : (N, C) probabilities or logits
    labels : (N, C) in {0, 1}
    mask : (N, C) bool, true where the label is known

    Returns
    -------
    float -- mAP; NaN when no class has a defined AP
    """
    per_class = average_precision(scores, labels, mask)
    return float(np.nanmean(per_class)) if np.isfinite(per_class).any() else float("nan")


def label_frequency_map(labels: np.ndarray, mask: np.ndarray) -> float:
    """mAP of a classifier that knows nothing but the class frequencies.

    A constant score per class ranks every clip equally, so its AP is the positive rate among the
    observed labels: the chance level a trained student must beat.

    Parameters
    ----------
    labels : (N, C) in {0, 1}
    mask : (N, C) bool, true where the label is known

    Returns
    -------
    float -- that mAP; NaN when no class has a defined AP
    """
    constant = np.broadcast_to(np.zeros(labels.shape[1]), labels.shape)
    return mean_average_precision(constant, labels, mask)


def roc_auc(scores: np.ndarray, labels: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Per-class ROC-AUC over observed entries.

    Parameters
    ----------
    scores : (N, C) probabilities or logits
    labels : (N, C) in {0, 1}
    mask : (N, C) bool, true where the label is known

    Returns
    -------
    np.ndarray -- (C,) float, NaN where a class has no observed positive or no observed negative
    """
    return _per_class(roc_auc_score, scores, labels, mask)


def _per_class(
    score: Callable[[np.ndarray, np.ndarray], float],
    scores: np.ndarray,
    labels: np.ndarray,
    mask: np.ndarray,
) -> np.ndarray:
    """``score(y_true, y_score)`` per class over its observed entries; NaN for a class with
    no observed positive or no observed negative."""
    out = np.full(scores.shape[1], np.nan)
    for c in range(scores.shape[1]):
        known = mask[:, c].astype(bool)
        y = labels[known, c] > 0.5
        if y.any() and not y.all():
            out[c] = score(y, scores[known, c])
    return out


def f1_scores(
    scores: np.ndarray, labels: np.ndarray, mask: np.ndarray, thresholds: np.ndarray | float
) -> np.ndarray:
    """Per-class F1 of ``scores >= threshold`` on observed entries.

    Parameters
    ----------
    scores : (N, C) probabilities or logits
    labels : (N, C) in {0, 1}
    mask : (N, C) bool, true where the label is known
    thresholds : (C,) one threshold per class, or one for all, in the units of ``scores``

    Returns
    -------
    np.ndarray -- (C,) float, NaN where a class has no observed positive
    """
    thresholds = np.broadcast_to(np.asarray(thresholds, dtype=float), (scores.shape[1],))
    out = np.full(scores.shape[1], np.nan)
    for c in range(scores.shape[1]):
        known = mask[:, c].astype(bool)
        y = labels[known, c] > 0.5
        if y.any():
            out[c] = f1_score(y, scores[known, c] >= thresholds[c], zero_division=0.0)
    return out


def best_f1_thresholds(
    scores: np.ndarray, labels: np.ndarray, mask: np.ndarray, default: float = 0.5
) -> np.ndarray:
    """Per-class threshold maximising F1 on these (validation) scores.

    Parameters
    ----------
    scores : (N, C) probabilities or logits
    labels : (N, C) in {0, 1}
    mask : (N, C) bool, true where the label is known
    default : the threshold of a class without an observed positive

    Returns
    -------
    np.ndarray -- (C,) float thresholds, in the units of ``scores``
    """
    out = np.full(scores.shape[1], default)
    for c in range(scores.shape[1]):
        known = mask[:, c].astype(bool)
        y = labels[known, c] > 0.5
        if not y.any():
            continue
        precision, recall, candidates = precision_recall_curve(y, scores[known, c])
        f1 = 2 * precision * recall / np.maximum(precision + recall, 1e-12)
        out[c] = candidates[int(np.argmax(f1[:-1]))]
    return out


def nanmean(values: np.ndarray) -> float:
    """Mean over the defined (finite) entries, without a warning when there are none.

    Parameters
    ----------
    values : array of any shape

    Returns
    -------
    float -- the mean; NaN if no entry is finite
    """
    values = np.asarray(values, dtype=float)
    return float(np.nanmean(values)) if np.isfinite(values).any() else float("nan")
