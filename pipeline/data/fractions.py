"""Label-scarce training: which training clips keep their labels.

See :func:`labelled_subset` and ``TrainConfig.label_fraction``.
"""

from __future__ import annotations

import math

import numpy as np

SUBSET_STREAM = 0x1ABE1  # any nonzero constant: a random stream no other part uses


def labelled_subset(
    labels: np.ndarray, mask: np.ndarray, *, fraction: float, seed: int
) -> np.ndarray:
    """Training clips whose labels are kept at a given label fraction.

    The clips are put in one priority order drawn from ``seed`` (the same for every fraction).
    The kept set is the union of the first ``round(fraction · N)`` clips (at least one) in that
    order and, per class ``c`` with ``n_c`` known positives, the first
    ``max(1, floor(fraction · n_c))`` of those positives in that order, so every class keeps
    positives where it had any. Because of these class guarantees the set may be slightly
    larger than ``fraction · N``. For one seed the sets are nested: the set at a smaller
    fraction is a subset of the set at a larger one.

    Parameters
    ----------
    labels : np.ndarray, shape (N, C)
        0/1 labels (unknown entries may hold anything; ``mask`` decides).
    mask : np.ndarray, shape (N, C), bool
        True where the label is known.
    fraction : float
        Share of the clips whose labels are kept, in (0, 1]; 1 keeps all.
    seed : int
        Seed of the priority order.

    Returns
    -------
    np.ndarray, shape (N,), bool
        True for the clips whose labels are kept.

    Raises
    ------
    ValueError
        If ``fraction`` is not in (0, 1] or the shapes disagree.
    """
    labels = np.asarray(labels)
    mask = np.asarray(mask, dtype=bool)
    if labels.ndim != 2 or labels.shape != mask.shape:
        raise ValueError(f"labels {labels.shape} and mask {mask.shape} must be equal (N, C)")
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"fraction must lie in (0, 1], not {fraction}")
    n = labels.shape[0]
    if fraction == 1.0 or n == 0:
        return np.ones(n, dtype=bool)
    # A stream of its own: default_rng(seed) would equal the sampler's first-epoch order
    # (default_rng([seed, 0])), putting the labelled clips first in the first epoch.
    order = np.random.default_rng([seed, SUBSET_STREAM]).permutation(n)
    rank = np.empty(n, dtype=np.int64)
    rank[order] = np.arange(n)  # position of each clip in the priority order
    keep = rank < max(1, round(fraction * n))
    positives = (labels > 0.5) & mask
    for c in range(labels.shape[1]):
        clips = np.flatnonzero(positives[:, c])
        if clips.size:
            wanted = max(1, math.floor(fraction * clips.size))
            keep[clips[np.argsort(rank[clips], kind="stable")[:wanted]]] = True
    return keep
