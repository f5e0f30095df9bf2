"""Teacher regularisers of EAsT: time alignment and batch-relational distances.

Shapes: ``N`` clips in the batch, ``C`` classes (or student channels), ``D`` teacher width,
``T`` frames. The regularisers compare batch-relational ``N × N`` matrices per time frame, so the
student width ``C`` and the teacher width ``D`` need not match and no projection layer is used.
Every function is differentiable and device-agnostic (it allocates nothing outside its inputs'
device).

Time alignment (:func:`align`, ``mode="repeat"``): the student's frames are repeated
``repeat_interleave``-style by an integer factor, the teacher's by another, then both are cut to
the shorter of the two lengths. For the paper's pairings the factors are the official configs'
fixed ones (:func:`pipeline.train.presets.paper_time_factors`: OpenMIC with CP ResNet, teacher
×6 for VGGish, OpenL3 and PaSST and ×60 for PANNs; MagnaTagATune with Mobile FCN, student ×2 for
VGGish, OpenL3 and PaSST and teacher ×15 for PANNs). Every other teacher or dataset (musicnn,
``hear:*``, your own data) gets factors computed from the frame counts (:func:`repeat_factors`):
the shorter sequence is stretched by ``max(1, round_half_up(T_long / T_short))``. E.g. student
62 frames vs teacher 10 frames → teacher ×6 = 60, both cut to 60; teacher 11 frames → ×6 = 66,
cut to 62; a clip-level teacher (1 frame) → ×62. Sequences are assumed padded to one length per
batch (the loader loops short clips), so per-clip valid lengths are not modelled.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

AlignMode = Literal["repeat", "mean"]
Regulariser = Literal["dc", "cosine"]
Factors = tuple[int, int]

# Inside the square root of every pairwise distance, and added to the product of the two
# distance variances under the square root of distance correlation's denominator (the official
# implementation's constants).
_DISTANCE_EPS = 1e-12
_VARIANCE_EPS = 1e-9


def repeat_factors(student_frames: int, teacher_frames: int) -> tuple[int, int]:
    """Integer ``repeat_interleave`` factors (student, teacher) that bring both to ~ one length.

    Parameters
    ----------
    student_frames, teacher_frames : int
        Frame counts, ≥ 1.

    Returns
    -------
    tuple of int
        (1, round(Ts / Tt)) when the student has at least as many frames, else (round(Tt / Ts), 1),
        rounding half up and at least 1.
    """
    if student_frames < 1 or teacher_frames < 1:
        raise ValueError(f"need ≥ 1 frame, got {student_frames} and {teacher_frames}")
    longer, shorter = max(student_frames, teacher_frames), min(student_frames, teacher_frames)
    factor = max(1, (2 * longer + shorter) // (2 * shorter))  # round(longer / shorter), half up
    return (1, factor) if student_frames >= teacher_frames else (factor, 1)


def align(
    student: Tensor,
    teacher: Tensor,
    *,
    mode: AlignMode = "repeat",
    factors: Factors | None = None,
) -> tuple[Tensor, Tensor]:
    """Bring student (N, Ts, C) and teacher (N, Tt, D) to one frame count: (N, T, C), (N, T, D).

    ``"repeat"``: repeat each student frame ``factors[0]`` times and each teacher frame
    ``factors[1]`` times (``None``: :func:`repeat_factors` of the frame counts), then cut both to
    the shorter length. ``"mean"``: average both over time, T = 1; ``factors`` is not used.

    Parameters
    ----------
    student : Tensor, shape (N, Ts, C)
    teacher : Tensor, shape (N, Tt, D)
    mode : {"repeat", "mean"}
        How to align.
    factors : tuple of int or None
        (student, teacher) repeat factors for ``"repeat"``.

    Returns
    -------
    tuple of Tensor
        Student (N, T, C) and teacher (N, T, D).

    Raises
    ------
    ValueError
        When given ``factors`` leave one sequence more than twice as long as the other: they were
        made for other frame counts (e.g. the paper's ×60 for a clip-level PANNs store applied to
        a frame-level one), and cutting would drop most of the longer sequence.
    """
    if mode == "mean":
        return student.mean(dim=1, keepdim=True), teacher.mean(dim=1, keepdim=True)
    if mode != "repeat":
        raise ValueError(f"unknown alignment mode {mode!r}")
    computed = factors is None
    if factors is None:
        factors = repeat_factors(student.shape[1], teacher.shape[1])
    long_s = student.shape[1] * factors[0]
    long_t = teacher.shape[1] * factors[1]
    if not computed and max(long_s, long_t) > 2 * min(long_s, long_t):
        raise ValueError(
            f"time factors {factors} do not fit {student.shape[1]} student and "
            f"{teacher.shape[1]} teacher frames ({long_s} vs {long_t} after repeating): the "
            "teacher store or the student differs from the paper's; name the store otherwise "
            "(computed factors) or use align='mean'"
        )
    student = student.repeat_interleave(factors[0], dim=1)
    teacher = teacher.repeat_interleave(factors[1], dim=1)
    frames = min(long_s, long_t)
    return student[:, :frames], teacher[:, :frames]


def _check_pair(student: Tensor, teacher: Tensor) -> None:
    if student.ndim != 3 or teacher.ndim != 3 or student.shape[:2] != teacher.shape[:2]:
        raise ValueError(
            f"expected (N, T, C) and (N, T, D) with equal N and T, got "
            f"{tuple(student.shape)} and {tuple(teacher.shape)}"
        )


def pairwise_distances(x: Tensor) -> Tensor:
    """Euclidean distances between rows, per frame: (T, N, F) → (T, N, N).

    ``sqrt(sum_f (x_if − x_jf)² + 1e-12)``, from the differences themselves: the Gram-matrix
    identity ``|x_i|² + |x_j|² − 2 x_i·x_j`` cancels catastrophically in float32 when the rows
    share a large offset. The 1e-12 keeps the gradient finite for identical rows (the diagonal is
    therefore 1e-6, not 0, as in the official implementation). Memory: a (T, N, N, F) temporary.

    Parameters
    ----------
    x : Tensor, shape (T, N, F)

    Returns
    -------
    Tensor, shape (T, N, N)
    """
    diff = x.unsqueeze(-2) - x.unsqueeze(-3)
    return (diff.square().sum(dim=-1) + _DISTANCE_EPS).sqrt()


def double_centre(a: Tensor) -> Tensor:
    """Subtract row and column means and add the grand mean: (..., N, N) → (..., N, N).

    Parameters
    ----------
    a : Tensor, shape (..., N, N)

    Returns
    -------
    Tensor, shape (..., N, N)
    """
    return (
        a
        - a.mean(dim=-1, keepdim=True)
        - a.mean(dim=-2, keepdim=True)
        + a.mean(dim=(-2, -1), keepdim=True)
    )


def distance_correlation(student: Tensor, teacher: Tensor) -> Tensor:
    """Per-frame distance correlation over the batch: (N, T, C), (N, T, D) → r of shape (T,).

    r_t = mean(Â∘B̂) / sqrt(mean(Â∘Â)·mean(B̂∘B̂) + 1e-9) with Â, B̂ the double-centred pairwise
    distance matrices (:func:`pairwise_distances`) of frame t (the squared-dCov form of the
    paper; r ∈ [0, 1]). A batch of identical clips gives r = 0, with finite gradients.

    Parameters
    ----------
    student : Tensor, shape (N, T, C)
    teacher : Tensor, shape (N, T, D)
        Aligned to the student's frames.

    Returns
    -------
    Tensor, shape (T,)
    """
    _check_pair(student, teacher)
    a = double_centre(pairwise_distances(student.transpose(0, 1)))
    b = double_centre(pairwise_distances(teacher.transpose(0, 1)))
    covariance = (a * b).mean(dim=(-2, -1))
    variances = (a * a).mean(dim=(-2, -1)) * (b * b).mean(dim=(-2, -1))
    return covariance / (variances + _VARIANCE_EPS).sqrt()


def distance_correlation_loss(student: Tensor, teacher: Tensor) -> Tensor:
    """mean_t (1 − r_t) for aligned student (N, T, C) and teacher (N, T, D); scalar.

    Parameters
    ----------
    student : Tensor, shape (N, T, C)
    teacher : Tensor, shape (N, T, D)

    Returns
    -------
    Tensor
        Scalar in [0, 1] (:func:`distance_correlation`).
    """
    return (1.0 - distance_correlation(student, teacher)).mean()


def cosine_distance_difference_loss(student: Tensor, teacher: Tensor) -> Tensor:
    """mean |G_s − G_e| of per-frame cosine-similarity matrices (T, N, N); scalar.

    Parameters
    ----------
    student : Tensor, shape (N, T, C)
    teacher : Tensor, shape (N, T, D)
        Aligned to the student's frames.

    Returns
    -------
    Tensor
        Scalar in [0, 2].
    """
    _check_pair(student, teacher)
    s = F.normalize(student.transpose(0, 1), dim=-1)
    e = F.normalize(teacher.transpose(0, 1), dim=-1)
    return (s @ s.transpose(-1, -2) - e @ e.transpose(-1, -2)).abs().mean()


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
    time_factors: Sequence[Factors | None] | None = None,
) -> tuple[Tensor, list[Tensor]]:
    """Weighted mean of one regulariser over several teachers.

    Parameters
    ----------
    student_features : Tensor, shape (N, Ts, C)
    teachers : sequence of Tensor, each of shape (N, Tt_k, D_k)
    regulariser : {"dc", "cosine"}
        Distance correlation (:func:`distance_correlation_loss`) or cosine distance difference
        (:func:`cosine_distance_difference_loss`).
    teacher_weights : sequence of float or None
        Per teacher; default equal; normalised to sum 1.
    align_mode : {"repeat", "mean"}
        As :func:`align`'s ``mode``.
    time_factors : sequence of (tuple of int or None), or None
        Per teacher the (student, teacher) repeat factors of :func:`align`, ``None`` for
        computed ones (the default for every teacher).

    Returns
    -------
    combined : Tensor
        The weighted mean, a scalar.
    parts : list of Tensor
        The scalar of each teacher.
    """
    if not teachers:
        raise ValueError("need at least one teacher")
    weights = [1.0] * len(teachers) if teacher_weights is None else list(teacher_weights)
    if len(weights) != len(teachers) or sum(weights) <= 0:
        raise ValueError(f"bad teacher weights {weights} for {len(teachers)} teachers")
    factors = [None] * len(teachers) if time_factors is None else list(time_factors)
    if len(factors) != len(teachers):
        raise ValueError(f"{len(factors)} time factors for {len(teachers)} teachers")
    loss_fn = _REGULARISERS[regulariser]
    parts = [
        loss_fn(*align(student_features, t, mode=align_mode, factors=f))
        for t, f in zip(teachers, factors, strict=True)
    ]
    combined = torch.stack([w * part for w, part in zip(weights, parts, strict=True)]).sum()
    return combined / sum(weights), parts
