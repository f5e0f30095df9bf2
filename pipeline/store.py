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
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import zarr

if TYPE_CHECKING:
    from pipeline.h5store import H5ClipStore

STORE_FORMAT = 1
COMPLETE_MARKER = "COMPLETE"


class StoreError(RuntimeError):
    """A store that cannot be used for the request (stale, incomplete, other clips)."""


def _canonical(value: Any) -> Any:
    """JSON round trip, so tuples/lists and int/float keys compare as they are stored."""
    return json.loads(json.dumps(value, sort_keys=True))


def fingerprint_diff(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """Human-readable differences between two fingerprints, one line per key."""
    old, new = _canonical(old), _canonical(new)
    return [
        f"{key}: {old.get(key, '<absent>')!r} → {new.get(key, '<absent>')!r}"
        for key in sorted(set(old) | set(new))
        if old.get(key) != new.get(key)
    ]


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".partial")
    tmp.write_text(text)
    os.replace(tmp, path)


@dataclass(frozen=True)
class ShardPlan:
    """Which manifest rows shard ``index`` covers."""

    index: int
    start: int
    stop: int


class ClipStore:
    """A store opened for reading or writing. Create or reopen one with :func:`open_store`."""

    def __init__(self, path: Path, group: zarr.Group):
        self.path = path
        self._group = group

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
        self._group["data"][plan.start : plan.stop] = block
        self._group["n_frames"][plan.start : plan.stop] = n_frames
        marker = {"rows": [plan.start, plan.stop], "failures": failures}
        _write_atomic(self._marker(shard), json.dumps(marker, ensure_ascii=False))

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
        row = self.row(clip_id)
        return self._group["data"][row, : self.n_frames[row]]

    def read_batch(self, clip_ids: Iterable[str]) -> list[np.ndarray]:
        """Several clips; rows are read in sorted order (much faster on sharded arrays)."""
        rows = [self.row(c) for c in clip_ids]
        data = self._group["data"]
        by_row = {r: data[r, : self.n_frames[r]] for r in sorted(set(rows))}
        return [by_row[r] for r in rows]


def open_store(
    path: str | os.PathLike,
    *,
    fingerprint: dict[str, Any],
    clip_ids: Sequence[str],
    dim: int,
    max_frames: int,
    shard_size: int = 256,
    dtype: str = "float16",
    overwrite: bool = False,
) -> ClipStore:
    """Create a store, or reopen one for resuming.

    Reopening checks that the fingerprint, the clip IDs and the layout are the same; otherwise
    :class:`StoreError` names the differences (``overwrite=True`` deletes the old store
    instead). Orphan temporary files from a killed writer are removed.
    """
    path = Path(path)
    layout = {"dim": dim, "max_frames": max_frames, "shard_size": shard_size, "dtype": dtype}
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
        old_layout = {k: store._group.attrs["layout"][k] for k in layout}
        if old_layout != layout or store.clip_ids != [str(c) for c in clip_ids]:
            raise StoreError(
                f"{path} holds other clips or another layout than the manifest asks for; "
                "delete it or extract again with --overwrite"
            )
        for orphan in path.rglob("*.partial"):
            orphan.unlink()
        return store

    group = zarr.open_group(path, mode="w")
    n = len(clip_ids)
    group.create_array(
        "data",
        shape=(n, max_frames, dim),
        chunks=(1, max_frames, dim),
        shards=(shard_size, max_frames, dim),
        dtype=dtype,
        fill_value=0,
    )
    group.create_array("n_frames", shape=(n,), chunks=(shard_size,), dtype="int32", fill_value=0)
    ids = group.create_array("clip_id", shape=(n,), chunks=(max(n, 1),), dtype=str)
    ids[:] = np.asarray([str(c) for c in clip_ids], dtype=object)
    group.attrs.update(
        {
            "format": STORE_FORMAT,
            "fingerprint": _canonical(fingerprint),
            "layout": layout,
        }
    )
    (path / "progress").mkdir(exist_ok=True)
    return ClipStore(path, group)


def read_store(
    path: str | os.PathLike, *, require_complete: bool = True
) -> ClipStore | H5ClipStore:
    """Open a finished store for reading (``.h5`` files: :mod:`pipeline.h5store`)."""
    path = Path(path)
    if path.suffix.lower() in (".h5", ".hdf5"):
        from pipeline.h5store import read_h5_store

        return read_h5_store(path, require_complete=require_complete)
    if not (path / "zarr.json").exists():
        raise StoreError(f"no clip store at {path}")
    store = ClipStore(path, zarr.open_group(path, mode="r"))
    if require_complete and not store.is_complete:
        raise StoreError(f"{path} is incomplete (a run was interrupted?): extract again to resume")
    return store
