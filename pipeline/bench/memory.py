"""Memory of this process and its worker processes, read from Linux ``/proc`` and ``getrusage``.

The peak resident set of a job is that of its process plus that of each of its worker
processes (``VmHWM``, read while they are alive), plus ``ru_maxrss`` of any worker already
reaped. Pages a forked worker shares with its parent count in both, so the sum is an upper
bound of what was resident at any one moment. Elsewhere than Linux the ``/proc`` parts read 0.
"""

from __future__ import annotations

import os
import resource
from pathlib import Path
from typing import Any


def children(pid: int) -> list[int]:
    """PIDs of the live descendants of ``pid`` (Linux ``/proc``; empty elsewhere).

    Parameters
    ----------
    pid : int -- a process ID

    Returns
    -------
    list of int -- children first, then their descendants.
    """
    parents: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:  # the process ended while we looked
            continue
        ppid = int(text[text.rindex(")") + 2 :].split()[1])
        parents.setdefault(ppid, []).append(int(stat.parent.name))
    found, todo = [], [pid]
    while todo:
        kids = parents.get(todo.pop(), [])
        found += kids
        todo += kids
    return found


def _status_kib(pid: int | str, field: str) -> int:
    """Field ``field`` (e.g. ``VmHWM``) of ``/proc/<pid>/status`` in KiB; 0 if unreadable."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(f"{field}:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def vm_hwm_kib(pid: int) -> int:
    """Peak resident set of a live process (``VmHWM``).

    Parameters
    ----------
    pid : int -- a process ID

    Returns
    -------
    int -- KiB; 0 if it cannot be read.
    """
    return _status_kib(pid, "VmHWM")


def rss_kib() -> int:
    """Current resident set of this process (``VmRSS``).

    Returns
    -------
    int -- KiB; 0 if it cannot be read.
    """
    return _status_kib("self", "VmRSS")


def peaks_mib() -> dict[str, Any]:
    """Peak memory of this process and its workers; call while the workers are alive.

    Returns
    -------
    dict -- ``main_mib`` (this process), ``workers_mib`` (one per live worker),
    ``reaped_worker_max_mib`` (the largest reaped worker) and ``total_mib`` (their sum), MiB.
    """
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    reaped = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    workers = [vm_hwm_kib(pid) / 1024 for pid in children(os.getpid())]
    workers = [w for w in workers if w > 0]
    return {
        "main_mib": own,
        "workers_mib": workers,
        "reaped_worker_max_mib": reaped,
        "total_mib": own + sum(workers) + reaped,
    }
