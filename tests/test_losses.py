import numpy as np
import pytest
import torch
from scipy.spatial.distance import cdist
from scipy.special import expit, log_expit
from scipy.stats import ortho_group

from pipeline.train.losses import east_loss, kd_loss, masked_bce
from pipeline.train.regularisers import (
    align,
    cosine_distance_difference_loss,
    distance_correlation,
    distance_correlation_loss,
    pairwise_distances,
    repeat_factors,
    teacher_regulariser,
)


@pytest.fixture
def rng():
    return np.random.default_rng(0)


def _t(a):
    return torch.tensor(a, dtype=torch.float64)


def _mask(rng, shape, p=0.7):
    mask = rng.random(shape) < p
    mask.flat[0] = True
    return mask


# ---------------------------------------------------------------- references (numpy / scipy)


def _ref_dcor(s, e):
    """Per-frame r_t with scipy pairwise distances and explicit double-centring."""

    def centred(x):
        a = cdist(x, x)
        return a - a.mean(0, keepdims=True) - a.mean(1, keepdims=True) + a.mean()

    rs = []
    for frame in range(s.shape[1]):
        a, b = centred(s[:, frame]), centred(e[:, frame])
        rs.append((a * b).mean() / np.sqrt((a * a).mean() * (b * b).mean()))
    return np.array(rs)


def _ref_bce(logits, labels, mask):
    losses = -(labels * log_expit(logits) + (1 - labels) * log_expit(-logits))
    return losses[mask].mean()


def _ref_kd(s, t, mask, tau):
    ps, pt = expit(s / tau), expit(t / tau)
    kl = pt * np.log(pt / ps) + (1 - pt) * np.log((1 - pt) / (1 - ps))
    return kl[mask].mean() * tau**2


def _ref_cosine(s, e):
    diffs = []
    for frame in range(s.shape[1]):
        x = s[:, frame] / np.linalg.norm(s[:, frame], axis=1, keepdims=True)
        y = e[:, frame] / np.linalg.norm(e[:, frame], axis=1, keepdims=True)
        diffs.append(np.abs(x @ x.T - y @ y.T).mean())
    return np.mean(diffs)


# ---------------------------------------------------------------- masked BCE


def test_masked_bce_matches_numpy(rng):
    logits = rng.normal(size=(6, 5)) * 3
    labels = (rng.random((6, 5)) < 0.5).astype(float)
    mask = _mask(rng, (6, 5))
    got = masked_bce(_t(logits), _t(labels), torch.tensor(mask))
    assert got.item() == pytest.approx(_ref_bce(logits, labels, mask), rel=1e-10)


def test_masked_bce_ignores_values_at_masked_entries(rng):
    logits = _t(rng.normal(size=(4, 3))).requires_grad_()
    labels = rng.random((4, 3))
    mask = _mask(rng, (4, 3), p=0.5)
    noisy = labels.copy()
    noisy[~mask] = np.nan
    clean = masked_bce(logits, _t(labels), torch.tensor(mask))
    dirty = masked_bce(logits, _t(noisy), torch.tensor(mask))
    assert dirty.item() == pytest.approx(clean.item(), rel=1e-12)
    (grad,) = torch.autograd.grad(dirty, logits)
    assert torch.isfinite(grad).all()
    assert (grad[torch.tensor(~mask)] == 0).all()


def test_masked_bce_with_nothing_observed_is_zero():
    logits = torch.randn(3, 2, requires_grad=True)
    loss = masked_bce(logits, torch.ones(3, 2), torch.zeros(3, 2, dtype=torch.bool))
    assert loss.item() == 0.0
    loss.backward()
    assert (logits.grad == 0).all()


# ---------------------------------------------------------------- alignment


@pytest.mark.parametrize(
    ("ts", "tt", "factors", "frames"),
    [
        (62, 10, (1, 6), 60),
        (62, 11, (1, 6), 62),
        (62, 1, (1, 62), 62),
        (10, 62, (6, 1), 60),
        (7, 7, (1, 1), 7),
    ],
)
def test_align_repeat_shapes(ts, tt, factors, frames):
    assert repeat_factors(ts, tt) == factors
    s, t = align(torch.randn(2, ts, 3), torch.randn(2, tt, 5))
    assert s.shape == (2, frames, 3)
    assert t.shape == (2, frames, 5)


