"""The state of a clip store on disk, as the stages that fill or read it need to know it.

Whether a store exists and for which settings and clips it was made (so a stale one is made
again rather than resumed), the table of its failed clips next to it, and what a failed write
says about where it failed.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.data.manifest import clip_difference
from pipeline.fileio import write_csv
from pipeline.stores import markers, read_store
from pipeline.stores.base import ClipStoreReader, StoreError
from pipeline.stores.fingerprint import fingerprint_diff

# Where a write into a Zarr store failed: a shard file of its ``data`` array (``data/c/<shard>/…``
# in Zarr's on-disk layout) or a shard's done marker (``shard-<shard>/zarr.json``, or
# ``shard-<shard>.json`` in stores of the legacy layout).
_CHUNK_PATH = re.compile(r"[/\\]data[/\\]c[/\\](\d+)[/\\]")
_SHARD_MARKER = re.compile(r"shard-(\d+)(?:\.json|[/\\]zarr\.json)")


def content_version(store: ClipStoreReader) -> str:
    """A short hash of what a store's values were made from beyond its fingerprint: its clips,
    their frame counts and the audio each shard recorded (:mod:`pipeline.extract.audio_identity`).

    Results computed from a store (probes) keep it, so a store whose failed clips were fixed or
    whose clips were extracted again from new audio is not taken for the one they were computed
    from, although its fingerprint is the same.

    Parameters
    ----------
    store : ClipStoreReader
        A Zarr or HDF5 store (an HDF5 export records no audio: clips and frame counts only).

    Returns
    -------
    str
        16 hex digits.
    """
    digest = hashlib.sha256("\0".join(store.clip_ids).encode())
    digest.update(np.asarray(store.n_frames, dtype=np.int64).tobytes())
    records = {k: m.get("audio") for k, m in markers.shard_markers(Path(store.path)).items()}
    digest.update(json.dumps(records, sort_keys=True).encode())
    return digest.hexdigest()[:16]


def existing_store(path: Path) -> ClipStoreReader | None:
    """The store at ``path``, complete or not, or None if there is none.

    Parameters
    ----------
    path : Path
        A ``<name>.zarr`` folder or a ``<name>.h5`` file.

    Returns
    -------
    ClipStoreReader or None
        The store opened for reading (Zarr or HDF5); None when there is no store (or no
        readable one) there.
    """
    try:
        return read_store(path, require_complete=False)
    except (StoreError, FileNotFoundError):
        return None


def staleness(
    store: Path,
    fingerprint: Mapping[str, Any],
    clip_ids: Sequence[str],
    *,
    max_frames: int | None = None,
) -> str:
    """Why an existing store cannot be resumed for these settings and clips.

    Parameters
    ----------
    store : Path
        The store's path (``.zarr`` or ``.h5``).
    fingerprint : mapping
        The settings the store should have been made with (an encoder's ``fingerprint()``).
    clip_ids : sequence of str
        The clips it should hold (the manifest's).
    max_frames : int, optional
        The frames per clip it should have room for (the manifest's longest clip, e.g. after
        a clip's audio was replaced by a longer recording); None: not checked.

    Returns
    -------
    str
        The fingerprint keys that differ, how the clips differ, or how their room differs; ""
        if the store can be resumed, or if there is no store.
    """
    existing = existing_store(store)
    if existing is None:
        return ""
    diff = fingerprint_diff(existing.fingerprint, fingerprint)
    if diff:
        return "made with other settings: " + "; ".join(diff)
    other = clip_difference(existing.clip_ids, clip_ids)
    if other:
        return f"made for other clips than the manifest: {other}"
    if max_frames is not None and existing.max_frames != max_frames:
        return (
            f"laid out for clips of up to {existing.max_frames} frames, and the manifest's "
            f"longest clip now has {max_frames}"
        )
    return ""


def is_stale(store: Path, fingerprint: Mapping[str, Any]) -> bool:
    """Whether a store exists and was made with another fingerprint.

    Parameters
    ----------
    store : Path
        The store's path (``.zarr`` or ``.h5``).
    fingerprint : mapping
        The settings the store should have been made with.

    Returns
    -------
    bool
        True only for an existing store whose fingerprint differs.
    """
    existing = existing_store(store)
    return existing is not None and bool(fingerprint_diff(existing.fingerprint, fingerprint))


def failures_path(store: Path) -> Path:
    """The table of a store's failed clips: ``<store>.failures.csv`` next to the store.

    Parameters
    ----------
    store : Path
        The store's path (``musicnn.zarr``).

    Returns
    -------
    Path
        ``musicnn.failures.csv`` in the same folder.
    """
    return store.with_suffix(".failures.csv")


def write_failures(store: Path, failed: Mapping[str, str]) -> Path:
    """Write the failed clips of a store as a CSV table (clip_id, cause), header only if none.

    Parameters
    ----------
    store : Path
        The store's path; the table goes to :func:`failures_path`.
    failed : mapping of str to str
        Clip ID → cause of its failure.

    Returns
    -------
    Path
        The table written (atomically), its rows sorted by clip ID.
    """
    return write_csv(failures_path(store), ("clip_id", "cause"), sorted(failed.items()))


def os_error_text(err: OSError) -> str:
    """An OSError as one short phrase: its message and the file it names, if any.

    Parameters
    ----------
    err : OSError

    Returns
    -------
    str
        ``"<strerror>: <filename>"``, or the message alone when no file is named.
    """
    text = err.strerror or str(err)
    return f"{text}: {err.filename}" if err.filename else text


def shard_of(err: OSError, store: Path) -> str:
    """Which shard of ``store`` a failed write belonged to, as a phrase for a message.

    Parameters
    ----------
    err : OSError
        The error of the write; its file name is matched against the store's on-disk layout.
    store : Path
        The Zarr store being written.

    Returns
    -------
    str
        ``" in shard K"`` when the file is a chunk or done marker of shard K of ``store``,
        else "".
    """
    name = str(err.filename or "")
    if not name.startswith(str(store)):
        return ""
    found = _CHUNK_PATH.search(name) or _SHARD_MARKER.search(name)
    return f" in shard {int(found.group(1))}" if found else ""


def disk_mb(path: Path) -> float:
    """Bytes on disk of a file, or of every file under a folder.

    Parameters
    ----------
    path : Path
        A store file (``.h5``) or folder (``.zarr``).

    Returns
    -------
    float
        The size in MB (10⁶ bytes).
    """
    files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
    return sum(p.stat().st_size for p in files) / 1e6
