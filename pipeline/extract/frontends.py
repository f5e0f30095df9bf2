"""Log-mel front ends of the students, as named presets.

A front end turns mono waveforms into normalised log-mel spectrograms, as EAsT's (and PaSST's)
front end does::

    waveform → pre-emphasis (one sample shorter) → |STFT|^power (symmetric Hann window, centred
             frames, reflect padding) → Kaldi mel filterbank
             → (log(mel + log_offset) + norm_shift) / norm_scale

:class:`MelSpectrogram` is a ``torch.nn.Module`` (usable on any device in a training loop or for
prediction). :class:`MelFrontEnd` wraps it with the interface of a stage-one encoder (``name``,
``sample_rate_hz``, ``hop_s``, ``dim``, ``min_duration_s``, ``embed``, ``num_frames``,
``fingerprint``), so :func:`pipeline.extract.local.extract` can cache a dataset's spectrograms in
a clip store exactly as it caches teacher embeddings::

    extract(manifest, MelFrontEnd("cp_resnet"), "data/cache/<dataset>/mel-cp_resnet.zarr")

The filterbank, and the warp of cached log-mels to jittered band limits that training applies,
are in :mod:`pipeline.extract.melbanks`.

This module imports neither the teachers nor the store, so training never needs them.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from pipeline.extract.melbanks import kaldi_mel_filterbank

_INT_FIELDS = ("sample_rate_hz", "n_fft", "win_length", "hop_length", "n_mels")
# What the code computes beyond MelConfig's numbers; in the fingerprint, so that a run trained on
# spectrograms of another recipe (librosa's Slaney filters before) is reported as changed.
RECIPE = "kaldi mel filterbank, symmetric hann window, valid pre-emphasis"
# Raise when a change to the code alters the spectrograms (of the front ends and of PaSST, which
# computes its log-mels with the same functions); tests/test_golden.py fails until it is.
OUTPUT_VERSION = 1


@dataclass(frozen=True)
class MelConfig:
    """Everything that determines a log-mel spectrogram.

    Attributes
    ----------
    sample_rate_hz : int > 0 -- rate of the input waveforms
    n_fft : int > 0 -- FFT size in samples (n_fft // 2 + 1 frequency bins)
    win_length : int, 0 < win_length <= n_fft -- symmetric Hann window length in samples,
        centred in the n_fft frame
    hop_length : int > 0 -- samples between frame centres
    n_mels : int > 3 -- mel bands (Kaldi's filterbank: HTK mel scale, triangles of peak 1)
    f_min_hz, f_max_hz : float, 0 <= f_min_hz < f_max_hz <= sample_rate_hz / 2 -- band limits
        in Hz: the outer edges of the lowest and the highest triangle
    preemphasis : float in [0, 1) or None -- coefficient a of y[n] = x[n + 1] - a·x[n] (one
        sample shorter than x); None or 0 for none (0 is stored as None)
    log_offset : float > 0 -- added to the mel power before the natural log
    norm_shift, norm_scale : float, norm_scale > 0 -- output = (log(...) + shift) / scale
    power : float > 0 -- exponent of the STFT magnitude (2 = power spectrogram)
    """

    sample_rate_hz: int
    n_fft: int
    win_length: int
    hop_length: int
    n_mels: int
    f_min_hz: float
    f_max_hz: float
    preemphasis: float | None = 0.97
    log_offset: float = 1e-5
    norm_shift: float = 0.0
    norm_scale: float = 1.0
    power: float = 2.0

    def __post_init__(self) -> None:
        for name in _INT_FIELDS:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | np.integer) or value <= 0:
                raise ValueError(f"MelConfig.{name} must be a positive integer, got {value!r}")
            object.__setattr__(self, name, int(value))
        if self.win_length > self.n_fft:
            raise ValueError(
                f"MelConfig.win_length ({self.win_length}) must not exceed n_fft ({self.n_fft})"
            )
        nyquist_hz = self.sample_rate_hz / 2
        if not 0 <= self.f_min_hz < self.f_max_hz <= nyquist_hz:
            raise ValueError(
                f"MelConfig needs 0 <= f_min_hz < f_max_hz <= sample_rate_hz / 2 = {nyquist_hz}, "
                f"got f_min_hz={self.f_min_hz!r}, f_max_hz={self.f_max_hz!r}"
            )
        if self.preemphasis is not None and not 0 <= self.preemphasis < 1:
            raise ValueError(
                f"MelConfig.preemphasis must be in [0, 1) or None, got {self.preemphasis!r}"
            )
        if not self.preemphasis:
            object.__setattr__(self, "preemphasis", None)
        for name in ("log_offset", "norm_scale", "power"):
            value = getattr(self, name)
            if not (np.isfinite(value) and value > 0):
                raise ValueError(f"MelConfig.{name} must be a positive number, got {value!r}")
        if not np.isfinite(self.norm_shift):
            raise ValueError(f"MelConfig.norm_shift must be finite, got {self.norm_shift!r}")

    @property
    def hop_s(self) -> float:
        """Seconds between frames."""
        return self.hop_length / self.sample_rate_hz

    @property
    def zero_log_mel(self) -> float:
        """The normalised value of a log-mel of 0: norm_shift / norm_scale.

        EAsT's SpecAugment masks with 0 before the normalisation; on normalised log-mels the
        same masks are filled with this value (3.7 / 3.1 for the presets).
        """
        return self.norm_shift / self.norm_scale


FRONTENDS: dict[str, MelConfig] = {
    # CP-ResNet student (Koutini et al.): 32 kHz, 25 ms window, 10 ms hop, 128 bands.
    "cp_resnet": MelConfig(
        sample_rate_hz=32_000,
        n_fft=1024,
        win_length=800,
        hop_length=320,
        n_mels=128,
        f_min_hz=0.0,
        f_max_hz=16_000.0,
        preemphasis=0.97,
        log_offset=1e-5,
        norm_shift=3.7,
        norm_scale=3.1,
    ),
    # Mobile FCN student (MagnaTagATune): 16 kHz, 50 ms window, 20 ms hop, 96 bands; the rest as
    # CP-ResNet's, as in EAsT's code.
    "mobile_fcn": MelConfig(
        sample_rate_hz=16_000,
        n_fft=1024,
        win_length=800,
        hop_length=320,
        n_mels=96,
        f_min_hz=0.0,
        f_max_hz=8_000.0,
        preemphasis=0.97,
        log_offset=1e-5,
        norm_shift=3.7,
        norm_scale=3.1,
    ),
}


def list_frontends() -> list[str]:
    """Names of the front-end presets."""
    return sorted(FRONTENDS)


def frontend_config(name: str) -> MelConfig:
    """The :class:`MelConfig` of preset ``name``."""
    try:
        return FRONTENDS[name]
    except KeyError:
        raise ValueError(
            f"unknown front end {name!r}; choose one of {', '.join(list_frontends())}"
        ) from None


def num_frames(n_samples: int, hop_length: int, *, preemphasis: bool = True) -> int:
    """Frames of the front end for ``n_samples`` samples.

    A centred STFT of m samples gives 1 + m // hop_length frames; pre-emphasis leaves
    m = n_samples - 1 (10 s at 32 kHz with hop 320: 1000 frames).
    """
    return 1 + (n_samples - int(preemphasis)) // hop_length


def num_samples(n_frames: int, hop_length: int, *, preemphasis: bool = True) -> int:
    """The fewest samples that give ``n_frames`` frames: the inverse of :func:`num_frames`."""
    return (n_frames - 1) * hop_length + int(preemphasis)


def preemphasise(waveforms: torch.Tensor, coefficient: float) -> torch.Tensor:
    """y[n] = x[n + 1] − a·x[n] along the last axis: (..., samples) → (..., samples − 1).

    A "valid" two-tap filter (no sample before x[0] is assumed), as in EAsT and PaSST.
    """
    return waveforms[..., 1:] - coefficient * waveforms[..., :-1]


def mel_filterbank(config: MelConfig) -> torch.Tensor:
    """(n_mels, n_fft // 2 + 1) float32 Kaldi mel filters of ``config`` (zero Nyquist column)."""
    return kaldi_mel_filterbank(
        config.n_mels,
        config.n_fft,
        config.sample_rate_hz,
        fmin_hz=config.f_min_hz,
        fmax_hz=config.f_max_hz,
    )


def log_mel_spectrogram(
    waveforms: torch.Tensor, *, config: MelConfig, window: torch.Tensor, filterbank: torch.Tensor
) -> torch.Tensor:
    """Normalised log-mel spectrogram of ``config`` (the whole recipe of the module docstring).

    Parameters
    ----------
    waveforms : (N, samples) or (samples,) tensor at ``config.sample_rate_hz``; more than
        ``n_fft // 2`` samples must remain after the pre-emphasis (reflect padding)
    config : :class:`MelConfig`
    window : (win_length,) tensor -- the STFT window (symmetric Hann); its dtype is the dtype of
        the computation
    filterbank : (n_mels, n_fft // 2 + 1) tensor -- :func:`mel_filterbank` of ``config``

    Returns
    -------
    (N, n_mels, frames) or (n_mels, frames) tensor, frames = :func:`num_frames` (1 + (samples -
    1) // hop_length with pre-emphasis).
    """
    if waveforms.ndim not in (1, 2):
        raise ValueError(f"expected (samples,) or (N, samples), got {tuple(waveforms.shape)}")
    fewest = config.n_fft // 2 + 1 + int(config.preemphasis is not None)
    if waveforms.shape[-1] < fewest:
        raise ValueError(
            f"{waveforms.shape[-1]} samples are too few: reflect padding needs at least "
            f"{fewest} (more than n_fft // 2 = {config.n_fft // 2} after the pre-emphasis)"
        )
    x = waveforms.to(dtype=window.dtype)
    if config.preemphasis:
        x = preemphasise(x, config.preemphasis)
    spec = torch.stft(
        x,
        n_fft=config.n_fft,
        hop_length=config.hop_length,
        win_length=config.win_length,
        window=window,
        center=True,
        pad_mode="reflect",
        return_complex=True,
    )
    if config.power == 2.0:
        power = spec.real.square() + spec.imag.square()
    else:
        power = spec.abs().pow(config.power)
    mel = torch.matmul(filterbank, power)
    return (torch.log(mel + config.log_offset) + config.norm_shift) / config.norm_scale


class MelSpectrogram(nn.Module):
    """Normalised log-mel spectrogram of a :class:`MelConfig`; no trainable parameters.

    The symmetric Hann window and the mel filterbank are non-persistent buffers: they follow
    ``.to(device)`` but stay out of ``state_dict``.
    """

    window: torch.Tensor
    filterbank: torch.Tensor

    def __init__(self, config: MelConfig) -> None:
        super().__init__()
        self.config = config
        window = torch.hann_window(config.win_length, periodic=False, dtype=torch.float32)
        self.register_buffer("window", window, persistent=False)
        self.register_buffer("filterbank", mel_filterbank(config), persistent=False)

    def forward(self, waveforms: torch.Tensor) -> torch.Tensor:
        """(N, samples) → (N, n_mels, frames); a single (samples,) clip → (n_mels, frames).

        :func:`log_mel_spectrogram`, in the buffers' dtype (float32 unless the module was
        converted).
        """
        return log_mel_spectrogram(
            waveforms, config=self.config, window=self.window, filterbank=self.filterbank
        )


class MelFrontEnd:
    """A front-end preset as a stage-one encoder: clips → (frames, n_mels) float32 arrays.

    Parameters
    ----------
    preset : name in :data:`FRONTENDS`
    device : where the spectrograms are computed (``"cpu"``, ``"cuda"``, …)
    **overrides : :class:`MelConfig` fields that replace the preset's, e.g. ``n_mels=64``;
        they enter the fingerprint, so a store made without them is stale.

    Attributes
    ----------
    name : str -- ``"mel-<preset>"``
    sample_rate_hz, hop_s, dim (= n_mels) : as a teacher's
    min_duration_s : float -- one FFT frame (n_fft / sample_rate_hz); shorter clips are refused
    store_compression : None -- mel stores keep raw chunks: log-mels hardly compress (zstd saves
        about 15 %) while decoding them would cost training several times the raw read
    """

    store_compression: str | None = None

    def __init__(self, preset: str = "cp_resnet", *, device: str = "cpu", **overrides: Any):
        base = frontend_config(preset)
        unknown = sorted(set(overrides) - {f.name for f in dataclasses.fields(MelConfig)})
        if unknown:
            fields = ", ".join(f.name for f in dataclasses.fields(MelConfig))
            raise ValueError(f"unknown MelConfig fields {unknown}; choose from {fields}")
        self.preset = preset
        self.config = dataclasses.replace(base, **overrides)
        self.device = torch.device(device)
        self.module = MelSpectrogram(self.config).to(self.device).eval()
        self.name = f"mel-{preset}"
        self.sample_rate_hz = self.config.sample_rate_hz
        self.hop_s: float | None = self.config.hop_s
        self.dim = self.config.n_mels
        self.min_duration_s = self.config.n_fft / self.config.sample_rate_hz

    def num_frames(self, n_samples: int) -> int:
        """Frames :meth:`embed` returns for a waveform of ``n_samples`` samples."""
        return num_frames(
            n_samples, self.config.hop_length, preemphasis=self.config.preemphasis is not None
        )

    def embed(self, waveforms: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Mono float32 waveforms (any lengths) → one (frames, n_mels) float32 array per clip.

        Clips are computed one at a time, so a clip's result does not depend on its batch.
        """
        out = []
        with torch.no_grad():
            for waveform in waveforms:
                wave = np.asarray(waveform, dtype=np.float32)
                if wave.ndim != 1:
                    raise ValueError(f"expected a mono (samples,) waveform, got {wave.shape}")
                x = torch.from_numpy(np.ascontiguousarray(wave)).to(self.device)
                mel = self.module(x)  # (n_mels, frames)
                out.append(np.ascontiguousarray(mel.T.cpu().numpy(), dtype=np.float32))
        return out

    def fingerprint(self) -> dict[str, Any]:
        """Everything that determines the spectrograms; a store made with another one is stale."""
        return {
            "frontend": self.preset,
            **dataclasses.asdict(self.config),
            "recipe": RECIPE,
            "output_version": OUTPUT_VERSION,
        }

    def __repr__(self) -> str:
        return f"MelFrontEnd({self.preset!r}, device={str(self.device)!r}, config={self.config})"


def create_frontend(name: str, **kwargs: Any) -> MelFrontEnd:
    """Build a :class:`MelFrontEnd`; ``name`` is a preset, with or without the ``mel-`` prefix.

    ``None``-valued keyword arguments are dropped so the preset's values apply.
    """
    preset = name.removeprefix("mel-")
    return MelFrontEnd(preset, **{k: v for k, v in kwargs.items() if v is not None})
