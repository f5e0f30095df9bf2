"""Training losses of EAsT: masked BCE, knowledge distillation, and the objective.

:func:`east_loss` combines the masked BCE on the labels with the teacher regulariser of
:mod:`pipeline.train.regularisers` and, for EAsT-KD, distillation from frozen linear probes.
Shapes: ``N`` clips in the batch, ``C`` classes. Every function is differentiable and
device-agnostic (it allocates nothing outside its inputs' device).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from pipeline.train.regularisers import AlignMode, Factors, Regulariser, teacher_regulariser


def _masked_mean(values: Tensor, mask: Tensor) -> Tensor:
    """Mean of ``values`` over entries where ``mask`` is true; 0 (still in the graph) if none."""
    total = torch.where(mask, values, torch.zeros_like(values)).sum()
    return total / mask.sum().clamp(min=1)


def masked_bce(logits: Tensor, labels: Tensor, mask: Tensor) -> Tensor:
    """BCE-with-logits averaged over observed entries only.

    Values of ``labels`` at unobserved entries (even NaN) affect neither the loss nor its
    gradient.

    Parameters
    ----------
    logits, labels : Tensor, shape (N, C), float
        Student logits and targets in [0, 1].
    mask : Tensor, shape (N, C), bool
        True where the label is observed.

    Returns
    -------
    Tensor
        Scalar mean loss; 0 (still in the graph) when no label is observed.
    """
    mask = mask.bool()
    safe_labels = torch.where(mask, labels, torch.zeros_like(labels))
    losses = F.binary_cross_entropy_with_logits(logits, safe_labels, reduction="none")
    return _masked_mean(losses, mask)


def kd_loss(
    student_logits: Tensor, teacher_logits: Tensor, mask: Tensor, *, temperature: float = 2.0
) -> Tensor:
    """Per-class binary KL(sigmoid(teacher/τ) ‖ sigmoid(student/τ)) over observed labels, × τ².

    Parameters
    ----------
    student_logits, teacher_logits : Tensor, shape (N, C)
    mask : Tensor, shape (N, C), bool
        True where the label is observed.
    temperature : float
        τ.

    Returns
    -------
    Tensor
        Scalar mean over the observed entries.
    """
    s = student_logits / temperature
    t = teacher_logits / temperature
    p_t = torch.sigmoid(t)
    # log σ(z) and log(1 − σ(z)) = log σ(−z), computed stably.
    kl = p_t * (F.logsigmoid(t) - F.logsigmoid(s)) + (1.0 - p_t) * (
        F.logsigmoid(-t) - F.logsigmoid(-s)
    )
    return _masked_mean(kl, mask.bool()) * temperature**2


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
    time_factors: Sequence[Factors | None] | None = None,
    teacher_logits: Tensor | None = None,
    kd_weight: float = 0.3,
    reg_weight: float = 0.7,
    temperature: float = 2.0,
) -> tuple[Tensor, dict[str, float]]:
    """``(1 − λ)·BCE + λ·L_reg``; with ``teacher_logits``, ``L_reg = kd_weight·KD + reg_weight·R``.

    λ = 0 returns exactly the masked BCE (the baseline) and needs no features or teachers.

    Parameters
    ----------
    student_logits, labels, mask : Tensor, shape (N, classes)
        As :func:`masked_bce`'s.
    student_features : Tensor, shape (N, Ts, C), or None
        From the student's last conv stage.
    teachers : sequence of Tensor, each of shape (N, Tt_k, D_k)
        Teacher embeddings.
    lam : float
        λ in [0, 1].
    regulariser, teacher_weights, align_mode, time_factors :
        As in :func:`pipeline.train.regularisers.teacher_regulariser`.
    teacher_logits : Tensor, shape (N, classes), or None
        From the frozen linear probes; adds KD to the regulariser.
    kd_weight, reg_weight : float
        Weights of KD and R inside ``L_reg``.
    temperature : float
        τ of :func:`kd_loss`.

    Returns
    -------
    total : Tensor
        The scalar loss.
    logs : dict of str to float
        ``"bce"``, ``"total"`` and, for λ > 0, the regulariser (``"dc"`` or ``"cosine"``, one
        ``"<name>/<k>"`` per teacher), ``"kd"`` and ``"reg"``.

    Raises
    ------
    ValueError
        When ``lam`` lies outside [0, 1], or λ > 0 comes without ``student_features``.
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
        time_factors=time_factors,
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
