"""Uncertainty of test metrics (``pipeline.evaluate.stats``) against independent references and
known answers.

* Weighted AP against scikit-learn: plain AP with unit weights, and AP on the explicitly repeated
  clips for bootstrap counts (tied scores, masked entries, classes without a positive or a
  negative).
* Coverage of a planted mean and a planted difference, p-values without a difference, on the
  additive model ``x[s, i] = mu + a_s + b_i + e_si`` (seed effect, clip effect, interaction)
  whose "metric" is the mean over clips. Leaving out either variance component makes some of
  these coverage checks fail (checked below with the module's own interval, one component
  zeroed).
* Coverage of a known population mAP through ``ArmScores``/``arm_result``: per class the
  positives score ``N(d + seed effect, 1)`` and the negatives ``N(0, 1)``; the population AP is
  an integral (checked against scikit-learn on a large sample), averaged over the seed effect by
  Gauss–Hermite quadrature.

The simulations use fixed numpy seeds, so every figure is deterministic; the bounds leave about
three binomial standard errors around the coverage measured with thousands of repetitions.
"""

from __future__ import annotations

import functools

import numpy as np
import pytest
from scipy import stats as scipy_stats
from sklearn.metrics import average_precision_score

from pipeline.evaluate.metrics import average_precision, mean_average_precision
from pipeline.evaluate.stats import (
    ArmScores,
    arm_result,
    bootstrap_counts,
    interval,
    paired_difference,
    weighted_average_precision,
)

# ------------------------------------------------------------------------------------- weighted AP


def _tied_data(seed: int, n: int, c: int = 8):
    """Scores rounded to one decimal (many ties), a mask, and classes whose AP is undefined.

    Class 4 has no positive, class 5 no negative, class 6 only positives among its observed
    entries (negatives where the label is unknown) and class 7 no observed entry at all. Entries
    outside the mask get absurd scores and flipped labels: they must not matter.
    """
    rng = np.random.default_rng(seed)
    labels = (rng.random((n, c)) < 0.35).astype(np.float32)
    mask = rng.random((n, c)) < 0.75
    labels[:, 4] = 0
    labels[:, 5] = 1
    labels[:, 6] = mask[:, 6]
    mask[:, 7] = False
    scores = np.round(rng.random((n, c)) + 0.4 * labels, 1)
    scores = np.where(mask, scores, 100.0)
    labels = np.where(mask, labels, 1 - labels)
    return scores, labels, mask


def _sklearn_ap(scores, labels, mask) -> np.ndarray:
    """Per-class AP straight from scikit-learn on the observed entries; NaN where undefined."""
    out = np.full(scores.shape[1], np.nan)
    for c in range(scores.shape[1]):
        m = mask[:, c]
        y = labels[m, c] > 0.5
        if y.any() and not y.all():
            out[c] = average_precision_score(y, scores[m, c])
    return out


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_unit_weights_give_sklearn_average_precision(seed: int) -> None:
    scores, labels, mask = _tied_data(seed, n=120)
    ours = weighted_average_precision(scores, labels, mask, np.ones((1, 120)))
    assert ours.shape == (1, 8)
    reference = _sklearn_ap(scores, labels, mask)
    assert np.isfinite(reference[:4]).all()
    assert np.isnan(reference[4:]).all()
    np.testing.assert_allclose(ours[0], reference, rtol=1e-12, atol=1e-12, equal_nan=True)
    np.testing.assert_allclose(
        ours[0], average_precision(scores, labels, mask), rtol=1e-12, atol=1e-12, equal_nan=True
    )
    # A 1-D weight vector is one weighting.
    np.testing.assert_array_equal(
        weighted_average_precision(scores, labels, mask, np.ones(120)), ours
    )


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_bootstrap_counts_give_sklearn_ap_on_the_repeated_clips(seed: int) -> None:
    # A small test set, so some resamples also lose every positive of a rare class.
    n = 40
    scores, labels, mask = _tied_data(seed, n=n)
    counts = bootstrap_counts(n, draws=30, seed=100 + seed)
    ours = weighted_average_precision(scores, labels, mask, counts)
    assert ours.shape == (30, 8)
    for row, weights in zip(ours, counts, strict=True):
        clips = np.repeat(np.arange(n), weights.astype(int))
        reference = _sklearn_ap(scores[clips], labels[clips], mask[clips])
        np.testing.assert_allclose(row, reference, rtol=1e-10, atol=1e-12, equal_nan=True)


