"""Kaldi's mel band grid: the filterbank, and a warp of log-mels to other band limits.

:func:`kaldi_mel_filterbank` is the filterbank of both the students' front ends
(:mod:`pipeline.extract.frontends`) and the PaSST teacher:
``torchaudio.compliance.kaldi.get_mel_banks`` (without VTLN warping) padded with a zero column for
the Nyquist bin, the way EAsT and PaSST build their log-mels; torchaudio itself does not import
on every machine, so it is written out here.

:func:`jitter_mel_bands` stands in for EAsT's training-time jitter of the band limits (a new
filterbank per clip) on log-mels cached once: :func:`warp_mel_bands` moves them along the bands.

This module imports neither the teachers nor the stores (nor, at run time, the front ends).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F

if TYPE_CHECKING:
    from pipeline.extract.frontends import MelConfig


def hz_to_mel(freq_hz: float | torch.Tensor) -> float | torch.Tensor:
    """Kaldi's (HTK's) mel scale: 1127 · ln(1 + f / 700), for a number or a tensor of Hz.

    A number is converted in Python floats (double precision), a tensor in its own dtype, as
    Kaldi does with band edges and FFT bin frequencies respectively.
    """
    if isinstance(freq_hz, torch.Tensor):
        return 1127.0 * torch.log(1.0 + freq_hz / 700.0)
    return 1127.0 * math.log(1.0 + freq_hz / 700.0)


def kaldi_mel_filterbank(
    n_mels: int, n_fft: int, sample_rate_hz: float, *, fmin_hz: float, fmax_hz: float
) -> torch.Tensor:
    """Triangular mel filters on the bins of an ``n_fft``-point FFT, as Kaldi builds them.

    Parameters
    ----------
    n_mels : int > 3 -- number of bands
    n_fft : even int > 0 -- FFT size in samples
    sample_rate_hz : float > 0 -- sampling rate in Hz
    fmin_hz : float in [0, sample_rate_hz / 2) -- left edge of the lowest band, in Hz
    fmax_hz : float, Hz -- right edge of the highest band, at most sample_rate_hz / 2; a value
        ``<= 0`` counts down from the Nyquist frequency (Kaldi's convention)

    Returns
    -------
    torch.Tensor, (n_mels, n_fft // 2 + 1) float32
        Band m rises linearly in mel from 0 at edge m to 1 at edge m + 1 and falls back to 0 at
        edge m + 2, where the n_mels + 2 edges are equally spaced in mel from ``fmin_hz`` to
        ``fmax_hz``; evaluated at the bin frequencies k · sample_rate_hz / n_fft. The filters
        are not area-normalised (peak 1). The last column (the Nyquist bin, which Kaldi leaves
        out) is zero.

    Notes
    -----
    The arithmetic is float32 like Kaldi's and torchaudio's, so the filters equal
    ``F.pad(get_mel_banks(n_mels, n_fft, sample_rate_hz, fmin_hz, fmax_hz, 100, -500, 1)[0],
    (0, 1))`` bit for bit: the features PaSST was trained on.
    """
    nyquist_hz = sample_rate_hz / 2
    if fmax_hz <= 0:
        fmax_hz += nyquist_hz
    if not (n_mels > 3 and n_fft > 0 and n_fft % 2 == 0 and 0 <= fmin_hz < fmax_hz <= nyquist_hz):
        raise ValueError(
            f"bad mel filterbank: {n_mels} bands (> 3), n_fft {n_fft} (even), "
            f"{fmin_hz}–{fmax_hz} Hz at {sample_rate_hz} Hz"
        )
    mel_low = hz_to_mel(fmin_hz)
    mel_step = (hz_to_mel(fmax_hz) - mel_low) / (n_mels + 1)
    band = torch.arange(n_mels, dtype=torch.float32)[:, None]
    left = mel_low + band * mel_step
    centre = mel_low + (band + 1) * mel_step
    right = mel_low + (band + 2) * mel_step
    bin_mel = hz_to_mel(torch.arange(n_fft // 2, dtype=torch.float32) * (sample_rate_hz / n_fft))
    rising = (bin_mel - left) / (centre - left)
    falling = (right - bin_mel) / (right - centre)
    banks = torch.clamp(torch.minimum(rising, falling), min=0.0)
    return F.pad(banks, (0, 1))


def warp_mel_bands(
    mel: torch.Tensor, *, config: MelConfig, fmin_hz: torch.Tensor, fmax_hz: torch.Tensor
) -> torch.Tensor:
    """Log-mels on the band grid of ``config`` resampled onto the grid of other band limits.

    Band m of a Kaldi filterbank is centred at mel(f_min) + (m + 1)·step, step = (mel(f_max) −
    mel(f_min)) / (n_mels + 1). Each band centre of the limits (``fmin_hz``, ``fmax_hz``) of a
    clip is placed at its fractional position on the centres of ``config``'s grid, and the
    clip's log-mels are linearly interpolated there (beyond the outer centres: the outer band).
    This approximates the log-mels a filterbank with those limits would give, without the audio:
    on rendered demo music (cp_resnet, EAsT's jitter ranges) the mean |error| against them was
    0.086 in normalised log-mel units, against 0.295 for the unwarped log-mels (correlation
    0.992 against 0.908).

    Parameters
    ----------
    mel : (N, n_mels, frames) tensor -- log-mels of ``config``, normalised or not (the warp is
        linear along the bands, so it commutes with the normalisation), any float dtype/device
    config : :class:`pipeline.extract.frontends.MelConfig` whose ``n_mels``, ``f_min_hz`` and
        ``f_max_hz`` made ``mel``
    fmin_hz, fmax_hz : (N,) tensors, Hz -- each clip's new band limits, fmin_hz < fmax_hz

    Returns
    -------
    (N, n_mels, frames) tensor of ``mel``'s dtype and device. Limits equal to ``config``'s give
    ``mel`` back exactly.
    """
    if mel.ndim != 3 or mel.shape[1] != config.n_mels:
        raise ValueError(f"expected (N, {config.n_mels}, frames) log-mels, got {tuple(mel.shape)}")
    n_clips, n_mels, n_frames = mel.shape
    as_float64 = {"dtype": torch.float64, "device": mel.device}
    new_min = torch.as_tensor(fmin_hz, **as_float64).reshape(-1, 1)
    new_max = torch.as_tensor(fmax_hz, **as_float64).reshape(-1, 1)
    if new_min.shape[0] != n_clips or new_max.shape[0] != n_clips:
        raise ValueError(f"expected {n_clips} band limits, got {len(new_min)} and {len(new_max)}")
    if not bool((new_min < new_max).all()):
        raise ValueError("every fmin_hz must be below its fmax_hz")
    # Both grids through the same float64 arithmetic, so that equal limits give integer positions.
    low = hz_to_mel(torch.tensor(config.f_min_hz, **as_float64))
    step = (hz_to_mel(torch.tensor(config.f_max_hz, **as_float64)) - low) / (n_mels + 1)
    new_low = hz_to_mel(new_min)
    new_step = (hz_to_mel(new_max) - new_low) / (n_mels + 1)
    centre = torch.arange(1, n_mels + 1, **as_float64)
    position = centre * (new_step / step) + (new_low - low) / step - 1  # (N, n_mels)
    below = position.floor().clamp(0, n_mels - 2)
    weight = (position - below).clamp(0, 1).to(mel.dtype)[..., None]
    index = below.long()[..., None].expand(-1, -1, n_frames)
    return torch.lerp(mel.gather(1, index), mel.gather(1, index + 1), weight)


def jitter_mel_bands(
    mel: torch.Tensor,
    *,
    config: MelConfig,
    generator: torch.Generator,
    fmin_range_hz: int = 20,
    fmax_range_hz: int = 2000,
) -> torch.Tensor:
    """EAsT's training-time jitter of the band limits, approximated on cached log-mels.

    EAsT (OpenMIC) computes each training clip's filterbank with f_min + randint(0,
    fmin_range_hz) and f_max − randint(0, fmax_range_hz) Hz. Here those limits are drawn the same
    way, one pair per clip, and :func:`warp_mel_bands` moves the clip's bands to them.

    Parameters
    ----------
    mel : (N, n_mels, frames) tensor -- (normalised) log-mels of ``config``
    config : :class:`pipeline.extract.frontends.MelConfig` of the cached log-mels
    generator : torch.Generator the integer offsets are drawn from (on its own device)
    fmin_range_hz, fmax_range_hz : int >= 0 -- offsets are drawn uniformly from [0, range) Hz;
        0 turns that limit's jitter off

    Returns
    -------
    (N, n_mels, frames) tensor of ``mel``'s dtype and device.
    """
    for name, value in (("fmin_range_hz", fmin_range_hz), ("fmax_range_hz", fmax_range_hz)):
        if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 0:
            raise ValueError(f"{name} must be a non-negative integer, got {value!r}")
    if config.f_min_hz + max(fmin_range_hz - 1, 0) >= config.f_max_hz - max(fmax_range_hz - 1, 0):
        raise ValueError(
            f"jitter ranges {fmin_range_hz} and {fmax_range_hz} Hz can make the band limits "
            f"{config.f_min_hz}–{config.f_max_hz} Hz cross"
        )

    def offsets(range_hz: int) -> torch.Tensor:  # all 0 for a range of 0
        draw = {"generator": generator, "dtype": torch.float64, "device": generator.device}
        return torch.randint(0, max(range_hz, 1), (mel.shape[0],), **draw)

    fmin_hz = config.f_min_hz + offsets(fmin_range_hz)
    fmax_hz = config.f_max_hz - offsets(fmax_range_hz)
    return warp_mel_bands(mel, config=config, fmin_hz=fmin_hz, fmax_hz=fmax_hz)