def test_align_repeat_stretches_by_interleaving():
    teacher = torch.arange(3.0).reshape(1, 3, 1)
    _, t = align(torch.zeros(1, 7, 1), teacher)
    assert t.flatten().tolist() == [0, 0, 1, 1, 2, 2]  # factor round(7/3) = 2, cut to 6


def test_align_with_fixed_factors_repeats_then_cuts():
    student, teacher = torch.randn(2, 62, 3), torch.randn(2, 1, 5)
    s, t = align(student, teacher, factors=(1, 60))  # the paper's OpenMIC PANNs factors
    assert s.shape == (2, 60, 3) and t.shape == (2, 60, 5)
    torch.testing.assert_close(s, student[:, :60])
    torch.testing.assert_close(t, teacher.expand(2, 60, 5))
    s, t = align(torch.randn(2, 15, 3), torch.randn(2, 30, 5), factors=(2, 1))  # MTAT VGGish
    assert s.shape == (2, 30, 3) and t.shape == (2, 30, 5)
    assert align(torch.randn(1, 62, 3), torch.randn(1, 1, 5))[1].shape[1] == 62  # computed: ×62


def test_fixed_factors_for_other_frame_counts_are_refused():
    with pytest.raises(ValueError, match=r"time factors \(1, 60\) do not fit"):
        align(torch.randn(2, 62, 3), torch.randn(2, 31, 5), factors=(1, 60))


def test_regulariser_uses_each_teachers_factors():
    torch.manual_seed(0)
    features = torch.randn(6, 62, 4)
    teachers = [torch.randn(6, 1, 8), torch.randn(6, 10, 8)]
    _, parts = teacher_regulariser(features, teachers, time_factors=[(1, 60), None])
    fixed = distance_correlation_loss(*align(features, teachers[0], factors=(1, 60)))
    computed = distance_correlation_loss(*align(features, teachers[1]))
    torch.testing.assert_close(parts[0], fixed)
    torch.testing.assert_close(parts[1], computed)
    _, default = teacher_regulariser(features, teachers[:1])
    assert not torch.allclose(default[0], fixed)  # ×62 without the table, ×60 with it


def test_align_mean_mode():
    student, teacher = torch.randn(2, 62, 3), torch.randn(2, 10, 5)
    s, t = align(student, teacher, mode="mean")
    assert s.shape == (2, 1, 3)
    assert t.shape == (2, 1, 5)
    torch.testing.assert_close(t[:, 0], teacher.mean(1))


# ---------------------------------------------------------------- distance correlation


def test_distance_correlation_matches_scipy(rng):
    s, e = rng.normal(size=(7, 4, 3)), rng.normal(size=(7, 4, 9))
    ref = _ref_dcor(s, e)
    np.testing.assert_allclose(distance_correlation(_t(s), _t(e)).numpy(), ref, rtol=1e-6)
    loss = distance_correlation_loss(_t(s), _t(e))
    assert loss.item() == pytest.approx(np.mean(1 - ref), rel=1e-6)


def test_distance_correlation_invariances(rng):
    s, e = rng.normal(size=(8, 3, 4)), rng.normal(size=(8, 3, 6))
    base = distance_correlation_loss(_t(s), _t(e)).item()
    rotation = ortho_group.rvs(6, random_state=1)
    variants = [
        (s * 7.5, e),
        (s, e * 0.05),
        (s - 3.0, e + rng.normal(size=6)),
        (s, e @ rotation),
    ]
    # Exact up to the official 1e-12 under each distance's square root (diagonal 1e-6).
    for s2, e2 in variants:
        assert distance_correlation_loss(_t(s2), _t(e2)).item() == pytest.approx(base, abs=1e-5)


