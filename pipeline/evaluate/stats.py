"""Uncertainty of test metrics: over training seeds and over the sampling of the test clips.

A run's test mAP varies for two reasons: the seed (initialisation, batch order, augmentation,
the labelled subset) and the test set (another draw of test clips would rank the arms somewhat
differently). An arm trained with ``S`` seeds and evaluated on the same ``N`` test clips gives an
``S × N`` table of predictions; the quantity of interest is the arm's expected metric over seeds
and over clips like the test clips. Its standard error has two components, estimated separately
and added:

* **between seeds**: the sample variance of the per-seed metrics, divided by ``S``;
* **test clips**: the variance of the seed-mean metric under Efron's nonparametric bootstrap of
  the test clips, the same resample for every seed (and, for a difference, for both arms: a
  *paired* bootstrap).

The interval is ``mean ± t · SE`` with Welch–Satterthwaite degrees of freedom (the seed
component has ``S − 1``, the bootstrap component is taken as exact), and a difference's p-value
is the two-sided t tail of ``mean / SE``. Both components contain the seed-by-clip interaction,
so the interval is slightly conservative where the two components are of a size (taking the
interaction out of the seed component made the test anti-conservative with 3–5 seeds in those
checks, so it stays in). Where the seeds dominate and there are only 3 of them, the degrees of
freedom, estimated from 3 values, make it a little liberal instead: coverage 0.92, and 6.7 % of
p-values below 0.05 without a difference (3,000 synthetic repetitions); with 5 seeds 0.94–0.97.
With one seed the seed component cannot be estimated and the interval covers test-clip sampling
only (``Estimate.seeds == 1`` says so). Checked on synthetic scores with known answers in
``tests/test_stats.py``.

Average precision under a bootstrap is computed from resample *counts* (a clip drawn twice
weighs twice), which equals scikit-learn's AP on the explicitly repeated clips.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import stats as scipy_stats

LEVEL = 0.95


@dataclass(frozen=True)
class Estimate:
    """A metric (or a difference of metrics) with its uncertainty.

    Attributes
    ----------
    mean : mean over seeds of the metric on the whole test set
    sd : standard deviation over seeds (NaN with one seed)
    low, high : the ``LEVEL`` confidence interval
    se : standard error (both components)
    df : degrees of freedom of the t quantile (``inf`` when the seed component is absent)
    seeds : number of seeds (pairs of seeds, for a difference)
    p : two-sided p-value of "the expected value is 0" (meaningful for differences)
    """

    mean: float
    sd: float
    low: float
    high: float
    se: float
    df: float
    seeds: int
    p: float

    @property
    def excludes_zero(self) -> bool:
        """Whether the interval lies wholly above or wholly below 0."""
        return bool(self.low > 0 or self.high < 0)


def bootstrap_counts(n: int, *, draws: int, seed: int) -> np.ndarray:
    """How often each of ``n`` clips is drawn in each of ``draws`` bootstrap resamples.

    Parameters
    ----------
    n : number of clips
    draws : number of resamples
    seed : seed of the resampling

    Returns
    -------
    np.ndarray -- (draws, n) float64 counts, each row summing to ``n``
    """
    rng = np.random.default_rng(seed)
    return rng.multinomial(n, np.full(n, 1.0 / n), size=draws).astype(np.float64)


def weighted_average_precision(
    scores: np.ndarray, labels: np.ndarray, mask: np.ndarray, weights: np.ndarray
) -> np.ndarray:
    """Average precision per class with clip weights, for many weightings at once.

    Parameters
    ----------
    scores : (N, C) float, only the order within a class matters
    labels : (N, C) in {0, 1}
    mask : (N, C) bool, true where the label is known
    weights : (B, N) non-negative clip weights (bootstrap counts); ones give plain AP

    Returns
    -------
    (B, C) float: AP as scikit-learn computes it on the clips repeated by their weights (tied
    scores share one threshold); NaN where a weighting leaves a class without a positive or
    without a negative.
    """
    weights = np.atleast_2d(np.asarray(weights, dtype=np.float64))
    out = np.full((weights.shape[0], scores.shape[1]), np.nan)
    for c in range(scores.shape[1]):
        known = np.flatnonzero(mask[:, c])
        if known.size == 0:
            continue
        order = known[np.argsort(-scores[known, c], kind="stable")]
        s = scores[order, c]
        y = (labels[order, c] > 0.5).astype(np.float64)
        # Index of the last clip of each clip's tie group: precision is read there.
        group = np.concatenate([[0], np.cumsum(s[1:] != s[:-1])])
        last = np.flatnonzero(np.concatenate([s[1:] != s[:-1], [True]]))[group]
        w = weights[:, order]
        hits = w * y
        tp = np.cumsum(hits, axis=1)[:, last]
        seen = np.cumsum(w, axis=1)[:, last]
        positives = hits.sum(axis=1)
        negatives = w.sum(axis=1) - positives
        # A tie group left out of a resample has seen = 0 there, and no hits either.
        precision = np.divide(tp, seen, out=np.zeros_like(tp), where=seen > 0)
        with np.errstate(invalid="ignore", divide="ignore"):
            ap = (hits * precision).sum(axis=1) / positives
        out[:, c] = np.where((positives > 0) & (negatives > 0), ap, np.nan)
    return out


def nanmean_classes(per_class: np.ndarray) -> np.ndarray:
    """Mean over the last axis ignoring NaN, without warnings.

    Parameters
    ----------
    per_class : (..., C) float, NaN where undefined

    Returns
    -------
    np.ndarray -- (...) float, NaN where all of a row's entries are NaN
    """
    finite = np.isfinite(per_class)
    total = np.where(finite, per_class, 0.0).sum(axis=-1)
    count = finite.sum(axis=-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0, total / np.maximum(count, 1), np.nan)


def interval(per_seed: np.ndarray, boot: np.ndarray, *, level: float = LEVEL) -> Estimate:
    """Combine the between-seed and the test-clip bootstrap variance into one interval.

    Parameters
    ----------
    per_seed : (S,) the metric of each seed on the whole test set (or paired differences)
    boot : (B, S) the same on ``B`` bootstrap resamples of the test clips, one resample per row
        shared by all seeds (and by both arms of a difference)
    level : confidence level

    Returns
    -------
    Estimate
    """
    per_seed = np.asarray(per_seed, dtype=np.float64)
    n_seeds = per_seed.size
    mean = float(per_seed.mean())
    seed_mean = nanmean_classes(np.asarray(boot, dtype=np.float64))
    seed_mean = seed_mean[np.isfinite(seed_mean)]
    clip_var = float(seed_mean.var(ddof=1)) if seed_mean.size > 1 else 0.0
    sd = float(per_seed.std(ddof=1)) if n_seeds > 1 else float("nan")
    seed_var = sd**2 / n_seeds if n_seeds > 1 else 0.0
    total = seed_var + clip_var
    se = float(np.sqrt(total))
    df = total**2 / (seed_var**2 / (n_seeds - 1)) if seed_var > 0 else float("inf")
    if se == 0:
        return Estimate(mean, sd, mean, mean, 0.0, df, n_seeds, 1.0 if mean == 0 else 0.0)
    quantile = float(scipy_stats.t.ppf(0.5 + level / 2, df))
    p = float(2 * scipy_stats.t.sf(abs(mean) / se, df))
    return Estimate(mean, sd, mean - quantile * se, mean + quantile * se, se, df, n_seeds, p)


@dataclass(frozen=True)
class ArmScores:
    """Test predictions of one arm: one (N, C) score matrix per seed on the same clips.

    ``seeds`` names the seed of each matrix, which pairs arms seed by seed.
    """

    seeds: tuple[int, ...]
    scores: np.ndarray  # (S, N, C)
    labels: np.ndarray  # (N, C)
    mask: np.ndarray  # (N, C) bool
    _cache: dict = field(default_factory=dict, compare=False, repr=False)

    def per_class_ap(self, counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """AP per (seed, class) on the whole test set, (S, C), and per resample, (B, S, C).

        Kept for the ``counts`` array last asked for, since every comparison with this arm
        needs the same figures.

        Parameters
        ----------
        counts : (B, N) bootstrap counts of the test clips (:func:`bootstrap_counts`)

        Returns
        -------
        whole : np.ndarray -- (S, C) AP of each seed on the whole test set, NaN where undefined
        boot : np.ndarray -- (B, S, C) the same on each resample
        """
        cached = self._cache.get("ap")
        if cached is not None and cached[0] is counts:
            return cached[1]
        ones = np.ones((1, self.labels.shape[0]))
        whole = np.stack(
            [weighted_average_precision(s, self.labels, self.mask, ones)[0] for s in self.scores]
        )
        boot = np.stack(
            [weighted_average_precision(s, self.labels, self.mask, counts) for s in self.scores],
            axis=1,
        )
        self._cache["ap"] = (counts, (whole, boot))
        return whole, boot


@dataclass(frozen=True)
class ArmResult:
    """mAP of an arm with its interval, and per class AP intervals (one per class)."""

    map: Estimate
    per_class: tuple[Estimate, ...]
    per_seed: dict[int, float]


def _per_class_estimates(whole: np.ndarray, boot: np.ndarray) -> tuple[Estimate, ...]:
    estimates = []
    for c in range(whole.shape[1]):
        finite = np.isfinite(whole[:, c])
        if not finite.any():
            nan = float("nan")
            estimates.append(Estimate(nan, nan, nan, nan, nan, nan, 0, nan))
            continue
        estimates.append(interval(whole[finite, c], boot[:, finite, c]))
    return tuple(estimates)


def arm_result(arm: ArmScores, counts: np.ndarray) -> ArmResult:
    """The arm's mAP (mean over seeds, 95 % CI) and per-class AP estimates.

    Parameters
    ----------
    arm : the arm's test predictions
    counts : (B, N) bootstrap counts over the arm's test clips (:func:`bootstrap_counts`)

    Returns
    -------
    ArmResult -- mAP estimate, (C,) per-class AP estimates, mAP of each seed
    """
    whole, boot = arm.per_class_ap(counts)
    per_seed = nanmean_classes(whole)
    return ArmResult(
        map=interval(per_seed, nanmean_classes(boot)),
        per_class=_per_class_estimates(whole, boot),
        per_seed={s: float(v) for s, v in zip(arm.seeds, per_seed, strict=True)},
    )


def paired_difference(arm: ArmScores, baseline: ArmScores, counts: np.ndarray) -> ArmResult:
    """``arm − baseline`` in mAP and per class, paired by seed and by test clip.

    Only seeds present in both arms are used. Both arms are resampled with the same ``counts``
    (the same clips), so what the test set shares cancels out of the difference.

    Parameters
    ----------
    arm : the arm's test predictions
    baseline : the baseline arm's, on the same clips
    counts : (B, N) bootstrap counts over the test clips (:func:`bootstrap_counts`)

    Returns
    -------
    ArmResult -- the difference in mAP, per class (C,) and per shared seed

    Raises
    ------
    ValueError
        When the arms share no seed or were tested on different clips.
    """
    same_clips = arm.labels.shape == baseline.labels.shape and np.array_equal(
        arm.mask, baseline.mask
    )
    if not same_clips or not np.array_equal(arm.labels, baseline.labels):
        raise ValueError("the two arms were not tested on the same clips")
    shared = [s for s in arm.seeds if s in baseline.seeds]
    if not shared:
        raise ValueError(f"no seed in common: {arm.seeds} against {baseline.seeds}")
    rows_a = [arm.seeds.index(s) for s in shared]
    rows_b = [baseline.seeds.index(s) for s in shared]
    whole_a, boot_a = arm.per_class_ap(counts)
    whole_b, boot_b = baseline.per_class_ap(counts)
    whole_a, boot_a = whole_a[rows_a], boot_a[:, rows_a]
    whole_b, boot_b = whole_b[rows_b], boot_b[:, rows_b]
    diff_seed = nanmean_classes(whole_a) - nanmean_classes(whole_b)
    diff_boot = nanmean_classes(boot_a) - nanmean_classes(boot_b)
    return ArmResult(
        map=interval(diff_seed, diff_boot),
        per_class=_per_class_estimates(whole_a - whole_b, boot_a - boot_b),
        per_seed={s: float(v) for s, v in zip(shared, diff_seed, strict=True)},
    )
