"""Export a complete Zarr clip store as one HDF5 file (layout: :mod:`pipeline.stores.h5_store`).

:func:`export_h5` converts the store shard by shard (memory bounded by one shard) into
``<out>.partial`` and renames it into place, so a killed export never leaves a file that looks
finished.

Chunks are stored uncompressed by default, because training reads them: the noisy low mantissa
bits of float16 log-mels leave LZF little to remove (the zero padding after short clips is most
of what it saves), while every read of a compressed chunk has to decompress it. LZF is also a
filter of h5py's own, which other HDF5 readers need a plugin for; ``gzip`` is readable
everywhere but slower still. The file is therefore larger than the zstd-compressed Zarr store.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import h5py
import numpy as np
from tqdm.auto import tqdm

from pipeline.fileio import PARTIAL_SUFFIX
from pipeline.stores.base import STORE_FORMAT, StoreError, is_h5_path
from pipeline.stores.zarr_store import ClipStore, read_zarr_store

DEFAULT_COMPRESSION: str | None = None
_STRINGS = h5py.string_dtype("utf-8")
# Rows copied per write at most: a shard, or fewer when a shard would exceed this many bytes.
_BLOCK_BYTES = 256 << 20


def _source(zarr_path: Path) -> ClipStore:
    """The complete Zarr store to export; StoreError if it is an HDF5 path or incomplete."""
    if is_h5_path(zarr_path):
        raise StoreError(f"{zarr_path}: export reads a Zarr clip store, not an HDF5 file")
    store = read_zarr_store(zarr_path, require_complete=False)
    if not store.is_complete:
        missing = len(store.shards()) - len(store.done_shards())
        raise StoreError(
            f"{zarr_path} is incomplete ({missing} of {len(store.shards())} shards not done): "
            "finish it first (running its extraction again resumes it), then export"
        )
    return store


def _write_metadata(
    f: h5py.File, src: ClipStore, summary: str, dtype: np.dtype, comp: str | None
) -> None:
    """Every array and attribute but ``data``, with ``complete`` still False."""
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
    f.attrs["precisions"] = json.dumps(src.precisions)
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
    """Copy every row of ``src`` into ``data``, a block of rows at a time."""
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
    zarr_path : str or os.PathLike
        A complete ``<name>.zarr`` store; :class:`pipeline.stores.base.StoreError` if it is
        missing or incomplete.
    out_path : str or os.PathLike
        The HDF5 file to write (replaced if it exists). It is written as
        ``<out_path>.partial`` (a partial file left by a killed export is overwritten) and
        renamed into place once complete; on an error the partial file is removed.
    compression : {None, "lzf", "gzip"}
        HDF5 filter of the ``data`` chunks: ``None`` (default, fastest to read), ``"lzf"`` or
        ``"gzip"``.
    progress : bool
        Show a progress bar in clips (only when writing to a terminal).
    block_bytes : int
        Upper bound in bytes of the rows held in memory at once (at least one clip).

    Returns
    -------
    Path
        ``out_path``.
    """
    zarr_path, out = Path(zarr_path), Path(out_path)
    src = _source(zarr_path)
    summary = json.dumps(src.summary, indent=2)
    dtype = src.read(src.clip_ids[0]).dtype if len(src) else np.dtype("float16")
    out.parent.mkdir(parents=True, exist_ok=True)
    # A fixed temporary name (not :func:`pipeline.fileio.atomic_path`'s per-process one), so that
    # the next export overwrites what a killed one left, which can be as large as the store.
    partial = out.with_name(out.name + PARTIAL_SUFFIX)
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
