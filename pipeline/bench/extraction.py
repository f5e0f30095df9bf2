"""P4: stage one end to end ÷ the teacher alone on the same batches.

Numerator: :func:`pipeline.extract.local.extract` with the real musicnn teacher (weights from the
musicnn wheel, ``max_pool`` layer) over ``ctx.size(256, minimum=16)`` clips of 10 s, batches of
16, decoding in ``ctx.workers`` joblib processes, writing a fresh clip store each time
(``overwrite=True``): everything a user waits for.

Denominator: the same teacher's ``embed`` on the same batches of the same clips, decoded into
memory beforehand with :func:`pipeline.data.audio.load_audio` (no I/O, no decoding, no store).

Both are clips/s; the figure is their ratio (1.0 = decoding and writing are fully hidden behind
the teacher). With ``ctx.workers`` = 1, joblib decodes in the calling process between teacher
calls, so nothing overlaps (extract()'s own default is CPU count − 1 workers).

Before timing, one batch goes through each side untimed: it starts the decode workers (joblib
keeps them for later calls) and lets the teacher set itself up. Then the median of
``ctx.repeats`` passes of each, the two sides taking turns so that a change in the machine's
load hits both alike. Details add the decoding rate alone (one process), the time of the cold
first batch and the load average.
"""

from __future__ import annotations

import os
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.bench import BenchContext, Figure, device_name, error_figure
from pipeline.bench.corpus import make_corpus
from pipeline.data.audio import load_audio
from pipeline.data.manifest import Manifest
from pipeline.extract.local import extract
from pipeline.teachers import Teacher, create_teacher

FULL_CLIPS = 256
MIN_CLIPS = 16
BATCH_SIZE = 16
CLIP_S = 10.0
TEACHER = "musicnn"
WHAT = "clips/s of extract() end to end (decode, embed, write) ÷ the teacher alone on the batches"


def decode_all(manifest: Manifest, sr_hz: int) -> list[np.ndarray]:
    """Every clip of ``manifest`` as a mono float32 waveform at ``sr_hz``, in manifest order.

    Parameters
    ----------
    manifest : Manifest -- the clips
    sr_hz : int -- sampling rate in Hz

    Returns
    -------
    list of np.ndarray, (samples,) float32 -- one per clip.
    """
    return [load_audio(path, sr_hz=sr_hz) for path in manifest.clips["path"]]


def embed_batches(teacher: Teacher, waves: list[np.ndarray], batch_size: int) -> int:
    """``teacher.embed`` over consecutive batches of ``waves``.

    Parameters
    ----------
    teacher : Teacher
    waves : list of np.ndarray -- (samples,) float32 waveforms at the teacher's rate
    batch_size : int > 0 -- waveforms per call

    Returns
    -------
    int -- the embedding frames made, all clips together.
    """
    frames = 0
    for start in range(0, len(waves), batch_size):
        frames += sum(len(e) for e in teacher.embed(waves[start : start + batch_size]))
    return frames


def _subset(manifest: Manifest, n: int) -> Manifest:
    return Manifest(f"{manifest.name}-first{n}", manifest.classes, manifest.clips.iloc[:n])


def measure(ctx: BenchContext) -> Figure:
    """Time extract() and the teacher alone on the same clips; see the module docstring.

    Parameters
    ----------
    ctx : BenchContext

    Returns
    -------
    Figure -- the P4 row: extract()'s clips/s ÷ the teacher's clips/s on decoded batches.
    """
    n = ctx.size(FULL_CLIPS, minimum=MIN_CLIPS)
    manifest = make_corpus(ctx.root, n, duration_s=CLIP_S)
    folder = Path(ctx.root) / "extraction"
    teacher = create_teacher(TEACHER, device=ctx.device)

    def run_extract(m: Manifest, out: Path) -> Any:
        return extract(
            m, teacher, out, batch_size=BATCH_SIZE, jobs=ctx.workers, overwrite=True, progress=False
        )

    load_before = os.getloadavg()[0]
    start = time.perf_counter()
    run_extract(_subset(manifest, BATCH_SIZE), folder / "warmup.zarr")
    cold_s = time.perf_counter() - start
    start = time.perf_counter()
    waves = decode_all(manifest, teacher.sample_rate_hz)
    decode_s = time.perf_counter() - start
    embed_batches(teacher, waves[:BATCH_SIZE], BATCH_SIZE)

    summaries, extract_times, embed_times = [], [], []
    for _ in range(ctx.repeats):
        start = time.perf_counter()
        summaries.append(run_extract(manifest, folder / f"{TEACHER}.zarr"))
        extract_times.append(time.perf_counter() - start)
        start = time.perf_counter()
        embed_batches(teacher, waves, BATCH_SIZE)
        embed_times.append(time.perf_counter() - start)
    extract_s, embed_s = statistics.median(extract_times), statistics.median(embed_times)

    extract_rate, embed_rate = n / extract_s, n / embed_s
    last = summaries[-1]
    details = {
        "clips": n,
        "clip_s": CLIP_S,
        "teacher": TEACHER,
        "teacher_dim": teacher.dim,
        "teacher_frames_per_clip": teacher.num_frames(int(CLIP_S * teacher.sample_rate_hz)),
        "batch_size": BATCH_SIZE,
        "decode_jobs": ctx.workers,
        "decode_in": (
            f"{ctx.workers} joblib worker processes, overlapping the teacher"
            if ctx.workers > 1
            else "this process between teacher calls (joblib runs n_jobs=1 in-process)"
        ),
        "extract_clips_per_s": extract_rate,
        "extract_times_s": extract_times,
        "embed_clips_per_s": embed_rate,
        "embed_times_s": embed_times,
        "decode_only_clips_per_s": n / decode_s,
        "decode_note": "load_audio at the teacher's rate in this process, once, not overlapped",
        "cold_first_batch_s": cold_s,
        "embedded": last.embedded,
        "failed": len(last.failed),
        "shards_written": last.shards_written,
        "load_average_1min": {"start": load_before, "end": os.getloadavg()[0]},
    }
    return Figure(
        id="P4",
        what=WHAT,
        ratio=extract_rate / embed_rate,
        target=">= 0.8",
        numerator=f"{extract_rate:.2f} clips/s extract()",
        denominator=f"{embed_rate:.2f} clips/s {TEACHER}.embed on decoded batches",
        details=details,
        device=device_name(ctx.device),
    )


def run(ctx: BenchContext) -> list[Figure]:
    """P4 (if ``ctx`` asks for it); a failure becomes an error row.

    Parameters
    ----------
    ctx : BenchContext

    Returns
    -------
    list of Figure -- empty when P4 is not asked for.
    """
    if not ctx.wants("P4"):
        return []
    try:
        return [measure(ctx)]
    except Exception as err:  # e.g. the musicnn weights are missing: report it, go on
        return [error_figure("P4", WHAT, err)]
