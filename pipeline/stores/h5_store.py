"""HDF5 clip stores: a finished Zarr clip store as one file, to share a cache or read it elsewhere.

Layout of ``<name>.h5`` (every array and attribute of the Zarr store, see :mod:`pipeline.stores.zarr_store`)::

    data              (N, T_max, D)  float16  chunk = 1 clip (1, T_max, D), no compression
    n_frames          (N,)           int32    valid frames per clip; 0 = failed
    clip_id           (N,)           UTF-8    row order = manifest order
    failures/clip_id  (F,)           UTF-8    clips that could not be produced ...
    failures/cause    (F,)           UTF-8    ... and why
    attributes: format (int), fingerprint, layout and summary (JSON strings), complete (bool)

Any HDF5 reader gets a clip as ``data[row, :n_frames[row]]``. :func:`export_h5` converts a
complete Zarr store shard by shard (memory bounded by one shard) into ``<out>.partial`` and
renames it into place, so a killed export never leaves a file that looks finished.
:func:`pipeline.stores.zarr_store.read_store` opens ``.h5`` paths as :class:`H5ClipStore`, which offers the
read interface of :class:`pipeline.stores.zarr_store.ClipStore` that the loader, training and evaluation use.

Chunks are stored uncompressed by default, because training reads them: the noisy low mantissa
bits of float16 log-mels leave LZF little to remove (the zero padding after short clips is most
of what it saves), while every read of a compressed chunk has to decompress it. LZF is also a
filter of h5py's own, which other HDF5 readers need a plugin for; ``gzip`` is readable
everywhere but slower still. The file is therefore larger than the zstd-compressed Zarr store.

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
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from functools import cached_property
from pathlib import Path
from typing import Any

import h5py
import numpy as np
from tqdm.auto import tqdm

from pipeline.stores.zarr_store import (
    COMPLETE_MARKER,
    STORE_FORMAT,
    ClipStore,
    ShardPlan,
    StoreError,
    _as_list,
    read_store,
)

H5_SUFFIXES = (".h5", ".hdf5")
DEFAULT_COMPRESSION: str | None = None
_STRINGS = h5py.string_dtype("utf-8")
# Rows copied per write at most: a shard, or fewer when a shard would exceed this many bytes.
_BLOCK_BYTES = 256 << 20


def is_h5_path(path: str | os.PathLike) -> bool:
    """Whether ``path`` names an HDF5 clip store (by its suffix)."""
    return Path(path).suffix.lower() in H5_SUFFIXES


def _open(path: Path) -> h5py.File:
    # Exported files never change after the rename, so readers need no HDF5 file lock (which
    # fails on some network file systems where shared caches live).
    return h5py.File(path, "r", locking=False)


class H5ClipStore:
    """A finished clip store in one HDF5 file, read-only. Open one with :func:`read_h5_store`.

    Same read interface as :class:`pipeline.stores.zarr_store.ClipStore`: ``fingerprint``, ``shard_size``,
    ``dim``, ``max_frames``, ``len()``, ``clip_ids``, ``n_frames``, ``failures()``,
    ``is_complete``, ``shards()``, ``done_shards()``, ``row()``, ``read()``, ``read_batch()``.
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
        return json.loads(self._attrs["fingerprint"])

    @property
    def layout(self) -> dict[str, Any]:
        return json.loads(self._attrs["layout"])

    @property
    def summary(self) -> dict[str, Any]:
        """What the extraction recorded when it finished (the Zarr store's ``COMPLETE``)."""
        return json.loads(self._summary_text)

    @property
    def shard_size(self) -> int:
        return int(self.layout["shard_size"])

    @property
    def dim(self) -> int:
        return self._shape[2]

    @property
    def max_frames(self) -> int:
        return self._shape[1]

    def __len__(self) -> int:
        return self._shape[0]

    @property
    def is_complete(self) -> bool:
        return bool(self._attrs["complete"])

    @cached_property
    def clip_ids(self) -> list[str]:
        with self._metadata() as f:
            return f["clip_id"].asstr()[:].tolist()

    @cached_property
    def _rows(self) -> dict[str, int]:
        return {clip: row for row, clip in enumerate(self.clip_ids)}

    @cached_property
    def n_frames(self) -> np.ndarray:
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

    def shards(self) -> list[ShardPlan]:
        n, size = len(self), self.shard_size
        return [
            ShardPlan(k, start, min(start + size, n)) for k, start in enumerate(range(0, n, size))
        ]

    def done_shards(self) -> set[int]:
        return set(range(len(self.shards()))) if self.is_complete else set()

    # -- reading ---------------------------------------------------------------------------
    def row(self, clip_id: str) -> int:
        try:
            return self._rows[clip_id]
        except KeyError:
            raise KeyError(f"clip {clip_id!r} is not in store {self.path}") from None

    @property
    def reads_directly(self) -> bool:
        """Whether rows are read as raw chunks (``read_direct_chunk``) rather than as slices."""
        return self._direct

    def read(self, clip_id: str) -> np.ndarray:
        """The clip's (n_frames, D) array; (0, D) for a failed clip."""
        return self.read_batch([clip_id])[0]

    def _read_rows(self, rows: list[int]) -> np.ndarray:
        """(len(rows), max_frames, D) array of ``rows`` (any order), zero padded.

        Slab reads of consecutive rows were measured to be no faster than this, and reading
        the whole span of a batch's rows is much slower (the rows of a batch are spread over a
        few shards).
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

    def read_padded(self, clip_ids: Iterable[str]) -> tuple[np.ndarray, np.ndarray]:
        """Several clips as one zero-padded (B, max_frames, D) array and their (B,) frame
        counts, in the given order (see :meth:`pipeline.stores.zarr_store.ClipStore.read_padded`)."""
        rows = np.asarray([self.row(c) for c in clip_ids], dtype=np.int64)
        # Straight into place in the asked order; failed clips were written as zeros.
        counts = self.n_frames[rows].astype(np.int32) if len(rows) else np.zeros(0, np.int32)
        return self._read_rows(rows.tolist()), counts

    def read_batch(self, clip_ids: Iterable[str]) -> list[np.ndarray]:
        """Several clips, as (n_frames, D) arrays in the given order; rows are read in sorted
        order, each distinct row once (duplicates are the same array).

        h5py turns a fancy (list) index into one point selection per element, which is far
        slower than reading row by row.
        """
        rows = [self.row(c) for c in clip_ids]
        return _as_list(self._read_rows, rows, self.n_frames)


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
    """Open an exported HDF5 clip store for reading (see :func:`pipeline.stores.zarr_store.read_store`;
    ``direct=False`` reads every row as an h5py slice)."""
    path = Path(path)
    if not path.is_file():
        raise StoreError(f"no clip store at {path}")
    store = H5ClipStore(path, direct=direct)
    if require_complete and not store.is_complete:
        raise StoreError(f"{path} is incomplete: export it again from its Zarr store")
    return store


# -- export ----------------------------------------------------------------------------------
def _source(zarr_path: Path) -> ClipStore:
    if is_h5_path(zarr_path):
        raise StoreError(f"{zarr_path}: export reads a Zarr clip store, not an HDF5 file")
    store = read_store(zarr_path, require_complete=False)
    if not store.is_complete:
        missing = len(store.shards()) - len(store.done_shards())
        raise StoreError(
            f"{zarr_path} is incomplete ({missing} of {len(store.shards())} shards not done): "
            "finish it first (running its extraction again resumes it), then export"
        )
    return store


def _write_metadata(f: h5py.File, src: ClipStore, summary: str, dtype: np.dtype, comp) -> None:
    layout = {
        "dim": src.dim,
        "max_frames": src.max_frames,
        "shard_size": src.shard_size,
        "dtype": dtype.name,
        "chunk_clips": 1,
        "compression": comp or "none",
    }
    f.attrs["format"] = STORE_FORMAT
    f.attrs["fingerprint"] = json.dumps(src.fingerprint, sort_keys=True, ensure_ascii=False)
    f.attrs["layout"] = json.dumps(layout, sort_keys=True)
    f.attrs["summary"] = summary
    f.attrs["complete"] = False  # set once every row is written
    f.create_dataset("clip_id", data=np.asarray(src.clip_ids, dtype=object), dtype=_STRINGS)
    f.create_dataset("n_frames", data=np.asarray(src.n_frames, dtype=np.int32))
    failures = src.failures()
    group = f.create_group("failures")
    group.create_dataset("clip_id", data=np.asarray(list(failures), dtype=object), dtype=_STRINGS)
    group.create_dataset(
        "cause", data=np.asarray(list(failures.values()), dtype=object), dtype=_STRINGS
    )


def _blocks(src: ClipStore, row_bytes: int, block_bytes: int) -> Iterator[tuple[int, int]]:
    """(start, stop) row ranges: each shard, cut into pieces of at most ``block_bytes``."""
    rows = max(1, block_bytes // max(row_bytes, 1))
    for plan in src.shards():
        for start in range(plan.start, plan.stop, rows):
            yield start, min(start + rows, plan.stop)


def _copy_data(
    data: h5py.Dataset, src: ClipStore, bar: tqdm, block_bytes: int = _BLOCK_BYTES
) -> None:
    row_bytes = src.max_frames * src.dim * data.dtype.itemsize
    ids = src.clip_ids
    for start, stop in _blocks(src, row_bytes, block_bytes):
        block = np.zeros((stop - start, src.max_frames, src.dim), dtype=data.dtype)
        for i, array in enumerate(src.read_batch(ids[start:stop])):
            block[i, : len(array)] = array
        data[start:stop] = block
        bar.update(stop - start)


def export_h5(
    zarr_path: str | os.PathLike,
    out_path: str | os.PathLike,
    *,
    compression: str | None = DEFAULT_COMPRESSION,
    progress: bool = True,
    block_bytes: int = _BLOCK_BYTES,
) -> Path:
    """Convert a complete Zarr clip store into one HDF5 file.

    Parameters
    ----------
    zarr_path :
        A complete ``<name>.zarr`` store; :class:`pipeline.stores.zarr_store.StoreError` if it is missing
        or incomplete.
    out_path :
        The HDF5 file to write (replaced if it exists). It is written as
        ``<out_path>.partial`` (a partial file left by a killed export is overwritten) and
        renamed into place once complete; on an error the partial file is removed.
    compression :
        HDF5 filter of the ``data`` chunks: ``None`` (default, fastest to read), ``"lzf"`` or
        ``"gzip"``.
    progress :
        Show a progress bar in clips (only when writing to a terminal).
    block_bytes :
        Upper bound in bytes of the rows held in memory at once (at least one clip).

    Returns
    -------
    Path
        ``out_path``.
    """
    zarr_path, out = Path(zarr_path), Path(out_path)
    src = _source(zarr_path)
    summary = (zarr_path / COMPLETE_MARKER).read_text()
    dtype = src.read(src.clip_ids[0]).dtype if len(src) else np.dtype("float16")
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(out.name + ".partial")
    try:
        with h5py.File(partial, "w") as f:
            _write_metadata(f, src, summary, dtype, compression)
            data = f.create_dataset(
                "data",
                shape=(len(src), src.max_frames, src.dim),
                dtype=dtype,
                chunks=(1, src.max_frames, src.dim) if len(src) else None,
                compression=compression,
                fillvalue=0,
            )
            with tqdm(
                total=len(src),
                unit="clip",
                desc=f"export {zarr_path.name}",
                disable=None if progress else True,  # None: off when not writing to a terminal
                leave=False,
            ) as bar:
                _copy_data(data, src, bar, block_bytes)
            f.attrs["complete"] = True
        os.replace(partial, out)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    return out
