"""The clip store: per-clip arrays (teacher embeddings, mel spectrograms) in a sharded Zarr group.

Layout of ``<name>.zarr/``::

    data       (N, T_max, D)  float16  chunk = 1 clip, shard = ``shard_size`` clips
    n_frames   (N,)           int32    valid frames per clip; 0 = failed or not yet written
    clip_id    (N,)           str      row order = manifest order
    progress/shard-000003.json         done marker of shard 3, with that shard's failures
    COMPLETE                           written once every shard is done (Make depends on it)

Group attributes hold the ``fingerprint`` (everything that determines the values) and the layout.
A shard is written by exactly one writer in one assignment, then its marker is written; zarr's
local store renames each object into place, so a killed writer leaves a shard either whole or
absent and resuming only redoes shards without a marker. This is the only module that imports
zarr.

Reading: the zarr API costs about a millisecond per clip in its own machinery (an event-loop hop
per read, plus hops for the shard index and the chunk), several times what decompressing the
chunk costs. :class:`ShardReader` therefore reads ``data`` directly when its metadata is exactly
the layout :func:`open_store` creates (inner chunks of one clip, ``bytes`` + ``zstd`` codecs,
index at the end with a crc32c): each shard's index is read and checked once per process, then
every clip is one ``os.pread`` and one zstd decode. Any other layout is read through zarr.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import threading
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

import google_crc32c
import numpy as np
import zarr
from numcodecs import Zstd
from zarr.codecs import ZstdCodec

from pipeline.stores.fingerprint import canonical, fingerprint_diff

if TYPE_CHECKING:
    from pipeline.stores.h5_store import H5ClipStore

STORE_FORMAT = 1
COMPLETE_MARKER = "COMPLETE"


class StoreError(RuntimeError):
    """A store that cannot be used for the request (stale, incomplete, other clips)."""


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".partial")
    tmp.write_text(text)
    os.replace(tmp, path)


# -- direct reads of sharded arrays ----------------------------------------------------------
_EMPTY = 2**64 - 1  # offset and length of a chunk the shard does not hold
_NUMERIC_KINDS = "biuf"


def _zstd_codec_ok(codec: Any) -> bool:
    if not isinstance(codec, dict) or codec.get("name") != "zstd":
        return False
    config = codec.get("configuration", {})
    return set(config) <= {"level", "checksum"} and isinstance(config.get("level", 0), int)


def _bytes_codec_ok(codec: Any) -> bool:
    return (
        isinstance(codec, dict)
        and codec.get("name") == "bytes"
        and codec.get("configuration", {}) == {"endian": "little"}
    )


def _direct_layout(
    meta: dict[str, Any],
) -> tuple[int, tuple[int, ...], np.dtype, str, bool] | None:
    """(clips per shard, clip shape, dtype, key separator, zstd-compressed) if
    :class:`ShardReader` can read
    the array whose ``zarr.json`` is ``meta``, else None (then zarr reads it)."""
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


def _zstd_content_size(frame: bytes) -> int | None:
    """Decompressed size in bytes that a zstd frame header declares, None if it declares none.

    Frame header as in RFC 8878 (Zstandard): magic number, a descriptor byte (content size
    field flag, single segment flag, dictionary ID flag), the window byte unless single
    segment, the dictionary ID, then the content size (little-endian; 256 added to a 2-byte one).
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
    (the row's whole trailing shape), and every inner chunk is the row in little-endian bytes
    compressed by zstd. The shard index sits at the end of the file: per inner chunk an
    (offset, length) pair of little-endian uint64 in bytes from the file's start, followed by
    the crc32c of those pairs (4 bytes, little-endian). A pair of two 2**64 - 1 marks a chunk
    the shard does not hold (never written, or equal to the fill value 0): it reads as zeros, as
    does every row of a shard file that does not exist. Use :func:`_direct_layout` on the
    array's ``zarr.json`` to decide whether an array has this layout.

    Each shard's index is read and checksummed once per process and kept (16 bytes per clip);
    shard files are opened lazily in each process (again after a fork), at most ``max_open``
    at a time (least recently used closed first), and closed on garbage collection. Pickled
    copies carry no file descriptors. Reads from several threads are safe.

    Parameters
    ----------
    array_dir :
        The array's folder (holding its ``zarr.json``).
    shard_clips :
        Rows per shard file.
    row_shape :
        Shape of one row (e.g. (max_frames, dim)).
    dtype :
        Element type (little-endian).
    separator :
        Chunk key separator of the default chunk key encoding.
    max_open :
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
        """A reader for the array in ``array_dir``, or None if its layout is not the one read."""
        try:
            meta = json.loads((Path(array_dir) / "zarr.json").read_text())
        except (OSError, ValueError):
            return None
        layout = _direct_layout(meta) if isinstance(meta, dict) else None
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
        """Decode row ``row`` into ``out`` (a C-contiguous array of ``row_shape``)."""
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
        if _zstd_content_size(frame) == out.nbytes:
            # Straight into ``out`` (saves a copy); a longer frame raises in the decoder.
            self._zstd.decode(frame, out=out.reshape(-1).view(np.uint8))
            return
        decoded = self._zstd.decode(frame)
        if len(decoded) != out.nbytes:
            raise StoreError(f"{self.array_dir}: row {row} decodes to {len(decoded)} bytes")
        out[...] = np.frombuffer(decoded, dtype=self.dtype).reshape(out.shape)

    def read_rows(self, rows: Sequence[int]) -> np.ndarray:
        """(len(rows), *row_shape) array of the given rows, in any order."""
        out = np.empty((len(rows), *self.row_shape), dtype=self.dtype)
        for k, row in enumerate(rows):
            self.read_into(row, out[k])
        return out


@dataclass(frozen=True)
class ShardPlan:
    """Which manifest rows shard ``index`` covers."""

    index: int
    start: int
    stop: int


class ClipStore:
    """A store opened for reading or writing. Create or reopen one with :func:`open_store`."""

    def __init__(self, path: Path, group: zarr.Group, *, direct: bool = True):
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
        return dict(self._group.attrs["fingerprint"])

    @property
    def shard_size(self) -> int:
        return int(self._group.attrs["layout"]["shard_size"])

    @property
    def dim(self) -> int:
        return int(self._group["data"].shape[2])

    @property
    def max_frames(self) -> int:
        return int(self._group["data"].shape[1])

    def __len__(self) -> int:
        return int(self._group["data"].shape[0])

    @cached_property
    def clip_ids(self) -> list[str]:
        return [str(c) for c in self._group["clip_id"][:]]

    @cached_property
    def _rows(self) -> dict[str, int]:
        return {clip: row for row, clip in enumerate(self.clip_ids)}

    def shards(self) -> list[ShardPlan]:
        n, size = len(self), self.shard_size
        return [
            ShardPlan(k, start, min(start + size, n)) for k, start in enumerate(range(0, n, size))
        ]

    # -- progress --------------------------------------------------------------------------
    def _marker(self, shard: int) -> Path:
        return self.path / "progress" / f"shard-{shard:06d}.json"

    def done_shards(self) -> set[int]:
        return {int(p.stem.split("-")[1]) for p in (self.path / "progress").glob("shard-*.json")}

    def failures(self) -> dict[str, str]:
        """Clip ID → cause, for every clip a finished shard could not produce."""
        out: dict[str, str] = {}
        for marker in sorted((self.path / "progress").glob("shard-*.json")):
            out.update(json.loads(marker.read_text())["failures"])
        return out

    @property
    def is_complete(self) -> bool:
        return (self.path / COMPLETE_MARKER).is_file()

    def write_shard(
        self, shard: int, arrays: Sequence[np.ndarray | None], failures: dict[str, str]
    ) -> None:
        """Write all clips of one shard in one assignment, then its done marker.

        ``arrays[i]`` is the (n_frames, D) array of the shard's i-th clip, or ``None`` for a clip
        that failed (its cause in ``failures``). Frames beyond ``max_frames`` are dropped.
        """
        plan = self.shards()[shard]
        if len(arrays) != plan.stop - plan.start:
            raise ValueError(
                f"shard {shard} holds {plan.stop - plan.start} clips, got {len(arrays)}"
            )
        block = np.zeros((len(arrays), self.max_frames, self.dim), dtype=self._group["data"].dtype)
        n_frames = np.zeros(len(arrays), dtype=np.int32)
        for i, array in enumerate(arrays):
            if array is None:
                continue
            if array.ndim != 2 or array.shape[1] != self.dim:
                clip = self.clip_ids[plan.start + i]
                raise ValueError(f"{clip}: expected (frames, {self.dim}), got {array.shape}")
            t = min(len(array), self.max_frames)
            block[i, :t] = array[:t]
            n_frames[i] = t
        marker = {"rows": [plan.start, plan.stop], "failures": failures}
        try:
            self._group["data"][plan.start : plan.stop] = block
            self._group["n_frames"][plan.start : plan.stop] = n_frames
            self.__dict__.pop("n_frames", None)  # cached by readers of this object
            if self._reader is not None:
                self._reader.forget()
            _write_atomic(self._marker(shard), json.dumps(marker, ensure_ascii=False))
        except OSError as err:  # e.g. a full disk: say which shard stays to be done
            raise OSError(
                err.errno, f"{err.strerror or err}, in shard {shard}", err.filename
            ) from err

    def mark_complete(self, summary: dict[str, Any]) -> None:
        missing = sorted(set(range(len(self.shards()))) - self.done_shards())
        if missing:
            raise StoreError(f"{self.path}: shards {missing} are not done")
        _write_atomic(self.path / COMPLETE_MARKER, json.dumps(summary, indent=2))

    # -- reading ---------------------------------------------------------------------------
    @cached_property
    def n_frames(self) -> np.ndarray:
        return self._group["n_frames"][:]

    def row(self, clip_id: str) -> int:
        try:
            return self._rows[clip_id]
        except KeyError:
            raise KeyError(f"clip {clip_id!r} is not in store {self.path}") from None

    def read(self, clip_id: str) -> np.ndarray:
        """The clip's (n_frames, D) array; (0, D) for a failed clip."""
        return self.read_batch([clip_id])[0]

    def _read_rows(self, rows: Sequence[int]) -> np.ndarray:
        """(len(rows), max_frames, D) array of ``rows`` (ascending, distinct), zero padded."""
        if self._reader is not None:
            return self._reader.read_rows(rows)
        data = self._group["data"]
        out = np.empty((len(rows), self.max_frames, self.dim), dtype=data.dtype)
        k = 0
        for start, stop in _runs(rows):  # a slab per run: far cheaper than a read per row
            out[k : k + stop - start] = data[start:stop]
            k += stop - start
        return out

    def read_padded(self, clip_ids: Iterable[str]) -> tuple[np.ndarray, np.ndarray]:
        """Several clips as one array, in the given order (duplicates allowed).

        Returns
        -------
        block : np.ndarray
            (B, max_frames, D) array; clip ``j`` is ``block[j, :n_frames[j]]``, zeros after it
            (and all zeros for a failed clip).
        n_frames : np.ndarray
            (B,) int32 valid frames per clip.
        """
        rows = np.asarray([self.row(c) for c in clip_ids], dtype=np.int64)
        if self._reader is not None:
            # Straight into place, in the asked order: rows that hold nothing read as zeros.
            counts = self.n_frames[rows].astype(np.int32) if len(rows) else np.zeros(0, np.int32)
            return self._reader.read_rows(rows), counts
        return _gather(self._read_rows, rows, self.n_frames, (self.max_frames, self.dim))

    def read_batch(self, clip_ids: Iterable[str]) -> list[np.ndarray]:
        """Several clips, as (n_frames, D) arrays in the given order; rows are read in sorted
        order, each distinct row once (duplicates are the same array)."""
        rows = [self.row(c) for c in clip_ids]
        return _as_list(self._read_rows, rows, self.n_frames)


def _runs(rows: Sequence[int]) -> list[tuple[int, int]]:
    """(start, stop) ranges of consecutive values of ascending ``rows``."""
    runs: list[tuple[int, int]] = []
    for row in rows:
        if runs and runs[-1][1] == row:
            runs[-1] = (runs[-1][0], row + 1)
        else:
            runs.append((int(row), int(row) + 1))
    return runs


def _stored_rows(rows: Iterable[int], n_frames: np.ndarray) -> list[int]:
    """The distinct rows with at least one frame, ascending (the only ones worth reading)."""
    return sorted({int(r) for r in rows if n_frames[r] > 0})


def _as_list(read_rows, rows: Sequence[int], n_frames: np.ndarray) -> list[np.ndarray]:
    """``read_batch`` of either store kind, given its ``_read_rows``."""
    wanted = _stored_rows(rows, n_frames)
    block = read_rows(wanted)
    by_row = {r: block[k, : n_frames[r]] for k, r in enumerate(wanted)}
    empty = block[:0, 0]  # (0, D)
    return [by_row.get(r, empty) for r in rows]


def _gather(
    read_rows, rows: np.ndarray, n_frames: np.ndarray, row_shape: tuple[int, int]
) -> tuple[np.ndarray, np.ndarray]:
    """``read_padded`` of either store kind, given its ``_read_rows``."""
    wanted = _stored_rows(rows.tolist(), n_frames)
    block = read_rows(wanted)
    counts = n_frames[rows].astype(np.int32) if len(rows) else np.zeros(0, np.int32)
    if len(wanted) == len(rows) and np.all(np.diff(rows) > 0):
        return block, counts  # already in order, nothing to rearrange
    out = np.zeros((len(rows), *row_shape), dtype=block.dtype)
    held = counts > 0
    if held.any():
        out[held] = block[np.searchsorted(wanted, rows[held])]
    return out, counts


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

    ``compression`` is "zstd" or None (raw chunks: a third larger for mel spectrograms, whose
    noisy mantissas hardly compress, but read several times faster).

    Reopening checks that the fingerprint, the clip IDs and the layout are the same; otherwise
    :class:`StoreError` names the differences (``overwrite=True`` deletes the old store
    instead). Orphan temporary files from a killed writer are removed.
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
    (building / "progress").mkdir(exist_ok=True)
    os.replace(building, path)
    return ClipStore(path, zarr.open_group(path, mode="r+"))


def open_for_writing(path: str | os.PathLike, fingerprint: dict[str, Any]) -> ClipStore:
    """Reopen a store that :func:`open_store` made, to write shards into it from another
    process (e.g. a Ray worker). Unlike :func:`open_store` it removes no temporary files, since
    other writers may be renaming theirs into place; it checks the fingerprint, so values of
    two teachers never meet in one store."""
    path = Path(path)
    if not (path / "zarr.json").exists():
        raise StoreError(f"no clip store at {path}")
    store = ClipStore(path, zarr.open_group(path, mode="r+"))
    diff = fingerprint_diff(store.fingerprint, fingerprint)
    if diff:
        raise StoreError(f"{path} was made with other settings ({'; '.join(diff)})")
    return store


def read_store(
    path: str | os.PathLike, *, require_complete: bool = True, direct: bool = True
) -> ClipStore | H5ClipStore:
    """Open a finished store for reading (``.h5`` files: :mod:`pipeline.stores.h5_store`).

    ``direct=False`` reads every clip through the zarr API (or h5py), never by the direct
    readers; the values are the same, only slower.
    """
    path = Path(path)
    if path.suffix.lower() in (".h5", ".hdf5"):
        from pipeline.stores.h5_store import read_h5_store

        return read_h5_store(path, require_complete=require_complete, direct=direct)
    if not (path / "zarr.json").exists():
        raise StoreError(f"no clip store at {path}")
    store = ClipStore(path, zarr.open_group(path, mode="r"), direct=direct)
    if require_complete and not store.is_complete:
        raise StoreError(f"{path} is incomplete (a run was interrupted?): extract again to resume")
    return store
