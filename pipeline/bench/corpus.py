"""Benchmark audio: a few distinct files, many clip IDs.

Benchmarks need thousands of clips but not thousands of distinct sounds: ``make_corpus`` writes
``n_files`` files once (noise plus a few tones, 44.1 kHz stereo like OpenMIC's releases, in
rotating formats wav / ogg (Vorbis) / mp3) and a manifest of ``n_clips`` clip IDs that cycle
through them. Every clip is still decoded, resampled and embedded on its own, so the work per
clip is real; only the disk holds less.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import soundfile as sf

from pipeline.data.manifest import Manifest, make_manifest
from pipeline.fileio import atomic_path

FORMATS = (("wav", "WAV", "PCM_16"), ("ogg", "OGG", "VORBIS"), ("mp3", "MP3", "MPEG_LAYER_III"))
SAMPLE_RATE_HZ = 44_100
N_CLASSES = 10


def synth_clip(seed: int, duration_s: float, sample_rate_hz: int = SAMPLE_RATE_HZ) -> np.ndarray:
    """(samples, 2) float32 stereo: pink-ish noise and three random tones, peak 0.5.

    Parameters
    ----------
    seed : int -- the noise and the tones' frequencies (80 to 4000 Hz) and phases
    duration_s : float -- length in seconds
    sample_rate_hz : int -- sampling rate in Hz

    Returns
    -------
    np.ndarray, (int(duration_s * sample_rate_hz), 2) float32
    """
    rng = np.random.default_rng(seed)
    n = int(duration_s * sample_rate_hz)
    t = np.arange(n) / sample_rate_hz
    noise = np.cumsum(rng.standard_normal((n, 2)), axis=0)
    noise -= np.linspace(noise[0], noise[-1], n)  # remove the random walk's drift
    noise /= np.abs(noise).max() + 1e-9
    tones = sum(
        np.sin(2 * np.pi * f * t + phase)[:, None]
        for f, phase in zip(rng.uniform(80, 4000, 3), rng.uniform(0, np.pi, 3), strict=True)
    )
    audio = 0.3 * noise + 0.2 * tones / 3
    return (0.5 * audio / np.abs(audio).max()).astype(np.float32)


def write_audio_files(
    folder: Path, n_files: int, *, duration_s: float = 10.0, seed: int = 0
) -> list[Path]:
    """``n_files`` clips in ``folder`` in rotating formats; files already there are kept.

    Parameters
    ----------
    folder : Path -- created if missing
    n_files : int -- file ``i`` is :func:`synth_clip` ``(seed + i)`` in format ``i % 3`` of
        :data:`FORMATS`
    duration_s : float -- length of each clip in seconds
    seed : int -- seed of the first file

    Returns
    -------
    list of Path -- ``folder / f"clip{i:04d}-{duration_s:g}s.{ext}"`` per file.
    """
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n_files):
        ext, fmt, subtype = FORMATS[i % len(FORMATS)]
        path = folder / f"clip{i:04d}-{duration_s:g}s.{ext}"
        if not path.is_file():
            audio = synth_clip(seed + i, duration_s)
            with atomic_path(path) as tmp:  # its suffix is not the format's: name it
                sf.write(tmp, audio, SAMPLE_RATE_HZ, format=fmt, subtype=subtype)
        paths.append(path)
    return paths


def make_corpus(
    root: str | os.PathLike,
    n_clips: int,
    *,
    n_files: int = 48,
    duration_s: float = 10.0,
    seed: int = 0,
) -> Manifest:
    """A manifest of ``n_clips`` clips (all in the train split) over ``n_files`` audio files.

    Files go to ``root/audio/`` and are reused by later calls. Labels are random (10 classes,
    fixed per file), enough for a training step to have a real loss.

    Parameters
    ----------
    root : str or PathLike -- the benchmark's folder
    n_clips : int >= 1 -- clip IDs ``bench-000000`` …, all in the train split
    n_files : int >= 1 -- distinct audio files (at most ``n_clips``), cycled through in order
    duration_s : float -- length of each clip in seconds
    seed : int -- seed of the labels

    Returns
    -------
    Manifest -- named ``bench-<n_clips>``.
    """
    if n_clips < 1 or n_files < 1:
        raise ValueError(f"need n_clips >= 1 and n_files >= 1, got {n_clips} and {n_files}")
    files = write_audio_files(Path(root) / "audio", min(n_files, n_clips), duration_s=duration_s)
    rng = np.random.default_rng(seed)
    file_labels = (rng.random((len(files), N_CLASSES)) < 0.3).astype(np.float32)
    pick = np.arange(n_clips) % len(files)
    return make_manifest(
        f"bench-{n_clips}",
        clip_ids=[f"bench-{i:06d}" for i in range(n_clips)],
        paths=[files[k] for k in pick],
        splits=["train"] * n_clips,
        classes=[f"class{c}" for c in range(N_CLASSES)],
        labels=file_labels[pick],
        durations_s=[duration_s] * n_clips,
    )
