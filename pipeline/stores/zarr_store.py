"""The clip store: per-clip arrays (teacher embeddings, mel spectrograms) in a sharded Zarr group.

Layout of ``<name>.zarr/``::

    data       (N, T_max, D)  float16  chunk = 1 clip, shard = ``shard_size`` clips
    n_frames   (N,)           int32    valid frames per clip; 0 = failed or not yet written
    clip_id    (N,)           str      row order = manifest order
    progress/shard-000003/             done marker of shard 3: its failures, audio identities
    COMPLETE/                          written once every shard is done (Make depends on it)

The markers are Zarr groups recording in their attributes (:mod:`pipeline.stores.markers`);
the root group's hold the ``fingerprint`` (what determines the values), layout and precisions.
A shard is written by exactly one writer in one assignment, then its marker is written; zarr's
local store renames each object into place, so a killed writer leaves a shard either whole or
absent and resuming only redoes shards without a marker. This is the only module that imports
zarr.

Reading: where ``data`` has exactly the layout :func:`open_store` creates, clips are read by
:class:`pipeline.stores.shard_reader.ShardReader` (one ``os.pread`` and one zstd decode per clip,
several times faster than the zarr API); any other layout is read through zarr.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Sequence
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import zarr
from zarr.codecs import ZstdCodec

from pipeline.stores import markers
from pipeline.stores.base import STORE_FORMAT, StoreError
from pipeline.stores.fingerprint import canonical, fingerprint_diff
from pipeline.stores.rows import BatchReads, frame_counts, runs
from pipeline.stores.shard_block import shard_block
from pipeline.stores.shard_reader import ShardReader


class ClipStore(BatchReads):
    """A Zarr clip store opened for reading or writing; it implements
    :class:`pipeline.stores.base.ClipStoreReader`.

    Create or reopen one with :func:`open_store` (or :func:`open_for_writing` in another
    writer), read a finished one with :func:`read_zarr_store`.

    Parameters
    ----------
    path : Path
        The ``<name>.zarr`` folder.
    group : zarr.Group
        The group opened at ``path``.
    direct : bool
        Read ``data`` with :class:`ShardReader` where its layout allows (else through zarr).
    """

    def __init__(self, path: Path, group: zarr.Group, *, direct: bool = True) -> None:
        self.path = path
        self._group = group
        # None: the ``data`` array is read through zarr (another layout, or ``direct=False``).
        self._reader = ShardReader.for_array(Path(path) / "data") if direct else None

    @property
    def reads_directly(self) -> bool:
        """Whether clips are read by :class:`ShardReader` rather than through zarr."""
        return self._reader is not None

    def close(self) -> None:
        """Close the shard files this process holds open (reads reopen them)."""
        if self._reader is not None:
            self._reader.close()

    # -- description -----------------------------------------------------------------------
    @property
    def fingerprint(self) -> dict[str, Any]:
        """Everything that determines the stored values, as given to :func:`open_store`."""
        return dict(self._group.attrs["fingerprint"])

    @property
    def shard_size(self) -> int:
        """Clips per shard."""
        return int(self._group.attrs["layout"]["shard_size"])

    @property
    def dim(self) -> int:
        """Values per frame (``D``)."""
        return int(self._group["data"].shape[2])

    @property
    def max_frames(self) -> int:
        """Frames of a row (``T_max``)."""
        return int(self._group["data"].shape[1])

    def __len__(self) -> int:
        return int(self._group["data"].shape[0])

    @property
    def precisions(self) -> list[str]:
        """Sorted precisions ("fp32", "bf16", …) of the runs that wrote the values (metadata)."""
        return list(self._group.attrs.get("precisions", []))

    def record_precision(self, precision: str) -> None:
        """Add ``precision`` to :attr:`precisions`; it is not part of the fingerprint."""
        self._group.attrs["precisions"] = sorted({*self.precisions, precision})

    @cached_property
    def clip_ids(self) -> list[str]:
        """The ``N`` clip IDs in row order (= manifest order)."""
        return [str(c) for c in self._group["clip_id"][:]]

    # -- progress --------------------------------------------------------------------------
    def done_shards(self) -> set[int]:
        """Indices of the shards whose done marker exists."""
        return markers.done_shards(self.path)

    def failures(self) -> dict[str, str]:
        """Clip ID → cause, for every clip a finished shard could not produce."""
        return markers.failures(self.path)

    @property
    def is_complete(self) -> bool:
        """Whether the ``COMPLETE`` marker exists (every shard is done)."""
        return markers.is_complete(self.path)

    @property
    def summary(self) -> dict[str, Any]:
        """What the extraction recorded when it marked the store complete."""
        return markers.completion_summary(self.path)

    def write_shard(
        self,
        shard: int,
        arrays: Sequence[np.ndarray | None],
        failures: dict[str, str],
        *,
        audio: dict[str, Any] | None = None,
    ) -> None:
        """Write all clips of one shard in one assignment, then its done marker.

        Parameters
        ----------
        shard : int
            Index of the shard (see :meth:`shards`).
        arrays : sequence of np.ndarray or None
            One entry per clip of the shard: the (n_frames, D) array of the i-th clip, or
            ``None`` for a clip that failed. Frames beyond ``max_frames`` are dropped.
        failures : dict
            Clip ID → cause of each failed clip, kept in the shard's marker.
        audio : dict, optional
            Clip ID → identity of the audio its values came from, kept in the marker.

        Raises
        ------
        ValueError
            If the number of arrays or an array's shape does not fit the shard.
        OSError
            If a write fails (e.g. a full disk); the message names the shard, which stays to
            be done.
        """
        plan = self.shards()[shard]
        block, n_frames = shard_block(
            arrays,
            self.clip_ids[plan.start : plan.stop],
            max_frames=self.max_frames,
            dim=self.dim,
            dtype=self._group["data"].dtype,
        )
        marker = {"rows": [plan.start, plan.stop], "failures": failures}
        marker.update({} if audio is None else {"audio": audio})
        try:
            self._group["data"][plan.start : plan.stop] = block
            self._group["n_frames"][plan.start : plan.stop] = n_frames
            self.__dict__.pop("n_frames", None)  # cached by readers of this object
            if self._reader is not None:
                self._reader.forget()
            markers.write_shard_marker(self.path, shard, marker)
        except OSError as err:  # e.g. a full disk: say which shard stays to be done
            raise OSError(
                err.errno, f"{err.strerror or err}, in shard {shard}", err.filename
            ) from err

    def mark_complete(self, summary: dict[str, Any]) -> None:
        """Write the ``COMPLETE`` marker once every shard is done.

        Parameters
        ----------
        summary : dict
            What the extraction records (JSON-serialisable); the marker's content.

        Raises
        ------
        StoreError
            If a shard is not done yet.
        """
        missing = sorted(set(range(len(self.shards()))) - self.done_shards())
        if missing:
            raise StoreError(f"{self.path}: shards {missing} are not done")
        markers.mark_complete(self.path, summary)

    # -- reading ---------------------------------------------------------------------------
    @cached_property
    def n_frames(self) -> np.ndarray:
        """(N,) int32 valid frames per clip; 0 = failed or not yet written."""
        return self._group["n_frames"][:]

    def _read_rows(self, rows: Sequence[int]) -> np.ndarray:
        """(len(rows), max_frames, D) array of ``rows`` (ascending, distinct), zero padded."""
        if self._reader is not None:
            return self._reader.read_rows(rows)
        data = self._group["data"]
        out = np.empty((len(rows), self.max_frames, self.dim), dtype=data.dtype)
        k = 0
        for start, stop in runs(rows):  # a slab per run: far cheaper than a read per row
            out[k : k + stop - start] = data[start:stop]
            k += stop - start
        return out

    def _read_padded_rows(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if self._reader is None:
            return super()._read_padded_rows(rows)
        # Straight into place, in the asked order: rows that hold nothing read as zeros.
        return self._reader.read_rows(rows), frame_counts(self.n_frames, rows)


def open_store(
    path: str | os.PathLike,
    *,
    fingerprint: dict[str, Any],
    clip_ids: Sequence[str],
    dim: int,
    max_frames: int,
    shard_size: int = 256,
    dtype: str = "float16",
    compression: str | None = "zstd",
    overwrite: bool = False,
) -> ClipStore:
    """Create a store, or reopen one for resuming.

    Reopening checks that the fingerprint, the clip IDs and the layout are the same; otherwise
    :class:`StoreError` names the differences (``overwrite=True`` deletes the old store
    instead). Orphan temporary files (``*.partial``) from a killed writer are removed.

    Parameters
    ----------
    path : str or os.PathLike
        The ``<name>.zarr`` folder.
    fingerprint : dict
        Everything that determines the values (see :mod:`pipeline.stores.fingerprint`).
    clip_ids : sequence of str
        The ``N`` clips, in row order.
    dim : int
        Values per frame (``D``).
    max_frames : int
        Frames per row (``T_max``); longer clips are cut.
    shard_size : int
        Clips per shard (the unit of writing and resuming).
    dtype : str
        Element type of ``data``.
    compression : {"zstd", None}
        Codec of each clip; None stores raw chunks (a third larger for mel spectrograms, whose
        noisy mantissas hardly compress, but read several times faster).
    overwrite : bool
        Delete an existing store at ``path`` first.

    Returns
    -------
    ClipStore
        The store, opened for writing.
    """
    path = Path(path)
    if compression not in ("zstd", None):
        raise ValueError(f"compression must be 'zstd' or None, not {compression!r}")
    layout = {
        "dim": dim,
        "max_frames": max_frames,
        "shard_size": shard_size,
        "dtype": dtype,
        "compression": compression or "none",
    }
    if path.exists() and overwrite:
        shutil.rmtree(path)
    if (path / "zarr.json").exists():
        store = ClipStore(path, zarr.open_group(path, mode="r+"))
        diff = fingerprint_diff(store.fingerprint, fingerprint)
        if diff:
            raise StoreError(
                f"{path} was made with other settings ({'; '.join(diff)}); "
                "delete it or extract again with --overwrite"
            )
        # Stores written before compression was a choice were all zstd.
        old_layout = {"compression": "zstd", **store._group.attrs["layout"]}
        old_layout = {k: old_layout.get(k) for k in layout}
        if old_layout != layout or store.clip_ids != [str(c) for c in clip_ids]:
            raise StoreError(
                f"{path} holds other clips or another layout than the manifest asks for; "
                "delete it or extract again with --overwrite"
            )
        for orphan in path.rglob("*.partial"):
            orphan.unlink()
        markers.prepare(path)
        return store

    # Built under another name and renamed into place, so a run killed meanwhile leaves no
    # half-made store that later runs would take for one.
    building = path.with_name(path.name + ".partial")
    for leftover in (building, path):
        if leftover.exists():
            shutil.rmtree(leftover)
    group = zarr.open_group(building, mode="w")
    n = len(clip_ids)
    group.create_array(
        "data",
        shape=(n, max_frames, dim),
        chunks=(1, max_frames, dim),
        shards=(shard_size, max_frames, dim),
        dtype=dtype,
        fill_value=0,
        compressors=ZstdCodec() if compression else None,
    )
    group.create_array("n_frames", shape=(n,), chunks=(shard_size,), dtype="int32", fill_value=0)
    ids = group.create_array("clip_id", shape=(n,), chunks=(max(n, 1),), dtype=str)
    ids[:] = np.asarray([str(c) for c in clip_ids], dtype=object)
    group.attrs.update(
        {
            "format": STORE_FORMAT,
            "fingerprint": canonical(fingerprint),
            "layout": layout,
        }
    )
    markers.prepare(building)
    os.replace(building, path)
    return ClipStore(path, zarr.open_group(path, mode="r+"))


def open_for_writing(path: str | os.PathLike, fingerprint: dict[str, Any]) -> ClipStore:
    """Reopen a store that :func:`open_store` made, to write shards into it from another
    process (e.g. a Ray worker).

    Unlike :func:`open_store` it removes no temporary files, since other writers may be
    renaming theirs into place; it checks the fingerprint, so values of two teachers never
    meet in one store.

    Parameters
    ----------
    path : str or os.PathLike
        The ``<name>.zarr`` folder.
    fingerprint : dict
        The fingerprint the store must have been made with.

    Returns
    -------
    ClipStore
        The store, opened for writing.
    """
    path = Path(path)
    if not (path / "zarr.json").exists():
        raise StoreError(f"no clip store at {path}")
    store = ClipStore(path, zarr.open_group(path, mode="r+"))
    diff = fingerprint_diff(store.fingerprint, fingerprint)
    if diff:
        raise StoreError(f"{path} was made with other settings ({'; '.join(diff)})")
    return store


def read_zarr_store(
    path: str | os.PathLike, *, require_complete: bool = True, direct: bool = True
) -> ClipStore:
    """Open a Zarr clip store for reading (:func:`pipeline.stores.read_store` opens either kind).

    Parameters
    ----------
    path : str or os.PathLike
        The ``<name>.zarr`` folder.
    require_complete : bool
        Refuse a store without its ``COMPLETE`` marker.
    direct : bool
        False reads every clip through the zarr API, never by :class:`ShardReader`; the values
        are the same, only slower.

    Returns
    -------
    ClipStore
        The store, opened read-only.

    Raises
    ------
    StoreError
        If there is no store at ``path``, or it is incomplete and ``require_complete`` is set.
    """
    path = Path(path)
    if not (path / "zarr.json").exists():
        raise StoreError(f"no clip store at {path}")
    store = ClipStore(path, zarr.open_group(path, mode="r"), direct=direct)
    if require_complete and not store.is_complete:
        raise StoreError(f"{path} {markers.incomplete_reason(path)}")
    return store