def _zero_top_clip(scores, mask, c):
    """Zero weight on the highest-scored observed clip of class ``c``."""
    known = np.flatnonzero(mask[:, c])
    weights = np.ones(scores.shape[0])
    weights[known[np.argmax(scores[known, c])]] = 0
    return weights


def _zero_top_tie_group(scores, mask, c):
    """Zero weight on every observed clip sharing the highest score of class ``c``."""
    known = mask[:, c]
    top = scores[known, c].max()
    return np.where(known & (scores[:, c] == top), 0.0, 1.0)


def _zero_random(scores, mask, c):
    return (np.random.default_rng(c).random(scores.shape[0]) > 0.3).astype(np.float64)


@pytest.mark.parametrize("drop", [_zero_top_clip, _zero_top_tie_group, _zero_random])
def test_a_clip_of_zero_weight_is_a_clip_left_out(drop) -> None:
    # A bootstrap resample leaves about a third of the clips out, the best-ranked one included
    # (probability ≈ 1/e): its AP must be that of the remaining clips.
    scores, labels, mask = _tied_data(5, n=60)
    for c in range(4):
        weights = drop(scores, mask, c)
        kept = weights > 0
        ours = weighted_average_precision(scores, labels, mask, weights[None])[0, c]
        reference = _sklearn_ap(scores[kept], labels[kept], mask[kept])[c]
        assert ours == pytest.approx(reference, rel=1e-12, abs=1e-12), (drop.__name__, c)


def test_bootstrap_counts_shape_sum_and_determinism() -> None:
    counts = bootstrap_counts(37, draws=500, seed=4)
    assert counts.shape == (500, 37)
    assert counts.dtype == np.float64
    np.testing.assert_array_equal(counts.sum(axis=1), np.full(500, 37.0))
    assert (counts >= 0).all()
    np.testing.assert_array_equal(counts, np.round(counts))
    np.testing.assert_array_equal(counts, bootstrap_counts(37, draws=500, seed=4))
    assert not np.array_equal(counts, bootstrap_counts(37, draws=500, seed=5))
    # Multinomial(n, 1/n): each count has mean 1 and variance 1 − 1/n.
    assert counts.mean() == pytest.approx(1.0)
    assert counts.var() == pytest.approx(1 - 1 / 37, rel=0.05)


# ------------------------------------------------------------------------- interval: known answers


def test_without_clip_variance_the_interval_is_the_one_sample_t_interval() -> None:
    per_seed = np.array([0.61, 0.58, 0.66, 0.60, 0.63])
    boot = np.tile(per_seed, (50, 1))  # every resample gives the same metric
    est = interval(per_seed, boot)
    test = scipy_stats.ttest_1samp(per_seed, 0.0)
    ci = test.confidence_interval(0.95)
    assert est.df == pytest.approx(4)
    assert est.sd == pytest.approx(per_seed.std(ddof=1), rel=1e-12)
    assert est.se == pytest.approx(per_seed.std(ddof=1) / np.sqrt(5), rel=1e-12)
    assert (est.low, est.high) == pytest.approx((ci.low, ci.high), rel=1e-10)
    assert est.p == pytest.approx(test.pvalue, rel=1e-8)
    assert est.seeds == 5


def test_welch_satterthwaite_degrees_of_freedom() -> None:
    rng = np.random.default_rng(0)
    per_seed = np.array([0.1, 0.3, 0.2])
    boot = per_seed + rng.normal(0, 0.05, (400, 1))  # a shift shared by the seeds per resample
    est = interval(per_seed, boot)
    seed_var = per_seed.var(ddof=1) / 3
    clip_var = boot.mean(axis=1).var(ddof=1)
    total = seed_var + clip_var
    assert est.se == pytest.approx(np.sqrt(total), rel=1e-12)
    assert est.df == pytest.approx(total**2 / (seed_var**2 / 2), rel=1e-12)
    q = scipy_stats.t.ppf(0.975, est.df)
    assert (est.low, est.high) == pytest.approx((0.2 - q * est.se, 0.2 + q * est.se), rel=1e-10)
    assert 2 < est.df < np.inf


