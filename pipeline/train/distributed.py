"""Several training processes (``torchrun``, data-parallel): who this process is, and the few
collective steps the training loop takes (wait for all, take rank 0's value, average logs).

A lone process is rank 0 of 1, and every helper here is then a no-op.
"""

from __future__ import annotations

import gc
import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from pipeline.train.config import ConfigError


@dataclass(frozen=True)
class Processes:
    """This process's place in a ``torchrun`` job; a lone process is rank 0 of 1."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        """Whether this process validates, writes and prints."""
        return self.rank == 0

    @property
    def parallel(self) -> bool:
        """Whether there are several processes."""
        return self.world_size > 1


def processes_from_env(env: Mapping[str, str] | None = None) -> Processes:
    """Rank, world size and local rank from the variables ``torchrun`` sets (default: one).

    Parameters
    ----------
    env : mapping or None
        ``WORLD_SIZE``, ``RANK``, ``LOCAL_RANK``; ``None`` = ``os.environ``.

    Returns
    -------
    Processes
        Rank 0 of 1 when ``WORLD_SIZE`` is missing or ≤ 1.
    """
    env = os.environ if env is None else env
    world_size = int(env.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return Processes()
    rank = int(env["RANK"])
    return Processes(rank, world_size, int(env.get("LOCAL_RANK", rank)))


def process_device(procs: Processes, device: torch.device) -> torch.device:
    """The device of this process: ``cuda:LOCAL_RANK`` (made current) for CUDA with several
    processes, else ``device``.

    Parameters
    ----------
    procs : Processes
        This process's place in the job.
    device : torch.device
        The device asked for.

    Returns
    -------
    torch.device
    """
    if procs.parallel and device.type == "cuda":
        device = torch.device("cuda", procs.local_rank)
        torch.cuda.set_device(device)
    return device


@contextmanager
def process_group(procs: Processes, device: torch.device) -> Iterator[None]:
    """Join the process group for the block (gloo on the CPU, nccl on CUDA) unless this process
    is alone or already in one; leave it at the end, also on errors.

    Several trainings in a row (a comparison) share one group: joining and leaving for each made
    gloo's connections fail after a few runs.

    Parameters
    ----------
    procs : Processes
        This process's place in the job.
    device : torch.device
        This process's device (:func:`process_device`); picks the backend.
    """
    joined = procs.parallel and not dist.is_initialized()
    if joined:
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend, device_id=device if device.type == "cuda" else None)
    try:
        yield
    finally:
        if joined:
            # The DDP wrapper sits in reference cycles; left to interpreter exit, its
            # reducer outlives the group and the process aborts at exit now and then.
            gc.collect()
            dist.destroy_process_group()


def per_process_batch(batch_size: int, world_size: int) -> int:
    """Clips each process takes per step: the global ``batch_size`` split evenly.

    Parameters
    ----------
    batch_size : int
        The global batch.
    world_size : int
        Number of processes.

    Returns
    -------
    int
        ``batch_size // world_size``.

    Raises
    ------
    ConfigError
        When ``world_size`` does not divide ``batch_size``.
    """
    if batch_size % world_size:
        lower = max(world_size, batch_size - batch_size % world_size)
        raise ConfigError(
            f"batch_size={batch_size} is the global batch and must split evenly over "
            f"{world_size} processes: use a multiple of {world_size} "
            f"(e.g. batch_size={lower}) or another number of processes"
        )
    return batch_size // world_size


def barrier(procs: Processes) -> None:
    """Wait until every process gets here; nothing for a lone process.

    Parameters
    ----------
    procs : Processes
        This process's place in the job.
    """
    if procs.parallel:
        dist.barrier()


def from_main(procs: Processes, obj: Any) -> Any:
    """Rank 0's ``obj`` on every process (the others' argument is ignored).

    Parameters
    ----------
    procs : Processes
        This process's place in the job.
    obj : Any
        Picklable; only rank 0's is read.

    Returns
    -------
    Any
        Rank 0's ``obj``.
    """
    if not procs.parallel:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def mean_over_processes(
    procs: Processes, logs: dict[str, float], device: torch.device
) -> dict[str, float]:
    """Each logged training loss part averaged over the processes (same keys on every rank).

    Parameters
    ----------
    procs : Processes
        This process's place in the job.
    logs : dict of str to float
        This process's figures.
    device : torch.device
        Where the all-reduce runs (this process's device).

    Returns
    -------
    dict of str to float
        The means, ``logs`` itself for a lone process.
    """
    if not procs.parallel or not logs:
        return logs
    keys = sorted(logs)
    values = torch.tensor([logs[k] for k in keys], dtype=torch.float64, device=device)
    dist.all_reduce(values)
    return {k: v / procs.world_size for k, v in zip(keys, values.tolist(), strict=True)}
