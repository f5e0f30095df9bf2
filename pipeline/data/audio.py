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


class TruncatedAudio(AudioError):
    """Decodes to clearly fewer samples than its header declares (cut short or damaged)."""


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
    path : str or os.PathLike
        Audio file (wav, flac, ogg/vorbis/opus, mp3, …).
    sr_hz : int > 0
        Output sample rate in Hz; resampled with soxr (high quality) if needed.
    min_duration_s : float >= 0
        Shorter audio (in seconds) raises :class:`TooShortAudio`.
    max_duration_s : float > 0, optional
        Keep only the first ``max_duration_s`` seconds.
    clip : str, optional
        Name used in error messages (defaults to the path).

    Returns
    -------
    np.ndarray, shape (n_samples,), float32
        The mono waveform at ``sr_hz``.

    Raises
    ------
    AudioError
        One of its subclasses: :class:`UndecodableAudio`, :class:`EmptyAudio`,
        :class:`TruncatedAudio`, :class:`NonFiniteAudio`, :class:`TooShortAudio`.
    """
    name = clip if clip is not None else str(path)
    if not os.path.isfile(path):
        raise UndecodableAudio(name, f"file not found: {os.fspath(path)!r}")
    try:
        with sf.SoundFile(path) as f:
            native_sr, declared = f.samplerate, f.frames
            frames = -1 if max_duration_s is None else int(np.ceil(max_duration_s * native_sr))
            audio = f.read(frames=frames, dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, OSError, TypeError) as err:
        raise UndecodableAudio(name, _undecodable_cause(path, err)) from None
    if audio.size == 0:
        raise EmptyAudio(name, "no audio samples")
    expected = declared if frames < 0 else min(frames, declared)
    if 0 < expected < _UNKNOWN_LENGTH and _truncated(len(audio), expected, native_sr):
        raise TruncatedAudio(
            name,
            f"truncated or damaged: the header says {expected / native_sr:.3f} s, "
            f"only {len(audio) / native_sr:.3f} s decode",
        )
    finite = np.isfinite(audio)
    if not finite.all():
        n_nan = int(np.isnan(audio).sum())
        raise NonFiniteAudio(
            name,
            f"non-finite samples: {n_nan} NaN and {int((~finite).sum()) - n_nan} infinite "
            f"of {audio.size}",
        )
    mono = mix_to_mono(audio)
    if native_sr != sr_hz:
        mono = soxr.resample(mono, native_sr, sr_hz, quality="HQ")
    duration_s = len(mono) / sr_hz
    if duration_s < min_duration_s:
        n = len(audio)
        length = (
            f"{duration_s:.3f} s long"
            if n >= 100
            else f"{n} sample{'s' * (n != 1)} long ({n / native_sr:.2g} s)"
        )
        raise TooShortAudio(name, f"{length}, needs at least {min_duration_s} s")
    return np.ascontiguousarray(mono, dtype=np.float32)


def mix_to_mono(audio: np.ndarray) -> np.ndarray:
    """The mean of the channels, added one after the other.

    Parameters
    ----------
    audio : np.ndarray, shape (n_samples, n_channels), float32

    Returns
    -------
    np.ndarray, shape (n_samples,), float32
        Equal bit for bit to ``audio.mean(axis=1)`` for up to 6 channels (numpy adds fewer
        than 8 values in order too), about ten times faster: a reduction over a short inner
        axis costs numpy more than the decoding of the file. A single channel is returned as
        a view.
    """
    n = audio.shape[1]
    if n == 1:
        return audio[:, 0]
    mono = audio[:, 0].copy()
    for channel in range(1, n):
        mono += audio[:, channel]
    mono /= n
    return mono


# libsndfile's frame count of a stream whose length it does not know.
_UNKNOWN_LENGTH = 2**62
# A file decoding to less than its header declares by more than this is refused as truncated
# (lossy decoders may differ from the header by an encoder delay, hence the slack).
_TRUNCATION_SLACK = 0.05
_TRUNCATION_MIN_S = 0.1


def _truncated(decoded: int, declared: int, sr_hz: int) -> bool:
    missing = declared - decoded
    return missing > _TRUNCATION_SLACK * declared and missing > _TRUNCATION_MIN_S * sr_hz


def _undecodable_cause(path: str | os.PathLike, err: Exception) -> str:
    """Why soundfile could not open ``path``: permission, empty file, or not audio it reads.

    libsndfile says "File does not exist or is not a regular file" for files it cannot make
    out (a text file named .mp3, an mp3 cut short in its first frames): misleading for a file
    that is there, so that case gets its own words.
    """
    where = repr(os.fspath(path))
    try:
        size = os.path.getsize(path)
        with open(path, "rb"):
            pass
    except PermissionError:
        return f"cannot read {where}: permission denied"
    except OSError as os_err:
        return f"cannot read {where}: {os_err.strerror or os_err}"
    if size == 0:
        return f"cannot decode {where}: empty file (0 bytes)"
    detail = str(err)
    if "not a regular file" in detail or "Format not recognised" in detail:
        return (
            f"cannot decode {where}: not in an audio format libsndfile reads, or damaged "
            f"at the start ({size} bytes)"
        )
    return f"cannot decode {where} ({detail})"


def probe_duration(path: str | os.PathLike) -> float:
    """Duration in seconds from the file header; NaN when the file cannot be opened.

    Parameters
    ----------
    path : str or os.PathLike
        Audio file.

    Returns
    -------
    float
        Frames over sample rate, in seconds, as the header declares (the file is not decoded).
    """
    try:
        info = sf.info(path)
    except (sf.LibsndfileError, RuntimeError, OSError, TypeError):
        return float("nan")
    return info.frames / info.samplerate if info.samplerate else float("nan")
