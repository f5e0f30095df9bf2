"""Direct reads of a sharded Zarr v3 array, without zarr.

The zarr API costs about a millisecond per clip in its own machinery (an event-loop hop per
read, plus hops for the shard index and the chunk), several times what decompressing the chunk
costs. :class:`ShardReader` therefore reads an array directly when its metadata is exactly the
layout :func:`pipeline.stores.zarr_store.open_store` creates (inner chunks of one clip,
``bytes`` + ``zstd`` codecs or ``bytes`` alone, index at the end with a crc32c): each shard's
index is read and checked once per process, then every clip is one ``os.pread`` and one zstd
decode. :meth:`ShardReader.for_array` returns None for any other layout, which is then read
through zarr.
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import google_crc32c
import numpy as np
from numcodecs import Zstd

from pipeline.stores.base import StoreError

_EMPTY = 2**64 - 1  # offset and length of a chunk the shard does not hold
_NUMERIC_KINDS = "biuf"


def _zstd_codec_ok(codec: Any) -> bool:
    """Whether ``codec`` (an entry of ``zarr.json``'s codecs) is zstd, with or without checksum."""
    if not isinstance(codec, dict) or codec.get("name") != "zstd":
        return False
    config = codec.get("configuration", {})
    return set(config) <= {"level", "checksum"} and isinstance(config.get("level", 0), int)


def _bytes_codec_ok(codec: Any) -> bool:
    """Whether ``codec`` is the ``bytes`` codec with little-endian order."""
    return (
        isinstance(codec, dict)
        and codec.get("name") == "bytes"
        and codec.get("configuration", {}) == {"endian": "little"}
    )


def direct_layout(
    meta: dict[str, Any],
) -> tuple[int, tuple[int, ...], np.dtype, str, bool] | None:
    """The layout of an array if :class:`ShardReader` can read it, else None (then zarr reads it).

    Parameters
    ----------
    meta : dict
        The array's ``zarr.json``, parsed.

    Returns
    -------
    tuple or None
        ``(shard_clips, row_shape, dtype, separator, compressed)``: rows per shard file, shape
        of one row, little-endian element type, chunk key separator, and whether each row is
        zstd-compressed; the arguments of :class:`ShardReader` in that order. None for any
        other layout.
    """
    try:
        shape = [int(n) for n in meta["shape"]]
        dtype = np.dtype(meta["data_type"]) if isinstance(meta["data_type"], str) else None
        grid = meta["chunk_grid"]
        keys = meta["chunk_key_encoding"]
        (codec,) = meta["codecs"]
        config = codec["configuration"]
        inner, index_codecs = config["chunk_shape"], config["index_codecs"]
        separator = keys.get("configuration", {}).get("separator", "/")
        ok = (
            meta.get("zarr_format") == 3
            and meta.get("node_type") == "array"
            and not meta.get("storage_transformers")
            and len(shape) >= 2
            and dtype is not None
            and dtype.kind in _NUMERIC_KINDS
            and meta.get("fill_value") in (0, 0.0)
            and not isinstance(meta.get("fill_value"), bool)
            and grid.get("name") == "regular"
            and keys.get("name") == "default"
            and separator in ("/", ".")
            and codec.get("name") == "sharding_indexed"
            and set(config) <= {"chunk_shape", "codecs", "index_codecs", "index_location"}
            and config.get("index_location", "end") == "end"
            and list(grid["configuration"]["chunk_shape"][1:]) == shape[1:]
            and list(inner) == [1, *shape[1:]]
            and len(config["codecs"]) in (1, 2)
            and (_bytes_codec_ok(config["codecs"][0]) or dtype.itemsize == 1)
            and all(_zstd_codec_ok(c) for c in config["codecs"][1:])
            and len(index_codecs) == 2
            and _bytes_codec_ok(index_codecs[0])
            and index_codecs[1] in ({"name": "crc32c"}, {"name": "crc32c", "configuration": {}})
        )
    except (KeyError, TypeError, ValueError, AttributeError):
        return None
    if not ok:
        return None
    shard_clips = int(grid["configuration"]["chunk_shape"][0])
    compressed = len(config["codecs"]) == 2
    return shard_clips, tuple(shape[1:]), dtype.newbyteorder("<"), separator, compressed


def zstd_content_size(frame: bytes) -> int | None:
    """Decompressed size in bytes that a zstd frame header declares, None if it declares none.

    Frame header as in RFC 8878 (Zstandard): magic number, a descriptor byte (content size
    field flag, single segment flag, dictionary ID flag), the window byte unless single
    segment, the dictionary ID, then the content size (little-endian; 256 added to a 2-byte one).

    Parameters
    ----------
    frame : bytes
        A zstd frame (at least its header).

    Returns
    -------
    int or None
        The declared content size in bytes; None if the header declares none or ``frame`` is
        not a zstd frame.
    """
    if len(frame) < 6 or frame[:4] != b"\x28\xb5\x2f\xfd":
        return None
    descriptor = frame[4]
    single_segment = (descriptor >> 5) & 1
    size_bytes = (1 if single_segment else 0, 2, 4, 8)[descriptor >> 6]
    start = 5 + (0 if single_segment else 1) + (0, 1, 2, 4)[descriptor & 3]
    if size_bytes == 0 or len(frame) < start + size_bytes:
        return None
    size = int.from_bytes(frame[start : start + size_bytes], "little")
    return size + 256 if size_bytes == 2 else size


class ShardReader:
    """Reads rows of a Zarr v3 array stored with the sharding codec, without zarr.

    The layout read is that of the Zarr v3 core specification with its "sharding_indexed"
    codec extension: the array's rows are grouped into shard files ``c/<k>/0/...`` (``k`` = row
    // clips per shard, key separator ``/`` or ``.``), each shard holds one inner chunk per row
    (the row's whole trailing shape), and every inner chunk is the row in little-endian bytes,
    compressed by zstd or stored as is. The shard index sits at the end of the file: per inner
    chunk an (offset, length) pair of little-endian uint64 in bytes from the file's start,
    followed by the crc32c of those pairs (4 bytes, little-endian). A pair of two 2**64 - 1
    marks a chunk the shard does not hold (never written, or equal to the fill value 0): it
    reads as zeros, as does every row of a shard file that does not exist.
    :func:`direct_layout` of the array's ``zarr.json`` decides whether an array has this
    layout (:meth:`for_array` does both).

    Each shard's index is read and checksummed once per process and kept (16 bytes per clip);
    shard files are opened lazily in each process (again after a fork), at most ``max_open``
    at a time (least recently used closed first), and closed on garbage collection. Pickled
    copies carry no file descriptors. Reads from several threads are safe.

    Parameters
    ----------
    array_dir : Path
        The array's folder (holding its ``zarr.json``).
    shard_clips : int
        Rows per shard file.
    row_shape : tuple of int
        Shape of one row (e.g. (max_frames, dim)).
    dtype : np.dtype
        Element type (little-endian).
    separator : str
        Chunk key separator of the default chunk key encoding.
    compressed : bool
        Whether each row is a zstd frame (else the row's raw bytes).
    max_open : int
        Most shard files held open at once.
    """

    def __init__(
        self,
        array_dir: Path,
        shard_clips: int,
        row_shape: tuple[int, ...],
        dtype: np.dtype,
        separator: str = "/",
        compressed: bool = True,
        max_open: int = 16,
    ) -> None:
        self.array_dir = Path(array_dir)
        self.shard_clips = int(shard_clips)
        self.row_shape = tuple(row_shape)
        self.dtype = np.dtype(dtype)
        self.separator = separator
        self.compressed = bool(compressed)
        self.max_open = max(1, int(max_open))
        self._index_bytes = self.shard_clips * 16 + 4
        self._indexes: dict[int, np.ndarray] = {}
        self._files: OrderedDict[int, int] = OrderedDict()
        self._pid = os.getpid()
        self._lock = threading.Lock()
        self._zstd = Zstd()

    @classmethod
    def for_array(cls, array_dir: Path, max_open: int = 16) -> ShardReader | None:
        """A reader for the array in ``array_dir``, or None if its layout is not the one read.

        Parameters
        ----------
        array_dir : Path
            The array's folder (holding its ``zarr.json``).
        max_open : int
            Most shard files held open at once.

        Returns
        -------
        ShardReader or None
            None if ``zarr.json`` is missing, unreadable or describes another layout.
        """
        try:
            meta = json.loads((Path(array_dir) / "zarr.json").read_text())
        except (OSError, ValueError):
            return None
        layout = direct_layout(meta) if isinstance(meta, dict) else None
        return None if layout is None else cls(Path(array_dir), *layout, max_open=max_open)

    # -- file descriptors ----------------------------------------------------------------------
    def _shard_path(self, shard: int) -> Path:
        key = self.separator.join(["c", str(shard)] + ["0"] * len(self.row_shape))
        return self.array_dir / key

    def _fd(self, shard: int) -> int | None:
        """The open shard file (caller holds the lock); None if the shard file does not exist."""
        if self._pid != os.getpid():
            # Inherited through fork: this process's copies of the parent's descriptors.
            self._close_all()
            self._pid = os.getpid()
        fd = self._files.get(shard)
        if fd is not None:
            self._files.move_to_end(shard)
            return fd
        try:
            fd = os.open(self._shard_path(shard), os.O_RDONLY)
        except FileNotFoundError:
            return None  # not cached: a resumed extraction may write it later
        self._files[shard] = fd
        while len(self._files) > self.max_open:
            os.close(self._files.popitem(last=False)[1])
        return fd

    def _close_all(self) -> None:
        while self._files:
            with contextlib.suppress(OSError):
                os.close(self._files.popitem()[1])

    def close(self) -> None:
        """Close this process's shard files (reopened on the next read)."""
        with self._lock:
            if self._pid == os.getpid():
                self._close_all()
            self._files.clear()

    def forget(self) -> None:
        """Drop every cached index and open file (after a shard was written)."""
        self.close()
        self._indexes.clear()

    def __del__(self) -> None:
        if self._files and self._pid == os.getpid():
            self._close_all()

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state.update(_files=OrderedDict(), _lock=None, _pid=None)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()
        self._pid = os.getpid()

    # -- reading -------------------------------------------------------------------------------
    def _index(self, shard: int, fd: int) -> np.ndarray:
        """(shard_clips, 2) uint64 offsets and lengths of the shard's chunks, checked."""
        index = self._indexes.get(shard)
        if index is not None:
            return index
        size = os.fstat(fd).st_size
        path = self._shard_path(shard)
        if size < self._index_bytes:
            raise StoreError(f"{path}: {size} bytes, too short for a shard index")
        raw = os.pread(fd, self._index_bytes, size - self._index_bytes)
        body, crc = raw[:-4], raw[-4:]
        if google_crc32c.value(body).to_bytes(4, "little") != crc:
            raise StoreError(f"{path}: shard index checksum mismatch")
        index = np.frombuffer(body, dtype="<u8").reshape(self.shard_clips, 2)
        held = index[:, 0] != _EMPTY
        if np.any(index[held, 0] + index[held, 1] > size - self._index_bytes):
            raise StoreError(f"{path}: shard index points beyond the chunk data")
        self._indexes[shard] = index
        return index

    def _chunk(self, row: int, out: np.ndarray | None = None) -> bytes | None:
        """The row's stored bytes (a zstd frame, or the raw row when uncompressed, then read
        straight into ``out`` if given and the sizes agree); None where the store holds no
        chunk (fill value)."""
        shard, j = divmod(int(row), self.shard_clips)
        with self._lock:
            fd = self._fd(shard)
            if fd is None:
                return None
            offset, length = self._index(shard, fd)[j]
            if offset == _EMPTY:
                return None
            if out is not None and int(length) == out.nbytes:
                if os.preadv(fd, [out.reshape(-1).view(np.uint8)], int(offset)) != length:
                    raise StoreError(f"{self.array_dir}: row {row} is cut short")
                return b""
            return os.pread(fd, int(length), int(offset))

    def read_into(self, row: int, out: np.ndarray) -> None:
        """Decode one row into ``out``.

        Parameters
        ----------
        row : int
            Row index of the array.
        out : np.ndarray
            C-contiguous array of ``row_shape`` and ``dtype``, overwritten (zeros for a row the
            store does not hold).
        """
        if not self.compressed:
            raw = self._chunk(row, out)
            if raw is None:
                out[...] = 0
            elif raw:
                raise StoreError(f"{self.array_dir}: row {row} holds {len(raw)} bytes")
            return
        frame = self._chunk(row)
        if frame is None:
            out[...] = 0
            return
        if zstd_content_size(frame) == out.nbytes:
            # Straight into ``out`` (saves a copy); a longer frame raises in the decoder.
            self._zstd.decode(frame, out=out.reshape(-1).view(np.uint8))
            return
        decoded = self._zstd.decode(frame)
        if len(decoded) != out.nbytes:
            raise StoreError(f"{self.array_dir}: row {row} decodes to {len(decoded)} bytes")
        out[...] = np.frombuffer(decoded, dtype=self.dtype).reshape(out.shape)

    def read_rows(self, rows: Sequence[int]) -> np.ndarray:
        """Read several rows.

        Parameters
        ----------
        rows : sequence of int
            Row indices, any order (duplicates allowed).

        Returns
        -------
        np.ndarray
            (len(rows), *row_shape) array of ``dtype``, entry ``k`` holding row ``rows[k]``.
        """
        out = np.empty((len(rows), *self.row_shape), dtype=self.dtype)
        for k, row in enumerate(rows):
            self.read_into(row, out[k])
        return out
