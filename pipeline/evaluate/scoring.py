"""Test scores into the figures of ``metrics.json``, and the predictions file comparisons resample.

:func:`score_report` turns (scores, labels, mask) of the validation and test splits into the
``summary`` and ``per_class`` entries of ``metrics.json`` (:mod:`pipeline.evaluate.evaluation`);
:func:`save_predictions` keeps the test predictions they were computed from next to it, which
:mod:`pipeline.evaluate.arms` reads back with :func:`load_predictions`.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from pipeline.evaluate.metrics import (
    average_precision,
    best_f1_thresholds,
    f1_scores,
    label_frequency_map,
    nanmean,
    roc_auc,
)
from pipeline.fileio import atomic_path

__all__ = ["FIXED_THRESHOLD", "PREDICTIONS", "load_predictions", "save_predictions", "score_report"]

FIXED_THRESHOLD = 0.4
PREDICTIONS = "predictions.npz"


def _finite_or_none(values: np.ndarray) -> list[float | None]:
    return [float(v) if np.isfinite(v) else None for v in np.asarray(values, dtype=float)]


def score_report(
    valid: tuple[np.ndarray, np.ndarray, np.ndarray],
    test: tuple[np.ndarray, np.ndarray, np.ndarray],
) -> tuple[dict[str, float], dict[str, list]]:
    """Summary and per-class metrics of the test split, thresholds tuned on validation.

    Parameters
    ----------
    valid : (scores, labels, mask) of the validation split, each (N_valid, C): probabilities,
        labels in {0, 1}, true where the label is known; chooses the per-class F1 thresholds
    test : the same for the test split, (N_test, C) each

    Returns
    -------
    summary : dict[str, float] -- ``map``, ``roc_auc``, ``f1_macro``, ``f1_macro_at_0.4``,
        ``label_frequency_map``: means over the classes where each is defined
    per_class : dict[str, list] -- ``ap``, ``roc_auc``, ``f1``, ``f1_at_0.4`` (C floats, None
        where undefined), ``threshold`` (C floats), ``positives`` and ``known`` (C counts)
    """
    scores, labels, mask = test
    thresholds = best_f1_thresholds(*valid)
    ap = average_precision(scores, labels, mask)
    auc = roc_auc(scores, labels, mask)
    f1 = f1_scores(scores, labels, mask, thresholds)
    f1_fixed = f1_scores(scores, labels, mask, FIXED_THRESHOLD)
    summary = {
        "map": nanmean(ap),
        "roc_auc": nanmean(auc),
        "f1_macro": nanmean(f1),
        f"f1_macro_at_{FIXED_THRESHOLD}": nanmean(f1_fixed),
        "label_frequency_map": label_frequency_map(labels, mask),
    }
    per_class = {
        "ap": _finite_or_none(ap),
        "roc_auc": _finite_or_none(auc),
        "f1": _finite_or_none(f1),
        f"f1_at_{FIXED_THRESHOLD}": _finite_or_none(f1_fixed),
        "threshold": [float(t) for t in thresholds],
        "positives": [int(v) for v in ((labels > 0.5) & mask).sum(axis=0)],
        "known": [int(v) for v in mask.sum(axis=0)],
    }
    return summary, per_class


def save_predictions(
    folder: Path, clip_ids: list[str], scores: np.ndarray, labels: np.ndarray, mask: np.ndarray
) -> None:
    """Keep the test predictions next to ``metrics.json``: what comparisons resample.

    ``predictions.npz`` holds ``clip_ids`` (N,), ``scores`` (N, C) float32 probabilities,
    ``labels`` (N, C) and ``mask`` (N, C) bool, exactly as the metrics were computed from.

    Parameters
    ----------
    folder : the run or probe folder; ``predictions.npz`` is written there atomically
    clip_ids : (N,) test clip ids, in the order of the rows
    scores : (N, C) probabilities
    labels : (N, C) labels in {0, 1} (stored as float32)
    mask : (N, C) true where the label is known

    Returns
    -------
    None
    """
    # An open file, not a name: np.savez_compressed would add ".npz" to the temporary name.
    with atomic_path(Path(folder) / PREDICTIONS) as tmp, open(tmp, "wb") as f:
        np.savez_compressed(
            f,
            clip_ids=np.asarray(clip_ids, dtype=str),
            scores=np.asarray(scores, dtype=np.float32),
            labels=np.asarray(labels, dtype=np.float32),
            mask=np.asarray(mask, dtype=bool),
        )


def load_predictions(folder: str | os.PathLike) -> dict[str, np.ndarray]:
    """What :func:`save_predictions` wrote.

    Parameters
    ----------
    folder : the run or probe folder holding ``predictions.npz``

    Returns
    -------
    dict[str, np.ndarray] -- ``clip_ids`` (N,) str, ``scores`` (N, C) float32, ``labels``
    (N, C) float32, ``mask`` (N, C) bool
    """
    with np.load(Path(folder) / PREDICTIONS) as data:
        return {k: data[k] for k in ("clip_ids", "scores", "labels", "mask")}
