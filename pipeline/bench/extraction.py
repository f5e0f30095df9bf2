"""P4: stage one end to end ÷ the slower of its two halves, each run alone.

Numerator: :func:`pipeline.extract.local.extract` with the real musicnn teacher (weights from the
musicnn wheel, ``max_pool`` layer) over ``ctx.size(256, minimum=16)`` clips of 10 s, batches of
16, decoding in ``jobs`` worker processes (``ctx.workers``; 0: extract()'s default,
:func:`pipeline.extract.decode.default_decode_jobs`), writing a fresh clip store each time
(``overwrite=True``): everything a user waits for.

Denominator: the lower of two rates, each clips/s,

- the teacher alone: the same teacher's ``embed`` on the same batches of the same clips, decoded
  into memory beforehand with :func:`pipeline.data.audio.load_audio` (no I/O, no decoding, no
  store);
- decoding alone: the same clips decoded with ``load_audio`` at the teacher's rate by ``jobs``
  plain processes (a ``multiprocessing`` pool, spawned and warmed up before timing), each
  decoding its share and keeping nothing; with ``jobs`` = 1, this process, as extract() then
  decodes here too.

Extraction cannot beat either half, so 1.0 means the pipeline is as fast as its bottleneck:
decoding overlaps the teacher and the pool's own costs (moving waveforms to the teacher's
process, writing the store) are hidden. Details name the side that bounds it.

Before timing, one batch goes through extract() and the teacher untimed (it starts the decode
workers, which joblib keeps for later calls, and lets the teacher set itself up), and the plain
processes each answer once. Then the median of ``ctx.repeats`` passes of each of the three, taking
turns so that a change in the machine's load hits all alike. Details add the decoding rate of
this process alone, the time of the cold first batch and the load average.
"""

from __future__ import annotations

import multiprocessing
import os
import statistics
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.bench import BenchContext, Figure, device_name, error_figure
from pipeline.bench.corpus import make_corpus
from pipeline.data.audio import load_audio
from pipeline.data.manifest import Manifest
from pipeline.extract.decode import default_decode_jobs
from pipeline.extract.local import extract
from pipeline.teachers import Teacher, create_teacher

FULL_CLIPS = 256
MIN_CLIPS = 16
BATCH_SIZE = 16
CLIP_S = 10.0
TEACHER = "musicnn"
WHAT = (
    "clips/s of extract() end to end (decode, embed, write) ÷ min(teacher alone on the batches, "
    "decoding alone on as many processes)"
)


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


def decode_share(paths: Sequence[str], sr_hz: int) -> int:
    """Decode each file with ``load_audio`` at ``sr_hz`` and keep nothing: one process's share.

    Parameters
    ----------
    paths : sequence of str -- audio files
    sr_hz : int -- sampling rate in Hz

    Returns
    -------
    int -- the files decoded.
    """
    for path in paths:
        load_audio(path, sr_hz=sr_hz)
    return len(paths)


def _pid_after(delay_s: float) -> int:
    time.sleep(delay_s)
    return os.getpid()


@contextmanager
def plain_decoders(jobs: int) -> Iterator[Callable[[Sequence[str], int], int]]:
    """A function decoding files on ``jobs`` plain processes, each its share, all started first.

    The processes are spawned (the teacher's threads and device are not forked) and each has
    answered once before this yields, so a timed call pays for decoding only.

    Parameters
    ----------
    jobs : int >= 1 -- processes; 1: this process decodes

    Yields
    ------
    callable -- ``decode(paths, sr_hz)``: every file decoded once, returns how many.
    """
    if jobs <= 1:
        yield decode_share
        return
    with multiprocessing.get_context("spawn").Pool(jobs) as pool:
        answered: set[int] = set()
        while len(answered) < jobs:
            answered.update(pool.map(_pid_after, [0.05] * jobs, chunksize=1))

        def decode(paths: Sequence[str], sr_hz: int) -> int:
            shares = [(paths[k::jobs], sr_hz) for k in range(jobs)]
            return sum(pool.starmap(decode_share, shares, chunksize=1))

        yield decode


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


