"""Decoding clips for stage one: each clip decoded and resampled to the encoder's rate, in
worker processes that stay a bounded number of batches ahead of the encoder.

Both engines decode through :func:`decode_clips` (the local one in the workers of
:func:`decode_ahead`, the Ray one in its decode tasks), so their inputs are the same.

The waveforms do not come back through the pool's result pipe: a 10 s clip at 16 kHz is 640 KB
of float32, and the pipe is one for all workers, read by one thread of the extracting process
and pickled twice on the way (joblib's reducer pickles each array into bytes that are pickled
again). That cost about 1 ms of the extracting process's time per clip, and workers waited in
turn to write: the pool stayed at a few hundred clips/s however many workers decoded. Each
worker instead writes a task's waveforms, one after the other, into one file of a folder in
shared memory (``/dev/shm`` where it has room) and returns only the file's name and the clips'
lengths or failures; the extracting process reads the file in one call and deletes it. The
folder is registered with joblib's resource tracker, which deletes it if the extracting process
is killed.
"""

from __future__ import annotations

import os
import shutil
import signal
import sys
import tempfile
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import wait
from contextlib import suppress
from dataclasses import dataclass
from itertools import islice
from typing import Any

import numpy as np
from joblib.executor import get_memmapping_executor
from joblib.externals.loky.backend import resource_tracker

from pipeline.data.audio import AudioError, load_audio

# Below this much free room, /dev/shm (e.g. a container's default 64 MiB) is not used.
SHARED_MEMORY_MIN_FREE_BYTES = 1 << 30


def usable_cores() -> int:
    """The CPU cores this process may run on.

    Returns
    -------
    int
        At least 1: the size of the process's CPU affinity set where the system has one
        (Linux: also what ``taskset`` and container CPU sets allow), else ``os.cpu_count()``.
    """
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return os.cpu_count() or 1


def default_decode_jobs() -> int:
    """Decode worker processes when none are asked for: one per usable core but one.

    Returns
    -------
    int
        ``max(1, usable_cores() - 1)``: the remaining core runs the encoder and the writing.
    """
    return max(1, usable_cores() - 1)


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


@dataclass(frozen=True)
class _Spilled:
    """A task's waveforms, written one after the other as float32 into the file ``path``;
    ``entries`` holds per clip its number of samples or the cause of its failure."""

    path: str
    entries: list[int | str]


def _decode_to_file(folder: str, *task: Any) -> _Spilled | list[np.ndarray | str]:
    """Run in a worker: :func:`decode_clips` of ``task``, its waveforms written into a new file
    of ``folder``; where that fails (e.g. no room left), the waveforms themselves."""
    results = decode_clips(*task)
    waves = [np.ascontiguousarray(r, np.float32) for r in results if not isinstance(r, str)]
    if not waves:
        return results
    path = None
    try:
        fd, path = tempfile.mkstemp(suffix=".f32", dir=folder)
        with open(fd, "wb") as f:
            for wave in waves:
                f.write(wave.data)
    except OSError:
        if path is not None:
            with suppress(OSError):
                os.unlink(path)
        return results
    return _Spilled(path, [r if isinstance(r, str) else len(r) for r in results])


def _unspill(result: _Spilled | list[np.ndarray | str]) -> list[np.ndarray | str]:
    """A worker's result as :func:`decode_clips` returns it: a spilled file read and deleted.

    The waveforms are consecutive views of one array read in a single call."""
    if not isinstance(result, _Spilled):
        return result
    lengths = [e for e in result.entries if not isinstance(e, str)]
    try:
        samples = np.fromfile(result.path, dtype=np.float32)
    finally:
        os.unlink(result.path)
    if len(samples) != sum(lengths):
        raise OSError(f"{result.path}: {len(samples)} samples read, {sum(lengths)} written")
    waves = iter(np.split(samples, np.cumsum(lengths)[:-1]))
    return [e if isinstance(e, str) else next(waves) for e in result.entries]


def _spill_root() -> str | None:
    """Where spill folders go: ``/dev/shm`` with room to spare, else (None) the temporary
    folder."""
    try:
        stat = os.statvfs("/dev/shm")
    except (AttributeError, OSError):  # no such folder, or no statvfs (Windows)
        return None
    return "/dev/shm" if stat.f_bavail * stat.f_frsize >= SHARED_MEMORY_MIN_FREE_BYTES else None


def _die_with_parent(parent: int) -> None:
    """Run in each decode worker: the kernel kills it when the extracting process (``parent``)
    dies, even by SIGKILL; otherwise it would idle until the pool's 300 s timeout, holding the
    resource tracker open so that the spill folder stays (Linux only). A worker whose parent
    died while it was starting, before this ran, is never signalled: it exits here."""
    if sys.platform.startswith("linux"):
        import ctypes

        ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        if os.getppid() != parent:
            os._exit(1)


def decode_ahead(
    tasks: Iterable[tuple[Any, ...]], jobs: int, ahead: int, spill_dir: str | None = None
) -> Iterator[list[np.ndarray | str]]:
    """``decode_clips(*task)`` of each task, in order; at most ``ahead`` tasks in flight.

    A task is submitted only when the consumer takes a result: joblib's generator output
    would decode everything ahead of a slower teacher and hold it all in memory. With
    ``jobs`` <= 1 the tasks run here, one per result taken. The waveforms come back through
    files in shared memory (see the module's docstring), not through the pool's pipe.

    Parameters
    ----------
    tasks : iterable of tuple
        The arguments of :func:`decode_clips` per batch of clips.
    jobs : int
        Worker processes.
    ahead : int
        Most tasks submitted and not yet taken.
    spill_dir : str, optional
        Where the folder of the workers' waveform files goes; default: ``/dev/shm`` when it has
        ``SHARED_MEMORY_MIN_FREE_BYTES`` free, else the system's temporary folder.

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
    executor = get_memmapping_executor(
        jobs, timeout=300, initializer=_die_with_parent, initargs=(os.getpid(),)
    )
    folder = tempfile.mkdtemp(prefix="pipeline-decode-", dir=spill_dir or _spill_root())
    resource_tracker.register(folder, "folder")  # deleted by the tracker if this process dies
    pending = deque(
        executor.submit(_decode_to_file, folder, *task) for task in islice(tasks, ahead)
    )
    try:
        while pending:
            result = _unspill(pending.popleft().result())
            if (task := next(tasks, None)) is not None:
                pending.append(executor.submit(_decode_to_file, folder, *task))
            yield result
    finally:  # the consumer stopped early: drop what has not started, let the rest finish
        wait([future for future in pending if not future.cancel()])
        shutil.rmtree(folder, ignore_errors=True)
        resource_tracker.unregister(folder, "folder")
