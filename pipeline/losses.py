"""Training losses of EAsT: masked BCE, teacher regularisers, knowledge distillation.

Shapes: ``N`` clips in the batch, ``C`` classes (or student channels), ``D`` teacher width,
``T`` frames. The regularisers compare batch-relational ``N × N`` matrices per time frame, so the
student width ``C`` and the teacher width ``D`` need not match and no projection layer is used.
Every function is differentiable and device-agnostic (it allocates nothing outside its inputs'
device).

Time alignment (:func:`align`, ``mode="repeat"``): the shorter sequence is stretched with
``repeat_interleave`` by the integer factor ``max(1, round_half_up(T_long / T_short))`` and then
both are cut to the shorter of the two resulting lengths. E.g. student 62 frames vs teacher 10
frames → teacher ×6 = 60, both cut to 60; teacher 11 frames → ×6 = 66, cut to 62; a clip-level
teacher (1 frame) → ×62. Sequences are assumed padded to one length per batch; per-clip valid
lengths are not modelled.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

AlignMode = Literal["repeat", "mean"]
Regulariser = Literal["dc", "cosine"]

_EPS = 1e-12


def _masked_mean(values: Tensor, mask: Tensor) -> Tensor:
    """Mean of ``values`` over entries where ``mask`` is true; 0 (still in the graph) if none."""
    total = torch.where(mask, values, torch.zeros_like(values)).sum()
    return total / mask.sum().clamp(min=1)


def masked_bce(logits: Tensor, labels: Tensor, mask: Tensor) -> Tensor:
    """BCE-with-logits averaged over observed entries only.

    logits, labels: (N, C) float; mask: (N, C) bool, true where the label is observed. Values of
    ``labels`` at unobserved entries (even NaN) affect neither the loss nor its gradient.
    """
    mask = mask.bool()
    safe_labels = torch.where(mask, labels, torch.zeros_like(labels))
    losses = F.binary_cross_entropy_with_logits(logits, safe_labels, reduction="none")
    return _masked_mean(losses, mask)


def repeat_factors(student_frames: int, teacher_frames: int) -> tuple[int, int]:
    """Integer ``repeat_interleave`` factors (student, teacher) that bring both to ~ one length."""
    if student_frames < 1 or teacher_frames < 1:
        raise ValueError(f"need ≥ 1 frame, got {student_frames} and {teacher_frames}")
    longer, shorter = max(student_frames, teacher_frames), min(student_frames, teacher_frames)
    factor = max(1, (2 * longer + shorter) // (2 * shorter))  # round(longer / shorter), half up
    return (1, factor) if student_frames >= teacher_frames else (factor, 1)


def align(student: Tensor, teacher: Tensor, *, mode: AlignMode = "repeat") -> tuple[Tensor, Tensor]:
    """Bring student (N, Ts, C) and teacher (N, Tt, D) to one frame count: (N, T, C), (N, T, D).

    ``"repeat"``: stretch by :func:`repeat_factors`, then cut both to the shorter length.
    ``"mean"``: average both over time, T = 1.
    """
    if mode == "mean":
        return student.mean(dim=1, keepdim=True), teacher.mean(dim=1, keepdim=True)
    if mode != "repeat":
        raise ValueError(f"unknown alignment mode {mode!r}")
    factor_s, factor_t = repeat_factors(student.shape[1], teacher.shape[1])
    student = student.repeat_interleave(factor_s, dim=1)
    teacher = teacher.repeat_interleave(factor_t, dim=1)
    frames = min(student.shape[1], teacher.shape[1])
    return student[:, :frames], teacher[:, :frames]


def _check_pair(student: Tensor, teacher: Tensor) -> None:
    if student.ndim != 3 or teacher.ndim != 3 or student.shape[:2] != teacher.shape[:2]:
        raise ValueError(
            f"expected (N, T, C) and (N, T, D) with equal N and T, got "
            f"{tuple(student.shape)} and {tuple(teacher.shape)}"
        )


def pairwise_distances(x: Tensor) -> Tensor:
    """Euclidean distances between rows, per frame: (T, N, F) → (T, N, N).

    The diagonal is exactly 0 and the gradient is finite everywhere, also for identical rows
    (squared distances are clamped away from 0 before the square root).
    """
    squared = (x * x).sum(dim=-1)
    d2 = squared.unsqueeze(-1) + squared.unsqueeze(-2) - 2.0 * x @ x.transpose(-1, -2)
    off_diagonal = ~torch.eye(x.shape[-2], dtype=torch.bool, device=x.device)
    return torch.where(off_diagonal, d2.clamp(min=_EPS).sqrt(), torch.zeros_like(d2))


def double_centre(a: Tensor) -> Tensor:
    """Subtract row and column means and add the grand mean: (..., N, N) → (..., N, N)."""
    return (
        a
        - a.mean(dim=-1, keepdim=True)
        - a.mean(dim=-2, keepdim=True)
        + a.mean(dim=(-2, -1), keepdim=True)
    )


def distance_correlation(student: Tensor, teacher: Tensor) -> Tensor:
    """Per-frame distance correlation over the batch: (N, T, C), (N, T, D) → r of shape (T,).

    r_t = mean(Â∘B̂) / sqrt(mean(Â∘Â)·mean(B̂∘B̂)) with Â, B̂ the double-centred pairwise
    distance matrices of frame t (the squared-dCov form of the paper; r ∈ [0, 1]).
    """
    _check_pair(student, teacher)
    a = double_centre(pairwise_distances(student.transpose(0, 1)))
    b = double_centre(pairwise_distances(teacher.transpose(0, 1)))
    covariance = (a * b).mean(dim=(-2, -1))
    variances = (a * a).mean(dim=(-2, -1)) * (b * b).mean(dim=(-2, -1))
    return covariance / variances.clamp(min=_EPS).sqrt()


def distance_correlation_loss(student: Tensor, teacher: Tensor) -> Tensor:
    """mean_t (1 − r_t) for aligned student (N, T, C) and teacher (N, T, D); scalar."""
    return (1.0 - distance_correlation(student, teacher)).mean()


def cosine_distance_difference_loss(student: Tensor, teacher: Tensor) -> Tensor:
    """mean |G_s − G_e| of per-frame cosine-similarity matrices (T, N, N); scalar.

    student (N, T, C), teacher (N, T, D), aligned.
    """
    _check_pair(student, teacher)
    s = F.normalize(student.transpose(0, 1), dim=-1)
    e = F.normalize(teacher.transpose(0, 1), dim=-1)
    return (s @ s.transpose(-1, -2) - e @ e.transpose(-1, -2)).abs().mean()


def kd_loss(
    student_logits: Tensor, teacher_logits: Tensor, mask: Tensor, *, temperature: float = 2.0
) -> Tensor:
    """Per-class binary KL(sigmoid(teacher/τ) ‖ sigmoid(student/τ)) over observed labels, × τ².

    student_logits, teacher_logits: (N, C); mask: (N, C) bool. Returns a scalar.
    """
    s = student_logits / temperature
    t = teacher_logits / temperature
    p_t = torch.sigmoid(t)
    # log σ(z) and log(1 − σ(z)) = log σ(−z), computed stably.
    kl = p_t * (F.logsigmoid(t) - F.logsigmoid(s)) + (1.0 - p_t) * (
        F.logsigmoid(-t) - F.logsigmoid(-s)
    )
    return _masked_mean(kl, mask.bool()) * temperature**2


_REGULARISERS = {
    "dc": distance_correlation_loss,
    "cosine": cosine_distance_difference_loss,
}


def teacher_regulariser(
    student_features: Tensor,
    teachers: Sequence[Tensor],
    *,
    regulariser: Regulariser = "dc",
    teacher_weights: Sequence[float] | None = None,
    align_mode: AlignMode = "repeat",
) -> tuple[Tensor, list[Tensor]]:
    """Weighted mean of one regulariser over several teachers.

    student_features: (N, Ts, C); each teacher (N, Tt_k, D_k). Weights default to equal and are
    normalised to sum 1. Returns the combined scalar and the per-teacher scalars.
    """
    if not teachers:
        raise ValueError("need at least one teacher")
    weights = [1.0] * len(teachers) if teacher_weights is None else list(teacher_weights)
    if len(weights) != len(teachers) or sum(weights) <= 0:
        raise ValueError(f"bad teacher weights {weights} for {len(teachers)} teachers")
    loss_fn = _REGULARISERS[regulariser]
    parts = [loss_fn(*align(student_features, t, mode=align_mode)) for t in teachers]
    combined = torch.stack([w * part for w, part in zip(weights, parts, strict=True)]).sum()
    return combined / sum(weights), parts


def east_loss(
    student_logits: Tensor,
    labels: Tensor,
    mask: Tensor,
    student_features: Tensor | None = None,
    teachers: Sequence[Tensor] = (),
    *,
    lam: float = 0.0,
    regulariser: Regulariser = "dc",
    teacher_weights: Sequence[float] | None = None,
    align_mode: AlignMode = "repeat",
    teacher_logits: Tensor | None = None,
    kd_weight: float = 0.3,
    reg_weight: float = 0.7,
    temperature: float = 2.0,
) -> tuple[Tensor, dict[str, float]]:
    """``(1 − λ)·BCE + λ·L_reg``; with ``teacher_logits``, ``L_reg = kd_weight·KD + reg_weight·R``.

    student_logits, labels, mask: (N, classes); student_features: (N, Ts, C) from the student's
    last conv stage; teachers: embeddings (N, Tt_k, D_k); teacher_logits: (N, classes) from the
    frozen linear probe. λ = 0 returns exactly the masked BCE (the baseline) and needs no
    features or teachers. Returns the total and its parts as floats for logging.
    """
    if not 0.0 <= lam <= 1.0:
        raise ValueError(f"lam must lie in [0, 1], got {lam}")
    bce = masked_bce(student_logits, labels, mask)
    logs = {"bce": bce.item()}
    if lam == 0.0:
        logs["total"] = logs["bce"]
        return bce, logs
    if student_features is None:
        raise ValueError("lam > 0 needs student_features and teachers")
    reg, per_teacher = teacher_regulariser(
        student_features,
        teachers,
        regulariser=regulariser,
        teacher_weights=teacher_weights,
        align_mode=align_mode,
    )
    logs[regulariser] = reg.item()
    logs.update({f"{regulariser}/{k}": part.item() for k, part in enumerate(per_teacher)})
    if teacher_logits is not None:
        kd = kd_loss(student_logits, teacher_logits, mask, temperature=temperature)
        logs["kd"] = kd.item()
        reg = kd_weight * kd + reg_weight * reg
    total = (1.0 - lam) * bce + lam * reg
    logs["reg"] = reg.item()
    logs["total"] = total.item()
    return total, logs
