"""Decoding clips for stage one: each clip decoded and resampled to the encoder's rate, in
worker processes that stay a bounded number of batches ahead of the encoder.

Both engines decode through :func:`decode_clips` (the local one in the workers of
:func:`decode_ahead`, the Ray one in its decode tasks), so their inputs are the same.
"""

from __future__ import annotations

import signal
import sys
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from itertools import islice
from typing import Any

import numpy as np
from joblib.executor import get_memmapping_executor

from pipeline.data.audio import AudioError, load_audio


def decode_clips(
    clips: Sequence[tuple[str, str]],
    sr_hz: int,
    min_duration_s: float,
    max_duration_s: float | None,
) -> list[np.ndarray | str]:
    """Decode clips in a worker: a waveform per clip, or the failure's message.

    Parameters
    ----------
    clips : sequence of (clip_id, path)
        The clips to decode, named in messages by their IDs.
    sr_hz : int
        Sample rate to resample to, in Hz.
    min_duration_s, max_duration_s : float
        Shortest clip accepted and longest kept (None: all), in seconds.

    Returns
    -------
    list of np.ndarray or str
        Per clip its mono float32 waveform, shape (samples,), or the cause of its failure.
    """
    out: list[np.ndarray | str] = []
    for clip_id, path in clips:
        try:
            out.append(
                load_audio(
                    path,
                    sr_hz=sr_hz,
                    min_duration_s=min_duration_s,
                    max_duration_s=max_duration_s,
                    clip=clip_id,
                )
            )
        except AudioError as err:
            out.append(err.cause)
    return out


def _die_with_parent() -> None:
    """Run in each decode worker: the kernel kills it when the extracting process dies, even
    by SIGKILL; otherwise it would idle until the pool's 300 s timeout (Linux only)."""
    if sys.platform.startswith("linux"):
        import ctypes

        ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def decode_ahead(
    tasks: Iterable[tuple[Any, ...]], jobs: int, ahead: int
) -> Iterator[list[np.ndarray | str]]:
    """``decode_clips(*task)`` of each task, in order; at most ``ahead`` tasks in flight.

    A task is submitted only when the consumer takes a result: joblib's generator output
    would decode everything ahead of a slower teacher and hold it all in memory. With
    ``jobs`` <= 1 the tasks run here, one per result taken.

    Parameters
    ----------
    tasks : iterable of tuple
        The arguments of :func:`decode_clips` per batch of clips.
    jobs : int
        Worker processes.
    ahead : int
        Most tasks submitted and not yet taken.

    Yields
    ------
    list of np.ndarray or str
        :func:`decode_clips`'s result per task, in the order of ``tasks``.
    """
    tasks = iter(tasks)
    if jobs <= 1:
        yield from (decode_clips(*task) for task in tasks)
        return
    # joblib's own reusable worker pool, the one its Parallel shares (idle workers exit after
    # 300 s); a pool of another class would clash with Parallel's in the same process.
    executor = get_memmapping_executor(jobs, timeout=300, initializer=_die_with_parent)
    pending = deque(executor.submit(decode_clips, *task) for task in islice(tasks, ahead))
    try:
        while pending:
            result = pending.popleft().result()
            if (task := next(tasks, None)) is not None:
                pending.append(executor.submit(decode_clips, *task))
            yield result
    finally:  # the consumer stopped early: drop what has not started
        for future in pending:
            future.cancel()