def test_one_seed_gives_a_bootstrap_only_interval() -> None:
    rng = np.random.default_rng(1)
    boot = 0.7 + rng.normal(0, 0.02, (300, 1))
    est = interval(np.array([0.7]), boot)
    assert est.seeds == 1
    assert est.df == np.inf
    assert np.isnan(est.sd)
    assert est.se == pytest.approx(boot[:, 0].std(ddof=1), rel=1e-12)
    assert est.low < 0.7 < est.high
    assert est.high - est.low == pytest.approx(2 * scipy_stats.norm.ppf(0.975) * est.se)
    assert est.se > 0.01


def test_one_seed_through_arm_result() -> None:
    rng = np.random.default_rng(2)
    labels = (rng.random((80, 3)) < 0.4).astype(np.float32)
    scores = labels + rng.normal(0, 1, (1, 80, 3))
    arm = ArmScores((7,), scores, labels, np.ones((80, 3), bool))
    result = arm_result(arm, bootstrap_counts(80, draws=100, seed=0))
    assert result.map.seeds == 1
    assert result.map.df == np.inf
    assert np.isnan(result.map.sd)
    assert result.map.low < result.map.mean < result.map.high
    assert result.per_seed == {
        7: pytest.approx(mean_average_precision(scores[0], labels, labels >= 0))
    }


# ------------------------------------------------------------------------ additive model: coverage

MU = 0.5
SEEDS_AND_COMPONENTS = [
    (s, comps) for s in (3, 5) for comps in ((0.1, 1.0, 1.0), (0.1, 0.3, 0.3))
]  # (S, (tau, sig_b, sig_e)): seed and clip components comparable / seed component dominant


