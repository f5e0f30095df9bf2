"""Audio decoding: any file soundfile reads → mono float32 at the rate a consumer asks for."""

from __future__ import annotations

import os

import numpy as np
import soundfile as sf
import soxr


class AudioError(Exception):
    """A clip that cannot be used. ``str(err)`` names the clip and the cause."""

    def __init__(self, clip: str, cause: str):
        super().__init__(f"{clip}: {cause}")
        self.clip = clip
        self.cause = cause


class UndecodableAudio(AudioError):
    """Missing, unreadable, or not an audio format soundfile understands."""


class EmptyAudio(AudioError):
    """Decodes to zero samples."""


class TooShortAudio(AudioError):
    """Shorter than the consumer's minimum duration."""


class NonFiniteAudio(AudioError):
    """Contains NaN or infinite samples."""


def load_audio(
    path: str | os.PathLike,
    *,
    sr_hz: int,
    min_duration_s: float = 0.0,
    max_duration_s: float | None = None,
    clip: str | None = None,
) -> np.ndarray:
    """Decode ``path`` to a mono float32 waveform at ``sr_hz``.

    Parameters
    ----------
    path : audio file (wav, flac, ogg/vorbis/opus, mp3, …)
    sr_hz : int > 0 -- output sample rate in Hz; resampled with soxr (high quality) if needed
    min_duration_s : float >= 0 -- shorter audio raises :class:`TooShortAudio`
    max_duration_s : float > 0, optional -- keep only the first ``max_duration_s`` seconds
    clip : name used in error messages (defaults to the path)

    Returns
    -------
    np.ndarray, shape (n_samples,), float32
    """
    name = clip if clip is not None else str(path)
    if not os.path.isfile(path):
        raise UndecodableAudio(name, f"file not found: {os.fspath(path)!r}")
    try:
        with sf.SoundFile(path) as f:
            native_sr = f.samplerate
            frames = -1 if max_duration_s is None else int(np.ceil(max_duration_s * native_sr))
            audio = f.read(frames=frames, dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, OSError, TypeError) as err:
        raise UndecodableAudio(name, f"cannot decode {os.fspath(path)!r} ({err})") from None
    if audio.size == 0:
        raise EmptyAudio(name, "no audio samples")
    if not np.isfinite(audio).all():
        raise NonFiniteAudio(name, "NaN or infinite samples")
    mono = audio.mean(axis=1) if audio.shape[1] > 1 else audio[:, 0]
    if native_sr != sr_hz:
        mono = soxr.resample(mono, native_sr, sr_hz, quality="HQ")
    duration_s = len(mono) / sr_hz
    if duration_s < min_duration_s:
        raise TooShortAudio(name, f"{duration_s:.3f} s long, needs at least {min_duration_s} s")
    return np.ascontiguousarray(mono, dtype=np.float32)


def probe_duration(path: str | os.PathLike) -> float:
    """Duration in seconds from the file header; NaN when the file cannot be opened."""
    try:
        info = sf.info(path)
    except (sf.LibsndfileError, RuntimeError, OSError, TypeError):
        return float("nan")
    return info.frames / info.samplerate if info.samplerate else float("nan")
