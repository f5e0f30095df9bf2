"""P7: :func:`pipeline.data.audio.load_audio` ÷ the file's bare decode and resample, per format.

For each of WAV (16-bit), FLAC, OGG Vorbis and MP3: one 10 s stereo clip at 44.1 kHz (written
once under ``ctx.root``). Numerator: ``load_audio(path, sr_hz=32000)``: opening, decoding to
float32, the checks (length against the header, finite samples), mixing to mono, soxr HQ
resampling. Denominator: the least any loader does: ``soundfile.read`` to float32 and soxr HQ
on one channel, nothing else. Both make fresh arrays on every call, as a loader does. The
figure is the ratio of the median times over ``ctx.size(40, minimum=5)`` calls, the two sides
taking turns; target <= 1.3.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

from pipeline.bench import BenchContext, Figure, device_name, error_figure
from pipeline.data.audio import load_audio
from pipeline.fileio import atomic_path

FORMATS = {"wav": ("WAV", "PCM_16"), "flac": ("FLAC", "PCM_16"), "ogg": ("OGG", "VORBIS"),
           "mp3": ("MP3", "MPEG_LAYER_III")}  # fmt: skip
SOURCE_HZ = 44_100
TARGET_HZ = 32_000
CLIP_S = 10.0
WHAT = "load_audio ÷ soundfile.read + soxr of one channel (10 s, 44.1 kHz stereo → 32 kHz)"


def write_clip(folder: Path, ext: str) -> Path:
    """The format's test clip (two seeded noise-and-tone channels), written once.

    Parameters
    ----------
    folder : Path -- where the clips live
    ext : str -- a key of :data:`FORMATS`

    Returns
    -------
    Path -- ``<folder>/clip.<ext>``
    """
    path = folder / f"clip.{ext}"
    if path.is_file():
        return path
    t = np.arange(round(CLIP_S * SOURCE_HZ)) / SOURCE_HZ
    noise = np.random.default_rng(0).standard_normal((t.size, 2))
    audio = 0.3 * np.sin(2 * np.pi * 440 * t)[:, None] + 0.05 * noise
    fmt, subtype = FORMATS[ext]
    with atomic_path(path) as tmp:
        sf.write(tmp, audio, SOURCE_HZ, format=fmt, subtype=subtype)
    return path


def bare_decode_resample(path: Path) -> np.ndarray:
    """The reference: float32 decode and soxr HQ of the first channel, without any check.

    Parameters
    ----------
    path : Path -- an audio file

    Returns
    -------
    np.ndarray, (samples,) float32 at :data:`TARGET_HZ`
    """
    audio, rate = sf.read(path, dtype="float32", always_2d=True)
    return soxr.resample(audio[:, 0], rate, TARGET_HZ, quality="HQ")


def measure(ctx: BenchContext, ext: str) -> Figure:
    """P7 for one format.

    Parameters
    ----------
    ctx : BenchContext
    ext : str -- a key of :data:`FORMATS`

    Returns
    -------
    Figure -- id ``P7-<ext>``
    """
    path = write_clip(ctx.root / "decoding", ext)
    calls = ctx.size(40, minimum=5)
    ours, bare = [], []
    load_audio(path, sr_hz=TARGET_HZ)
    bare_decode_resample(path)
    for _ in range(calls):
        started = time.perf_counter()
        load_audio(path, sr_hz=TARGET_HZ)
        ours.append(time.perf_counter() - started)
        started = time.perf_counter()
        bare_decode_resample(path)
        bare.append(time.perf_counter() - started)
    ours_ms, bare_ms = 1e3 * float(np.median(ours)), 1e3 * float(np.median(bare))
    return Figure(
        id=f"P7-{ext}",
        what=WHAT,
        ratio=ours_ms / bare_ms,
        target="<= 1.3",
        numerator=f"{ours_ms:.2f} ms/clip load_audio",
        denominator=f"{bare_ms:.2f} ms/clip decode + resample",
        details={"calls": calls, "clip_s": CLIP_S, "ours_ms": ours_ms, "bare_ms": bare_ms},
        device=device_name("cpu"),
    )


def run(ctx: BenchContext) -> list[Figure]:
    """P7 for each format that ``ctx`` asks for; a failing format becomes an error row.

    Parameters
    ----------
    ctx : BenchContext

    Returns
    -------
    list of Figure
    """
    figures = []
    for ext in FORMATS:
        if not ctx.wants(f"P7-{ext}"):
            continue
        try:
            figures.append(measure(ctx, ext))
        except Exception as err:  # one format's failure must not hide the others
            figures.append(error_figure(f"P7-{ext}", WHAT, err))
    return figures
