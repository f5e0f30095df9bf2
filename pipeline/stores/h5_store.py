"""HDF5 clip stores: a finished Zarr clip store as one file, to share a cache or read it elsewhere.

Layout of ``<name>.h5`` (every array and attribute of the Zarr store, see
:mod:`pipeline.stores.zarr_store`)::

    data              (N, T_max, D)  float16  chunk = 1 clip (1, T_max, D), no compression
    n_frames          (N,)           int32    valid frames per clip; 0 = failed
    clip_id           (N,)           UTF-8    row order = manifest order
    failures/clip_id  (F,)           UTF-8    clips that could not be produced ...
    failures/cause    (F,)           UTF-8    ... and why
    attributes: format (int), fingerprint, layout and summary (JSON strings), complete (bool)

Any HDF5 reader gets a clip as ``data[row, :n_frames[row]]``.
:func:`pipeline.stores.h5_export.export_h5` writes such a file from a complete Zarr store;
:func:`pipeline.stores.read_store` opens ``.h5`` paths as :class:`H5ClipStore`, which offers the
read interface (:class:`pipeline.stores.base.ClipStoreReader`) that the loader, training and
evaluation use.

Reading: where ``data`` is stored as exported (one row per chunk, no filter, little-endian), each
clip is one ``read_direct_chunk`` straight into the output array, which skips HDF5's selection
machinery; other files are read with one slice per row.

HDF5 handles cannot be pickled and must not be shared across ``fork``: the data handle is opened
on the first read in each process (and reopened when the process ID changes), metadata is read
through short-lived handles, and pickling drops the handle.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from functools import cached_property
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from pipeline.stores.base import StoreError
from pipeline.stores.rows import BatchReads, frame_counts


def _open(path: Path) -> h5py.File:
    # Exported files never change after the rename, so readers need no HDF5 file lock (which
    # fails on some network file systems where shared caches live).
    return h5py.File(path, "r", locking=False)


class H5ClipStore(BatchReads):
    """A finished clip store in one HDF5 file, read-only. Open one with :func:`read_h5_store`.

    Same read interface as :class:`pipeline.stores.zarr_store.ClipStore`
    (:class:`pipeline.stores.base.ClipStoreReader`), plus ``layout``, ``summary`` and ``dtype``.

    Parameters
    ----------
    path : str or os.PathLike
        The HDF5 file.
    direct : bool
        Read rows as raw chunks where the file's layout allows (else as h5py slices).
    """

    def __init__(self, path: str | os.PathLike, *, direct: bool = True) -> None:
        self.path = Path(path)
        self._h5: h5py.File | None = None
        self._dataset: h5py.Dataset | None = None  # ``data`` of ``_h5`` (a lookup costs ~0.5 ms)
        self._pid: int | None = None
        try:
            with self._metadata() as f:
                data = f["data"]
                self._shape = tuple(int(s) for s in data.shape)
                self.dtype = np.dtype(data.dtype)
                self._direct = direct and _chunks_are_rows(data)
                self._attrs = {k: f.attrs[k] for k in ("fingerprint", "layout", "complete")}
                self._summary_text = str(f.attrs.get("summary", "{}"))
                self._precisions_text = str(f.attrs.get("precisions", "[]"))
        except (OSError, KeyError) as err:
            raise StoreError(f"{self.path} is not an HDF5 clip store: {err}") from None
        if len(self._shape) != 3:
            raise StoreError(f"{self.path}: data has shape {self._shape}, expected (N, T, D)")

    # -- handles -------------------------------------------------------------------------------
    @contextmanager
    def _metadata(self) -> Iterator[h5py.File]:
        """This process's data handle if open, else a handle closed again right after."""
        if self._h5 is not None and self._pid == os.getpid():
            yield self._h5
        else:
            with _open(self.path) as f:
                yield f

    def _data(self) -> h5py.Dataset:
        """The ``data`` array through a handle opened in (and owned by) this process."""
        if self._h5 is None or self._pid != os.getpid():
            # A handle inherited through fork is dropped, never used: the child gets its own.
            self._h5 = _open(self.path)
            self._dataset = self._h5["data"]
            self._pid = os.getpid()
        return self._dataset

    def close(self) -> None:
        """Close this process's data handle (the next read reopens it)."""
        if self._h5 is not None and self._pid == os.getpid():
            self._h5.close()
        self._h5 = self._dataset = self._pid = None

    def __enter__(self) -> H5ClipStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_h5"] = state["_dataset"] = state["_pid"] = None
        return state

    # -- description -----------------------------------------------------------------------
    @property
    def fingerprint(self) -> dict[str, Any]:
        """Everything that determines the stored values (that of the exported Zarr store)."""
        return json.loads(self._attrs["fingerprint"])

    @property
    def layout(self) -> dict[str, Any]:
        """dim, max_frames, shard_size, dtype, chunk_clips and compression of the file."""
        return json.loads(self._attrs["layout"])

    @property
    def summary(self) -> dict[str, Any]:
        """What the extraction recorded when it finished (the Zarr store's ``COMPLETE``)."""
        return json.loads(self._summary_text)

    @property
    def precisions(self) -> list[str]:
        """The exported store's precisions ("fp32", "bf16", …; [] in files exported before
        they were carried over)."""
        return list(json.loads(self._precisions_text))

    @property
    def shard_size(self) -> int:
        """Clips per shard of the exported store."""
        return int(self.layout["shard_size"])

    @property
    def dim(self) -> int:
        """Values per frame (``D``)."""
        return self._shape[2]

    @property
    def max_frames(self) -> int:
        """Frames of a row (``T_max``)."""
        return self._shape[1]

    def __len__(self) -> int:
        return self._shape[0]

    @property
    def is_complete(self) -> bool:
        """Whether the export finished (its ``complete`` attribute)."""
        return bool(self._attrs["complete"])

    @cached_property
    def clip_ids(self) -> list[str]:
        """The ``N`` clip IDs in row order (= manifest order)."""
        with self._metadata() as f:
            return f["clip_id"].asstr()[:].tolist()

    @cached_property
    def n_frames(self) -> np.ndarray:
        """(N,) int32 valid frames per clip; 0 = failed."""
        with self._metadata() as f:
            return f["n_frames"][:]

    @cached_property
    def _failures(self) -> dict[str, str]:
        with self._metadata() as f:
            group = f["failures"]
            clips, causes = group["clip_id"].asstr()[:], group["cause"].asstr()[:]
        return dict(zip(clips.tolist(), causes.tolist(), strict=True))

    def failures(self) -> dict[str, str]:
        """Clip ID → cause, for every clip the extraction could not produce."""
        return dict(self._failures)

    def done_shards(self) -> set[int]:
        """Every shard if the file is complete, else none."""
        return set(range(len(self.shards()))) if self.is_complete else set()

    # -- reading ---------------------------------------------------------------------------
    @property
    def reads_directly(self) -> bool:
        """Whether rows are read as raw chunks (``read_direct_chunk``) rather than as slices."""
        return self._direct

    def _read_rows(self, rows: Sequence[int]) -> np.ndarray:
        """(len(rows), max_frames, D) array of ``rows`` (any order), zero padded.

        Row by row: h5py turns a fancy (list) index into one point selection per element, which
        is far slower. Slab reads of consecutive rows were measured to be no faster than this,
        and reading the whole span of a batch's rows is much slower (the rows of a batch are
        spread over a few shards).
        """
        data = self._data()
        out = np.empty((len(rows), self.max_frames, self.dim), dtype=self.dtype)
        for k, row in enumerate(rows):
            if self._direct:
                try:
                    data.id.read_direct_chunk((row, 0, 0), out=out[k].view(np.uint8).reshape(-1))
                    continue
                except (OSError, ValueError, KeyError):
                    pass  # e.g. a chunk never written (fill value): read it the ordinary way
            out[k] = data[row]
        return out

    def _read_padded_rows(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        # Straight into place in the asked order; failed clips were written as zeros.
        return self._read_rows(rows.tolist()), frame_counts(self.n_frames, rows)


def _chunks_are_rows(data: h5py.Dataset) -> bool:
    """Whether each chunk of ``data`` is one whole row stored as is (little-endian, no filter),
    so that a chunk's raw bytes are the row."""
    dtype = np.dtype(data.dtype)
    return (
        data.ndim == 3
        and data.chunks == (1, *data.shape[1:])
        and dtype.kind in "biuf"
        and (dtype.byteorder in ("<", "|") or (dtype.byteorder == "=" and np.little_endian))
        and data.id.get_create_plist().get_nfilters() == 0
    )


def read_h5_store(
    path: str | os.PathLike, *, require_complete: bool = True, direct: bool = True
) -> H5ClipStore:
    """Open an exported HDF5 clip store for reading (:func:`pipeline.stores.read_store` opens
    either kind).

    Parameters
    ----------
    path : str or os.PathLike
        The HDF5 file.
    require_complete : bool
        Refuse a file whose export did not finish.
    direct : bool
        False reads every row as an h5py slice, never as a raw chunk; the values are the same.

    Returns
    -------
    H5ClipStore
        The store.

    Raises
    ------
    StoreError
        If there is no file at ``path``, it is no clip store, or it is incomplete and
        ``require_complete`` is set.
    """
    path = Path(path)
    if not path.is_file():
        raise StoreError(f"no clip store at {path}")
    store = H5ClipStore(path, direct=direct)
    if require_complete and not store.is_complete:
        raise StoreError(f"{path} is incomplete: export it again from its Zarr store")
    return store
