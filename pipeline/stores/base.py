"""What every clip store shares: its errors, markers, shard plan and read interface.

Two backends implement :class:`ClipStoreReader`: :class:`pipeline.stores.zarr_store.ClipStore`
(the sharded Zarr folder that extraction writes and resumes) and
:class:`pipeline.stores.h5_store.H5ClipStore` (a finished store exported to one HDF5 file).
The loader, training and evaluation read either through this interface. This module imports
neither zarr nor h5py.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

STORE_FORMAT = 1
# A Zarr store's completion marker, relative to the store: the metadata of a group whose
# attributes hold the run's summary (:mod:`pipeline.stores.markers`). Make depends on it.
COMPLETE_MARKER = "COMPLETE/zarr.json"
H5_SUFFIXES = (".h5", ".hdf5")


class StoreError(RuntimeError):
    """A store that cannot be used for the request (stale, incomplete, other clips)."""


@dataclass(frozen=True)
class ShardPlan:
    """Which manifest rows shard ``index`` covers: ``start`` up to, not including, ``stop``."""

    index: int
    start: int
    stop: int


def plan_shards(n_clips: int, shard_size: int) -> list[ShardPlan]:
    """Cut ``n_clips`` rows into consecutive shards of ``shard_size`` rows (the last may be
    shorter).

    Parameters
    ----------
    n_clips : int
        Rows of the store.
    shard_size : int
        Rows per shard (at least 1).

    Returns
    -------
    list of ShardPlan
        One plan per shard, in row order; empty when ``n_clips`` is 0.
    """
    return [
        ShardPlan(k, start, min(start + shard_size, n_clips))
        for k, start in enumerate(range(0, n_clips, shard_size))
    ]


def is_h5_path(path: str | os.PathLike) -> bool:
    """Whether ``path`` names an HDF5 clip store (by its suffix).

    Parameters
    ----------
    path : str or os.PathLike
        A store path.

    Returns
    -------
    bool
        True for ``.h5`` and ``.hdf5`` (any case), False otherwise (a Zarr folder).
    """
    return Path(path).suffix.lower() in H5_SUFFIXES


class ClipStoreReader(Protocol):
    """The read interface of a clip store, whichever its backend.

    A store holds ``N`` clips (rows, in manifest order) of at most ``max_frames`` frames of
    ``dim`` values each; clip ``i`` is the first ``n_frames[i]`` frames of its row, and a clip
    that could not be produced has 0 frames (its cause in :meth:`failures`).
    """

    path: Path

    @property
    def fingerprint(self) -> dict[str, Any]:
        """Everything that determines the stored values (see :mod:`pipeline.stores.fingerprint`)."""
        ...

    @property
    def shard_size(self) -> int:
        """Clips per shard."""
        ...

    @property
    def dim(self) -> int:
        """Values per frame (``D``)."""
        ...

    @property
    def max_frames(self) -> int:
        """Frames of a row (``T_max``); longer clips were cut to it."""
        ...

    @property
    def is_complete(self) -> bool:
        """Whether every shard is done."""
        ...

    @property
    def reads_directly(self) -> bool:
        """Whether rows are read by the backend's fast path rather than its general API."""
        ...

    @property
    def clip_ids(self) -> list[str]:
        """The ``N`` clip IDs in row order."""
        ...

    @property
    def n_frames(self) -> np.ndarray:
        """(N,) int32 valid frames per clip; 0 = failed or not yet written."""
        ...

    def __len__(self) -> int: ...

    def failures(self) -> dict[str, str]:
        """Clip ID → cause, for every clip a finished shard could not produce."""
        ...

    def shards(self) -> list[ShardPlan]:
        """The store's shards in row order (see :func:`plan_shards`)."""
        ...

    def done_shards(self) -> set[int]:
        """Indices of the shards already written."""
        ...

    def row(self, clip_id: str) -> int:
        """Row of ``clip_id``; KeyError if the store does not hold it."""
        ...

    def read(self, clip_id: str) -> np.ndarray:
        """The clip's (n_frames, D) array; (0, D) for a failed clip."""
        ...

    def read_batch(self, clip_ids: Iterable[str]) -> list[np.ndarray]:
        """Several clips as (n_frames, D) arrays, in the given order."""
        ...

    def read_padded(self, clip_ids: Iterable[str]) -> tuple[np.ndarray, np.ndarray]:
        """Several clips as one zero-padded (B, max_frames, D) array and their (B,) int32 frame
        counts, in the given order."""
        ...

    def close(self) -> None:
        """Release the files this process holds open (reads reopen them)."""
        ...