def test_distance_correlation_float32_matches_a_float64_reference(rng):
    s, e = rng.normal(size=(16, 5, 32)), rng.normal(size=(16, 5, 48))
    e[:, :, :32] += 0.8 * s  # correlated, so r is far from 0
    ref = np.mean(1 - _ref_dcor(s, e))
    got = distance_correlation_loss(
        torch.tensor(s, dtype=torch.float32), torch.tensor(e, dtype=torch.float32)
    )
    assert got.dtype == torch.float32
    assert got.item() == pytest.approx(ref, abs=1e-5)


def test_distance_correlation_survives_a_shared_offset_in_float32(rng):
    # Multiples of 1/64 stay exact in float32 after adding 1000, so any change comes from
    # the computation: the Gram-matrix identity |x|² + |y|² − 2x·y loses every digit there.
    s = np.round(rng.normal(size=(16, 4, 64)) * 64) / 64
    e = np.round(rng.normal(size=(16, 4, 24)) * 64) / 64
    e[:, :, :16] += s[:, :, :16]
    f32 = lambda a: torch.tensor(a, dtype=torch.float32)  # noqa: E731
    base = distance_correlation_loss(f32(s), f32(e)).item()
    shifted = distance_correlation_loss(f32(s + 1000.0), f32(e + 1000.0)).item()
    assert shifted == pytest.approx(base, abs=1e-5)
    assert base == pytest.approx(np.mean(1 - _ref_dcor(s, e)), abs=1e-5)


def test_pairwise_distances_are_direct_with_the_official_epsilon():
    x = torch.tensor([[[0.0, 0.0], [3.0, 4.0], [3.0, 4.0]]])
    d = pairwise_distances(x)
    expected = torch.tensor([[0.0, 5.0, 5.0], [5.0, 0.0, 0.0], [5.0, 0.0, 0.0]])
    torch.testing.assert_close(d[0], (expected.square() + 1e-12).sqrt())


def test_distance_correlation_is_one_for_scaled_copy(rng):
    s = rng.normal(size=(6, 2, 5))
    assert distance_correlation_loss(_t(s), _t(-2.5 * s)).item() == pytest.approx(0.0, abs=1e-8)


# ---------------------------------------------------------------- cosine distance difference


def test_cosine_difference_matches_numpy(rng):
    s, e = rng.normal(size=(5, 3, 4)), rng.normal(size=(5, 3, 7))
    got = cosine_distance_difference_loss(_t(s), _t(e))
    assert got.item() == pytest.approx(_ref_cosine(s, e), rel=1e-10)


def test_cosine_difference_zero_for_row_scaled_teacher(rng):
    s = rng.normal(size=(5, 3, 4))
    e = s * rng.uniform(0.1, 10, size=(5, 3, 1))
    assert cosine_distance_difference_loss(_t(s), _t(e)).item() == pytest.approx(0.0, abs=1e-12)


# ---------------------------------------------------------------- gradients


@pytest.mark.parametrize("loss_fn", [distance_correlation_loss, cosine_distance_difference_loss])
def test_regulariser_gradients_finite_with_duplicate_rows(loss_fn):
    torch.manual_seed(0)
    student = torch.randn(5, 4, 3)
    student[1] = student[0]
    teacher = torch.randn(5, 4, 6)
    teacher[3] = teacher[2]
    student.requires_grad_()
    teacher.requires_grad_()
    loss = loss_fn(student, teacher)
    student_grad, teacher_grad = torch.autograd.grad(loss, (student, teacher))
    assert torch.isfinite(loss)
    assert torch.isfinite(student_grad).all()
    assert torch.isfinite(teacher_grad).all()
    assert student_grad.abs().sum() > 0


def test_distance_correlation_gradient_finite_for_constant_batch():
    student = torch.ones(4, 2, 3, requires_grad=True)
    loss = distance_correlation_loss(student, torch.randn(4, 2, 5))
    (grad,) = torch.autograd.grad(loss, student)
    assert torch.isfinite(grad).all()


# ---------------------------------------------------------------- knowledge distillation