def _clip_means(x: np.ndarray, counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Metric "mean over clips": per seed on the test set (S,), per resample and seed (B, S)."""
    return x.mean(axis=1), counts @ x.T / x.shape[1]


@functools.cache
def _mean_coverage(n_seeds, tau, sig_b, sig_e, reps=500, n=200, draws=200, seed=0):
    """Coverage of ``MU``: the full interval, the seed component alone, the clip one alone."""
    rng = np.random.default_rng(seed)
    hits = {"full": 0, "seed only": 0, "clip only": 0}
    for _ in range(reps):
        counts = bootstrap_counts(n, draws=draws, seed=int(rng.integers(2**31)))
        x = (
            MU
            + rng.normal(0, tau, (n_seeds, 1))
            + rng.normal(0, sig_b, (1, n))
            + rng.normal(0, sig_e, (n_seeds, n))
        )
        per_seed, boot = _clip_means(x, counts)
        for name, est in (
            ("full", interval(per_seed, boot)),
            ("seed only", interval(per_seed, np.zeros_like(boot))),
            ("clip only", interval(np.full_like(per_seed, per_seed.mean()), boot)),
        ):
            hits[name] += est.low <= MU <= est.high
    return {name: h / reps for name, h in hits.items()}


@pytest.mark.parametrize(("n_seeds", "components"), SEEDS_AND_COMPONENTS)
def test_coverage_of_a_planted_mean(n_seeds, components, reliability_figures) -> None:
    coverage = _mean_coverage(n_seeds, *components)
    reliability_figures.append(f"stats: planted mean S={n_seeds} {components}: {coverage}")
    # Measured with 3000 repetitions: 0.955 / 0.918 (S=3), 0.959 / 0.943 (S=5). With three seeds
    # and a dominant seed component the Welch–Satterthwaite interval undercovers a little.
    assert 0.88 <= coverage["full"] <= 0.99


def test_each_variance_component_is_needed(reliability_figures) -> None:
    # Seed component dominant: the bootstrap alone misses it badly (~0.55–0.6).
    for n_seeds in (3, 5):
        coverage = _mean_coverage(n_seeds, 0.1, 0.3, 0.3)
        assert coverage["full"] - coverage["clip only"] > 0.2, coverage
    # Comparable components, five seeds: the seed spread alone misses the clip effect (~0.81).
    coverage = _mean_coverage(5, 0.1, 1.0, 1.0)
    assert coverage["full"] - coverage["seed only"] > 0.07, coverage
    assert coverage["seed only"] < 0.88


def _two_arms(rng, n_seeds, tau, sig_b, sig_e, delta, counts, sig_c=0.0):
    """Per-seed and per-resample differences A − B of two arms sharing the clip effects ``b``.

    ``sig_c``: a clip effect of each arm's own (the same for its seeds), which the paired
    bootstrap must pick up: the seed spread of the differences does not contain it.
    """
    n = counts.shape[1]
    b = rng.normal(0, sig_b, (1, n))
    arms = []
    for mu in (MU + delta, MU):
        x = (
            mu
            + rng.normal(0, tau, (n_seeds, 1))
            + b
            + rng.normal(0, sig_c, (1, n))
            + rng.normal(0, sig_e, (n_seeds, n))
        )
        arms.append(_clip_means(x, counts))
    (seed_a, boot_a), (seed_b, boot_b) = arms
    return seed_a - seed_b, boot_a - boot_b


@functools.cache
def _difference_runs(
    n_seeds, tau, sig_b, sig_e, delta, sig_c=0.0, reps=500, n=200, draws=200, seed=1
):
    """Coverage of delta (full interval, seed component alone) and the p-values over ``reps``."""
    rng = np.random.default_rng(seed)
    hits = {"full": 0, "seed only": 0}
    ps = []
    for _ in range(reps):
        counts = bootstrap_counts(n, draws=draws, seed=int(rng.integers(2**31)))
        per_seed, boot = _two_arms(rng, n_seeds, tau, sig_b, sig_e, delta, counts, sig_c)
        est = interval(per_seed, boot)
        hits["full"] += est.low <= delta <= est.high
        seed_only = interval(per_seed, np.zeros_like(boot))
        hits["seed only"] += seed_only.low <= delta <= seed_only.high
        ps.append(est.p)
    return {name: h / reps for name, h in hits.items()}, np.array(ps)


@pytest.mark.parametrize(("n_seeds", "components"), SEEDS_AND_COMPONENTS)
def test_coverage_of_a_planted_difference(n_seeds, components, reliability_figures) -> None:
    coverage, _ = _difference_runs(n_seeds, *components, delta=0.25, seed=2)
    reliability_figures.append(f"stats: planted difference S={n_seeds} {components}: {coverage}")
    # Measured with 3000 repetitions: 0.945 / 0.933 (S=3), 0.970 / 0.947 (S=5).
    assert 0.88 <= coverage["full"] <= 0.99


def test_a_difference_needs_the_paired_bootstrap(reliability_figures) -> None:
    # Each arm has its own clip effects (sd 0.5), larger than the seed effects: the arms rank
    # the test clips differently, which only the bootstrap of the clips sees. With 2000
    # repetitions: 0.959 with it, 0.838 from the seed spread alone.
    coverage, _ = _difference_runs(5, 0.05, 1.0, 0.5, delta=0.25, sig_c=0.5, seed=7)
    reliability_figures.append(f"stats: planted difference, arm-specific clip effects: {coverage}")
    assert 0.88 <= coverage["full"] <= 0.99
    assert coverage["full"] - coverage["seed only"] > 0.07


@pytest.mark.parametrize(("n_seeds", "components"), SEEDS_AND_COMPONENTS)
def test_p_values_without_a_difference(n_seeds, components, reliability_figures) -> None:
    _, ps = _difference_runs(n_seeds, *components, delta=0.0, seed=3)
    rejected = float(np.mean(ps < 0.05))
    ks = scipy_stats.kstest(ps, "uniform").pvalue
    reliability_figures.append(
        f"stats: no difference S={n_seeds} {components}: P(p<0.05)={rejected:.3f}, KS p={ks:.3g}"
    )
    # Measured with 3000 repetitions: 0.055 / 0.067 (S=3), 0.030 / 0.053 (S=5).
    assert 0.005 <= rejected <= 0.10
    if components == (0.1, 0.3, 0.3):
        # Seed component dominant: the t reference is nearly exact, p uniform. (Where the
        # interaction is a large part of the variance it is counted twice, and with thousands of
        # repetitions the p-values are visibly non-uniform: conservative.)
        assert ks > 0.01


def test_a_large_difference_is_detected() -> None:
    rng = np.random.default_rng(4)
    counts = bootstrap_counts(200, draws=200, seed=4)
    est = interval(*_two_arms(rng, 5, 0.1, 0.3, 0.3, 1.0, counts))
    assert est.p < 0.01
    assert est.excludes_zero
    assert est.low > 0.5


# ------------------------------------------------------------------------ AP: known population mAP

PREVALENCE = np.array([0.15, 0.3, 0.5])
SEPARATION = np.array([1.0, 1.5, 2.0])
CLIP_SD = 0.7  # the clip part of the unit score noise (shared by the seeds); the rest per seed


def _population_ap(d: np.ndarray, prevalence: float) -> np.ndarray:
    """AP of positives ``N(d, 1)`` against negatives ``N(0, 1)`` in an infinite test set.

    AP = ∫ precision d(recall): with threshold ``t`` recall is ``R = Φ(d − t)``, the false
    positive rate ``F = Φ(−t)`` and precision ``πR / (πR + (1 − π)F)``.
    """
    d = np.atleast_1d(d)[:, None]
    t = np.linspace(-10.0, 14.0, 24001)[None, :]
    recall = scipy_stats.norm.sf(t - d)
    fpr = scipy_stats.norm.sf(t)
    precision = prevalence * recall / (prevalence * recall + (1 - prevalence) * fpr)
    return np.trapezoid(scipy_stats.norm.pdf(t - d) * precision, t, axis=1)


def _population_map(tau: float) -> float:
    """Mean over classes of the expected population AP over the seed effect ``N(0, tau)``."""
    nodes, weights = np.polynomial.hermite_e.hermegauss(40)
    per_class = [
        _population_ap(d + tau * nodes, p) @ weights / weights.sum()
        for d, p in zip(SEPARATION, PREVALENCE, strict=True)
    ]
    return float(np.mean(per_class))


def _sample_arm(rng, n_seeds: int, n: int, tau: float) -> tuple[np.ndarray, np.ndarray]:
    """Labels (N, C) and scores (S, N, C): ``y (d + seed effect) + clip noise + seed noise``."""
    c = PREVALENCE.size
    labels = (rng.random((n, c)) < PREVALENCE).astype(np.float64)
    separation = SEPARATION + rng.normal(0, tau, (n_seeds, 1, c))
    clip = rng.normal(0, CLIP_SD, (1, n, c))
    noise = rng.normal(0, np.sqrt(1 - CLIP_SD**2), (n_seeds, n, c))
    return labels, labels * separation + clip + noise


def test_population_ap_reference_matches_a_large_sample() -> None:
    rng = np.random.default_rng(0)
    labels, scores = _sample_arm(rng, 1, 200_000, tau=0.0)
    for c in range(PREVALENCE.size):
        large = average_precision_score(labels[:, c], scores[0, :, c])
        assert _population_ap(SEPARATION[c], PREVALENCE[c])[0] == pytest.approx(large, abs=0.004)
    # Without a seed effect the quadrature reduces to the plain mean.
    assert _population_map(0.0) == pytest.approx(
        np.mean([_population_ap(d, p)[0] for d, p in zip(SEPARATION, PREVALENCE, strict=True)])
    )


def test_coverage_of_a_known_population_map(reliability_figures) -> None:
    tau, n_seeds, n, reps = 0.2, 5, 300, 200
    truth = _population_map(tau)
    rng = np.random.default_rng(5)
    hits = 0
    means = []
    for _ in range(reps):
        labels, scores = _sample_arm(rng, n_seeds, n, tau)
        counts = bootstrap_counts(n, draws=200, seed=int(rng.integers(2**31)))
        arm = ArmScores(tuple(range(n_seeds)), scores, labels, np.ones(labels.shape, bool))
        est = arm_result(arm, counts).map
        hits += est.low <= truth <= est.high
        means.append(est.mean)
    coverage = hits / reps
    reliability_figures.append(
        f"stats: population mAP {truth:.4f}, coverage {coverage:.3f} over {reps}, "
        f"bias {np.mean(means) - truth:+.4f}"
    )
    # Measured with 800 repetitions (weighted AP as scikit-learn computes it): 0.94; the AP of
    # 300 clips is biased upward by ~0.007, a quarter of its standard deviation.
    assert 0.88 <= coverage <= 0.99


# ---------------------------------------------------------------------------- arms and differences


def _arm(seeds, rng, labels, mask, strength=1.0) -> ArmScores:
    scores = strength * labels + rng.normal(0, 1, (len(seeds), *labels.shape))
    return ArmScores(tuple(seeds), np.round(scores, 1), labels, mask)


@pytest.fixture
def clips():
    rng = np.random.default_rng(6)
    labels = (rng.random((150, 5)) < 0.3).astype(np.float32)
    mask = rng.random((150, 5)) < 0.8
    labels[:, 4] = 0  # no positive: left out of every mean
    return rng, labels, mask


def test_per_seed_map_is_the_make_eval_map(clips) -> None:
    rng, labels, mask = clips
    arm = _arm((3, 1, 4), rng, labels, mask)
    result = arm_result(arm, bootstrap_counts(150, draws=50, seed=0))
    assert list(result.per_seed) == [3, 1, 4]
    for s, scores in zip(arm.seeds, arm.scores, strict=True):
        assert result.per_seed[s] == pytest.approx(
            mean_average_precision(scores, labels, mask), rel=1e-12, abs=1e-12
        )
    assert result.map.mean == pytest.approx(np.mean(list(result.per_seed.values())), rel=1e-12)
    assert len(result.per_class) == 5
    assert np.isnan(result.per_class[4].mean) and result.per_class[4].seeds == 0
    for c in range(4):
        whole = [average_precision(s, labels, mask)[c] for s in arm.scores]
        assert result.per_class[c].mean == pytest.approx(np.mean(whole), rel=1e-12)


def test_paired_difference_uses_the_shared_seeds_only(clips) -> None:
    rng, labels, mask = clips
    arm = _arm((1, 2, 3, 9), rng, labels, mask, strength=1.5)
    baseline = _arm((4, 3, 2), rng, labels, mask)
    result = paired_difference(arm, baseline, bootstrap_counts(150, draws=50, seed=1))
    assert list(result.per_seed) == [2, 3]
    assert result.map.seeds == 2
    for s in (2, 3):
        expected = mean_average_precision(
            arm.scores[arm.seeds.index(s)], labels, mask
        ) - mean_average_precision(baseline.scores[baseline.seeds.index(s)], labels, mask)
        assert result.per_seed[s] == pytest.approx(expected, rel=1e-12, abs=1e-12)
    assert result.map.mean == pytest.approx(np.mean(list(result.per_seed.values())), rel=1e-12)


def test_paired_difference_rejects_unpaired_arms(clips) -> None:
    rng, labels, mask = clips
    counts = bootstrap_counts(150, draws=20, seed=2)
    arm = _arm((1, 2), rng, labels, mask)
    with pytest.raises(ValueError, match="no seed in common"):
        paired_difference(arm, _arm((3, 4), rng, labels, mask), counts)
    other_mask = mask.copy()
    other_mask[0, 0] = not other_mask[0, 0]
    with pytest.raises(ValueError, match="same clips"):
        paired_difference(arm, _arm((1, 2), rng, labels, other_mask), counts)
    with pytest.raises(ValueError, match="same clips"):
        paired_difference(arm, _arm((1, 2), rng, labels[:100], mask[:100]), counts)


def test_an_arm_minus_itself_is_exactly_zero(clips) -> None:
    rng, labels, mask = clips
    arm = _arm((1, 2, 3), rng, labels, mask)
    result = paired_difference(arm, arm, bootstrap_counts(150, draws=50, seed=3))
    assert result.per_seed == {1: 0.0, 2: 0.0, 3: 0.0}
    assert (result.map.mean, result.map.low, result.map.high) == (0.0, 0.0, 0.0)
    assert result.map.se == 0.0
    assert result.map.p == 1.0
    assert not result.map.excludes_zero
    for est in result.per_class[:4]:
        assert (est.mean, est.low, est.high) == (0.0, 0.0, 0.0)


def test_a_large_ap_difference_is_detected(clips) -> None:
    rng, labels, mask = clips
    strong = _arm((1, 2, 3), rng, labels, mask, strength=3.0)
    weak = _arm((1, 2, 3), rng, labels, mask, strength=0.5)
    result = paired_difference(strong, weak, bootstrap_counts(150, draws=200, seed=4))
    assert result.map.excludes_zero
    assert result.map.low > 0
    assert result.map.p < 0.01


def test_cached_aps_follow_the_counts(clips) -> None:
    # ArmScores keeps the APs of the last counts array; another array must not reuse them.
    rng, labels, mask = clips
    arm = _arm((1, 2, 3), rng, labels, mask)
    first = bootstrap_counts(150, draws=40, seed=5)
    second = bootstrap_counts(150, draws=40, seed=6)
    before = arm_result(arm, first)
    after = arm_result(arm, second)
    fresh = arm_result(ArmScores(arm.seeds, arm.scores, labels, mask), second)
    assert after.map == fresh.map
    assert after.map.se != before.map.se
    assert arm_result(arm, first).map == before.map
    _, boot = arm.per_class_ap(first)
    _, fresh_boot = ArmScores(arm.seeds, arm.scores, labels, mask).per_class_ap(first)
    np.testing.assert_array_equal(boot, fresh_boot)
