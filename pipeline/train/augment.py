"""Training-time augmentation of a collated batch: SpecAugment and per-clip mixup.

Mixup partners come from the whole training split:
:class:`pipeline.train.samplers.MixupBatchSampler` appends to each batch one uniformly drawn
partner per clip, read in the same padded read as the batch. :func:`spec_augment` (each clip its
own masks, partners included) and then :func:`mixup` (one λ per clip, from :func:`draw_mixup`)
work on the collated batch, on any device, drawing every random number from an explicit
:class:`torch.Generator`, so a run is reproducible.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor

__all__ = ["draw_mixup", "mixup", "spec_augment"]


def draw_mixup(n: int, *, alpha: float, generator: torch.Generator) -> Tensor:
    """One mixing weight per clip: λ ~ Beta(α, α), folded to ``max(λ, 1 − λ)``; (n,) float32.

    A 63-bit seed is drawn from ``generator`` (``torch.randint``) and the n draws come from
    numpy's ``default_rng(seed).beta``. Same generator state → same weights.

    Parameters
    ----------
    n : int
        Clips to mix.
    alpha : float
        α of the Beta distribution (> 0).
    generator : torch.Generator
        Source of the seed; advanced by one draw.

    Returns
    -------
    Tensor, shape (n,), float32
        Weights λ in [0.5, 1].
    """
    seed = int(torch.randint(0, 2**63 - 1, (1,), generator=generator).item())
    lam = np.random.default_rng(seed).beta(alpha, alpha, size=n)
    return torch.from_numpy(np.maximum(lam, 1.0 - lam).astype(np.float32))


def mixup(batch: dict[str, Any], *, lam: Tensor) -> dict[str, Any]:
    """Mix each of the first n clips of a batch with its partner among the n that follow.

    ``batch`` holds 2n clips (as :class:`MixupBatchSampler` yields them) and ``lam`` (n,) one
    weight per clip. ``mel``, ``labels`` and every teacher tensor become
    ``λ_j·x_j + (1 − λ_j)·x_{n+j}`` — the embeddings of every teacher with the clip's λ —
    and ``mask`` becomes ``mask_j | mask_{n+j}``. Unknown labels are 0 in ``labels``, so a
    label known for only one partner enters with that partner's weight. Every frame mixes
    content of both clips: the dataset loops clips shorter than the batch's frame count (mels
    and embeddings alike), never pads them with zeros, so a short partner contributes its loop,
    aligned across mel and teachers as in unmixed items.

    Parameters
    ----------
    batch : dict
        A collated batch of 2n clips: ``mel`` (2n, n_mels, T), ``labels`` and ``mask`` (2n, C),
        ``teachers`` [(2n, T_k, D_k)], optionally ``index`` (2n,).
    lam : Tensor, shape (n,)
        Weight of each first clip (:func:`draw_mixup`).

    Returns
    -------
    dict
        A new batch of n clips, with ``"index"`` the first clips', ``"partner"`` the partners'
        indices and ``"mixup_lambda"`` = ``lam``.

    Raises
    ------
    ValueError
        When the batch does not hold 2 × ``len(lam)`` clips.
    """
    n = len(lam)
    if batch["mel"].shape[0] != 2 * n:
        raise ValueError(f"mixup needs 2 × {n} clips, got {batch['mel'].shape[0]}")

    def mix(x: Tensor) -> Tensor:
        weight = lam.to(x.device, x.dtype).view(n, *([1] * (x.ndim - 1)))
        return weight * x[:n] + (1.0 - weight) * x[n:]

    out = dict(batch)
    out["mel"] = mix(batch["mel"])
    out["labels"] = mix(batch["labels"])
    out["mask"] = batch["mask"][:n] | batch["mask"][n:]
    out["teachers"] = [mix(t) for t in batch.get("teachers", [])]
    if "index" in batch:
        out["index"], out["partner"] = batch["index"][:n], batch["index"][n:]
    out["mixup_lambda"] = lam
    return out


def _band(n: int, size: int, max_width: int, generator: torch.Generator) -> Tensor:
    """(n, size) bool: per clip one band, drawn as torchaudio's ``mask_along_axis`` draws it.

    v = u₁·max_width and s = u₂·(size − v) with u₁, u₂ uniform in [0, 1) (float32); the band is
    ``[trunc(s), trunc(s) + floor(v))``: width uniform in {0, …, max_width − 1}, start uniform
    over the places that keep the band inside (clipped at the edges when max_width > size).
    ``max_width`` < 1 draws nothing (1 draws, but the width is always 0).
    """
    if max_width < 1:
        return torch.zeros(n, size, dtype=torch.bool)
    u = torch.rand(n, 2, generator=generator, device=generator.device).cpu()
    value = u[:, 0] * max_width
    start = (u[:, 1] * (size - value)).trunc().to(torch.int64)[:, None]
    stop = start + value.floor().to(torch.int64)[:, None]
    positions = torch.arange(size)
    return (positions >= start) & (positions < stop)


def spec_augment(
    mel: Tensor, *, freq_mask: int, time_mask: int, fill: float, generator: torch.Generator
) -> Tensor:
    """One frequency band and one time band masked per clip, as torchaudio's SpecAugment.

    ``mel`` is (N, ..., F, T) — e.g. (N, n_mels, T) — or a single (F, T) image. Each clip gets
    its own band of mel bins of width uniform in ``[0, freq_mask)`` and its own band of frames
    of width uniform in ``[0, time_mask)``, placed as ``torchaudio.transforms.FrequencyMasking``
    and ``TimeMasking`` (``iid_masks=False`` on one clip) place them (:func:`_band`). Masked
    values become ``fill``: the official featurizer masks with 0 in log-mel space before
    normalising, i.e. ``fill`` = where a log-mel of 0 lands after the front end's normalisation
    (``norm_shift / norm_scale``, 3.7 / 3.1 for the paper's front ends). Random numbers come from
    ``generator``; the masks are moved to ``mel``'s device.

    Parameters
    ----------
    mel : Tensor, shape (N, ..., F, T) or (F, T)
        Normalised log-mels.
    freq_mask, time_mask : int
        Exclusive upper bounds of the band widths, in mel bins and frames; 0 = no band.
    fill : float
        Value of the masked entries.
    generator : torch.Generator
        Source of the band draws.

    Returns
    -------
    Tensor
        A new tensor of ``mel``'s shape; with both widths 0 a copy of ``mel``.
    """
    if mel.ndim < 2:
        raise ValueError(f"spec_augment needs (..., F, T), got shape {tuple(mel.shape)}")
    single = mel.ndim == 2
    x = mel.unsqueeze(0) if single else mel
    n, f, t = x.shape[0], x.shape[-2], x.shape[-1]
    if max(freq_mask, time_mask) < 1 or x.numel() == 0:
        return mel.clone()
    f_hit = _band(n, f, freq_mask, generator)  # (N, F)
    t_hit = _band(n, t, time_mask, generator)  # (N, T)
    hit = f_hit[:, :, None] | t_hit[:, None, :]
    hit = hit.view(n, *(1,) * (x.ndim - 3), f, t).to(x.device)
    out = torch.where(hit, torch.as_tensor(fill, dtype=x.dtype, device=x.device), x)
    return out[0] if single else out