def test_kd_matches_numpy(rng):
    s, t = rng.normal(size=(6, 4)) * 3, rng.normal(size=(6, 4)) * 3
    mask = _mask(rng, (6, 4))
    got = kd_loss(_t(s), _t(t), torch.tensor(mask), temperature=2.0)
    assert got.item() == pytest.approx(_ref_kd(s, t, mask, 2.0), rel=1e-8)


def test_kd_zero_for_equal_logits(rng):
    logits = _t(rng.normal(size=(4, 3))).requires_grad_()
    loss = kd_loss(logits, logits.detach(), torch.ones(4, 3, dtype=torch.bool))
    assert loss.item() == pytest.approx(0.0, abs=1e-12)
    (grad,) = torch.autograd.grad(loss, logits)
    assert torch.allclose(grad, torch.zeros_like(grad))


# ---------------------------------------------------------------- combined EAsT loss


def _batch(rng, n=6, classes=4):
    logits = _t(rng.normal(size=(n, classes))).requires_grad_()
    labels = _t((rng.random((n, classes)) < 0.5).astype(float))
    mask = torch.tensor(_mask(rng, (n, classes)))
    features = _t(rng.normal(size=(n, 12, 8))).requires_grad_()
    teachers = [_t(rng.normal(size=(n, 2, 5))), _t(rng.normal(size=(n, 1, 7)))]
    return logits, labels, mask, features, teachers


def test_east_lambda_zero_is_bce(rng):
    logits, labels, mask, features, teachers = _batch(rng)
    total, logs = east_loss(logits, labels, mask, features, teachers, lam=0.0)
    bce = masked_bce(logits, labels, mask)
    assert total.item() == bce.item()
    assert logs == {"bce": bce.item(), "total": bce.item()}
    assert east_loss(logits, labels, mask)[0].item() == bce.item()


@pytest.mark.parametrize("regulariser", ["dc", "cosine"])
def test_east_combines_weighted_teachers(rng, regulariser):
    logits, labels, mask, features, teachers = _batch(rng)
    total, logs = east_loss(
        logits,
        labels,
        mask,
        features,
        teachers,
        lam=0.8,
        regulariser=regulariser,
        teacher_weights=[1.0, 3.0],
    )
    fn = distance_correlation_loss if regulariser == "dc" else cosine_distance_difference_loss
    parts = [fn(*align(features, t)).item() for t in teachers]
    reg = (parts[0] + 3 * parts[1]) / 4
    expected = 0.2 * masked_bce(logits, labels, mask).item() + 0.8 * reg
    assert total.item() == pytest.approx(expected, rel=1e-10)
    assert logs["reg"] == pytest.approx(reg, rel=1e-10)
    assert logs[f"{regulariser}/1"] == pytest.approx(parts[1], rel=1e-10)
    grads = torch.autograd.grad(total, (logits, features))
    assert all(torch.isfinite(g).all() for g in grads)


def test_east_with_kd_matches_weighted_formula(rng):
    logits, labels, mask, features, teachers = _batch(rng)
    teacher_logits = _t(rng.normal(size=logits.shape))
    total, logs = east_loss(
        logits,
        labels,
        mask,
        features,
        teachers,
        lam=0.9,
        teacher_logits=teacher_logits,
    )
    bce = masked_bce(logits, labels, mask).item()
    kd = kd_loss(logits, teacher_logits, mask, temperature=2.0).item()
    dc = np.mean([distance_correlation_loss(*align(features, t)).item() for t in teachers])
    expected = 0.1 * bce + 0.9 * (0.3 * kd + 0.7 * dc)
    assert total.item() == pytest.approx(expected, rel=1e-10)
    assert logs["kd"] == pytest.approx(kd, rel=1e-10)
    assert logs["dc"] == pytest.approx(dc, rel=1e-10)


def test_east_rejects_missing_teachers(rng):
    logits, labels, mask, features, _ = _batch(rng)
    with pytest.raises(ValueError):
        east_loss(logits, labels, mask, features, [], lam=0.5)
    with pytest.raises(ValueError):
        east_loss(logits, labels, mask, lam=0.5)