def _timed(call: Callable[[], Any]) -> float:
    start = time.perf_counter()
    call()
    return time.perf_counter() - start


def measure(ctx: BenchContext) -> Figure:
    """Time extract(), the teacher alone and decoding alone on the same clips; see the module.

    Parameters
    ----------
    ctx : BenchContext

    Returns
    -------
    Figure -- the P4 row: extract()'s clips/s ÷ the lower of the teacher's clips/s on decoded
    batches and the clips/s of decoding on as many plain processes as extract() decodes in.
    """
    n = ctx.size(FULL_CLIPS, minimum=MIN_CLIPS)
    jobs = ctx.workers or default_decode_jobs()
    manifest = make_corpus(ctx.root, n, duration_s=CLIP_S)
    paths = [str(p) for p in manifest.clips["path"]]
    folder = Path(ctx.root) / "extraction"
    teacher = create_teacher(TEACHER, device=ctx.device)
    sr_hz = teacher.sample_rate_hz

    def run_extract(m: Manifest, out: Path) -> Any:
        return extract(
            m, teacher, out, batch_size=BATCH_SIZE, jobs=jobs, overwrite=True, progress=False
        )

    load_before = os.getloadavg()[0]
    cold_s = _timed(lambda: run_extract(_subset(manifest, BATCH_SIZE), folder / "warmup.zarr"))
    start = time.perf_counter()
    waves = decode_all(manifest, sr_hz)
    decode_one_s = time.perf_counter() - start
    embed_batches(teacher, waves[:BATCH_SIZE], BATCH_SIZE)

    summaries: list[Any] = []
    times: dict[str, list[float]] = {"extract": [], "teacher": [], "decode": []}
    store = folder / f"{TEACHER}.zarr"
    with plain_decoders(jobs) as decode:
        for _ in range(ctx.repeats):
            times["extract"].append(_timed(lambda: summaries.append(run_extract(manifest, store))))
            times["teacher"].append(_timed(lambda: embed_batches(teacher, waves, BATCH_SIZE)))
            times["decode"].append(_timed(lambda: decode(paths, sr_hz)))
    rates = {side: n / statistics.median(t) for side, t in times.items()}
    bound = min(("teacher", "decode"), key=rates.__getitem__)

    last = summaries[-1]
    details = {
        "clips": n,
        "clip_s": CLIP_S,
        "teacher": TEACHER,
        "teacher_dim": teacher.dim,
        "teacher_frames_per_clip": teacher.num_frames(int(CLIP_S * sr_hz)),
        "batch_size": BATCH_SIZE,
        "decode_jobs": jobs,
        "decode_in": (
            f"{jobs} joblib worker processes, overlapping the teacher; decoding alone on "
            f"{jobs} plain spawned processes"
            if jobs > 1
            else "this process between teacher calls; decoding alone in this process too"
        ),
        "extract_clips_per_s": rates["extract"],
        "embed_clips_per_s": rates["teacher"],
        "decode_clips_per_s": rates["decode"],
        "bound": bound,
        "bound_clips_per_s": rates[bound],
        "extract_times_s": times["extract"],
        "embed_times_s": times["teacher"],
        "decode_times_s": times["decode"],
        "decode_one_process_clips_per_s": n / decode_one_s,
        "cold_first_batch_s": cold_s,
        "embedded": last.embedded,
        "failed": len(last.failed),
        "shards_written": last.shards_written,
        "load_average_1min": {"start": load_before, "end": os.getloadavg()[0]},
    }
    return Figure(
        id="P4",
        what=WHAT,
        ratio=rates["extract"] / rates[bound],
        target=">= 0.8",
        numerator=f"{rates['extract']:.2f} clips/s extract()",
        denominator=(
            f"{rates[bound]:.2f} clips/s {bound} alone (teacher {rates['teacher']:.2f}, "
            f"decoding ×{jobs} {rates['decode']:.2f})"
        ),
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
