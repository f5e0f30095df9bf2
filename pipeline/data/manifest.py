"""Manifests: one table per dataset describing its clips, written as Parquet.

Columns: ``clip_id`` (str, unique), ``path`` (absolute audio path), ``split`` (train / valid /
test), ``duration_s`` (from the file header, NaN if unreadable), then one nullable ``Int8``
column per class: 1 = present, 0 = absent, <NA> = unknown. Arrow stores the nulls as a validity
bitmap, so the label mask travels with the labels. The class order is kept in the Parquet
metadata.

Rows with a problem of their own (an empty or repeated clip ID, an audio file that is missing
or unreadable) are left out and listed in :attr:`Manifest.rejected`, written next to the
manifest as ``<name>.rejected.csv``; the manifest is built from the other rows unless more than
half of them are rejected, which points at a wrong folder rather than at a few bad clips.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from joblib import Parallel, delayed

from pipeline.data.audio import probe_duration
from pipeline.fileio import atomic_path, write_csv

SPLITS = ("train", "valid", "test")
FIXED_COLUMNS = ("clip_id", "path", "split", "duration_s")
REJECTED_COLUMNS = ("clip_id", "path", "cause")
# More rejected rows than this fraction is an error (a wrong folder, not a few bad clips).
MAX_REJECTED_FRACTION = 0.5
_META_KEY = b"pipeline.data.manifest"
# The same metadata in manifests written before the modules moved into stage folders.
_LEGACY_META_KEY = b"pipeline.manifest"


class ManifestError(ValueError):
    """A dataset description that cannot be used as it is."""


def listing(items: Sequence[object], limit: int = 10) -> str:
    """The first ``limit`` items as reprs joined by commas, with a count of the rest.

    Parameters
    ----------
    items : sequence
        What to list (clip IDs, offending cells, …).
    limit : int
        Items shown at most.

    Returns
    -------
    str
        E.g. ``"'a', 'b' … and 3 more"``.
    """
    shown = ", ".join(repr(x) for x in items[:limit])
    return shown + (f" … and {len(items) - limit} more" if len(items) > limit else "")


def clip_difference(held: Sequence[str], wanted: Sequence[str]) -> str:
    """How a store's clip IDs (``held``) differ from a manifest's (``wanted``).

    Parameters
    ----------
    held : sequence of str
        Clip IDs of the store.
    wanted : sequence of str
        Clip IDs of the manifest.

    Returns
    -------
    str
        The clips missing from the store and those it has beyond the manifest (a few of each
        named); "" if both are the same set (the order does not matter: stores are read by
        clip ID).
    """
    held_set, wanted_set = set(held), set(wanted)
    if held_set == wanted_set:
        return ""
    missing = [c for c in wanted if c not in held_set]
    extra = [c for c in held if c not in wanted_set]
    parts = []
    if missing:
        parts.append(f"{len(missing)} clips of the manifest are not in it ({listing(missing, 3)})")
    if extra:
        parts.append(f"{len(extra)} of its clips are not in the manifest ({listing(extra, 3)})")
    return "; ".join(parts)


@dataclass(frozen=True)
class Rejection:
    """A row of a dataset left out of its manifest, and why."""

    clip_id: str
    path: str
    cause: str

    def __str__(self) -> str:
        return f"{self.clip_id or '<empty clip ID>'}: {self.cause}"


@dataclass(frozen=True)
class Manifest:
    """The clips of one dataset: paths, splits, durations and labels (see the module docstring).

    Attributes
    ----------
    name : str
        Dataset name.
    classes : tuple of str
        Label columns, in order.
    clips : pd.DataFrame
        One row per clip: the fixed columns, then one nullable ``Int8`` column per class.
    rejected : tuple of Rejection
        Rows of the source left out (not written to the Parquet file; see
        :meth:`write_rejected`).
    """

    name: str
    classes: tuple[str, ...]
    clips: pd.DataFrame
    # Rows of the source left out (not written to the Parquet file; see write_rejected).
    rejected: tuple[Rejection, ...] = ()

    def __len__(self) -> int:
        return len(self.clips)

    @property
    def clip_ids(self) -> list[str]:
        """The clip IDs, in row order."""
        return self.clips["clip_id"].tolist()

    def labels(self) -> np.ndarray:
        """(N, C) float32, 1 = present; unknown entries are 0 (see :meth:`mask`)."""
        return self.clips[list(self.classes)].fillna(0).to_numpy(dtype=np.float32)

    def mask(self) -> np.ndarray:
        """(N, C) bool, True where the label is known."""
        return self.clips[list(self.classes)].notna().to_numpy()

    def split(self, name: str) -> Manifest:
        """The clips of split ``name`` (train / valid / test), renumbered from 0.

        Parameters
        ----------
        name : str
            One of :data:`SPLITS`.

        Returns
        -------
        Manifest
            Same name and classes, the rows of that split only, no rejected rows.
        """
        rows = self.clips[self.clips["split"] == name].reset_index(drop=True)
        return Manifest(self.name, self.classes, rows)

    def write(self, path: str | os.PathLike) -> Path:
        """Write the clips as Parquet, atomically, so a killed run leaves the old file.

        Parameters
        ----------
        path : str or os.PathLike
            The ``.parquet`` file; its folder is created if missing.

        Returns
        -------
        Path
            ``path``.
        """
        table = pa.Table.from_pandas(self.clips, preserve_index=False)
        meta = {"name": self.name, "classes": list(self.classes)}
        table = table.replace_schema_metadata(
            {**(table.schema.metadata or {}), _META_KEY: json.dumps(meta).encode()}
        )
        with atomic_path(path) as tmp:
            pq.write_table(table, tmp)
        return Path(path)

    def write_rejected(self, path: str | os.PathLike) -> Path:
        """Write the rejected rows as a CSV table (clip_id, path, cause), header only if none.

        Parameters
        ----------
        path : str or os.PathLike
            The ``.csv`` file, written atomically; its folder is created if missing.

        Returns
        -------
        Path
            ``path``.
        """
        rows = ((r.clip_id, r.path, r.cause) for r in self.rejected)
        return write_csv(path, REJECTED_COLUMNS, rows)

    @classmethod
    def read(cls, path: str | os.PathLike) -> Manifest:
        """Read a manifest written by :meth:`write`.

        Parameters
        ----------
        path : str or os.PathLike
            The Parquet file.

        Returns
        -------
        Manifest
            Name, classes and clips as written (no rejected rows).

        Raises
        ------
        ManifestError
            If the file has no manifest metadata (not written by this pipeline).
        """
        table = pq.read_table(path)
        metadata = table.schema.metadata or {}
        raw = metadata.get(_META_KEY, metadata.get(_LEGACY_META_KEY))
        if raw is None:
            raise ManifestError(f"{path}: not a manifest written by this pipeline")
        meta = json.loads(raw)
        clips = table.to_pandas()
        return cls(meta["name"], tuple(meta["classes"]), clips)


def _inspect(path: str, probe: bool) -> tuple[str | None, float]:
    """(problem with the audio file or None, duration from its header if ``probe``)."""
    if not os.path.isfile(path):
        return f"audio file does not exist: {path}", float("nan")
    try:
        with open(path, "rb"):
            pass
    except PermissionError:
        return f"audio file is not readable (permission denied): {path}", float("nan")
    except OSError as err:
        return f"audio file is not readable ({err.strerror or err}): {path}", float("nan")
    return None, probe_duration(path) if probe else float("nan")


def make_manifest(
    name: str,
    *,
    clip_ids: Sequence[str],
    paths: Sequence[str | os.PathLike],
    splits: Sequence[str],
    classes: Sequence[str],
    labels: np.ndarray,
    mask: np.ndarray | None = None,
    durations_s: Sequence[float] | None = None,
    check_paths: bool = True,
    sources: Sequence[str] | None = None,
    max_rejected_fraction: float = MAX_REJECTED_FRACTION,
) -> Manifest:
    """Validate and assemble a manifest.

    Unknown split names and bad label values raise :class:`ManifestError` listing every
    offender. Rows with a problem of their own are left out and listed in ``rejected``, one
    cause each: an empty clip ID, a clip ID already used by an earlier row (the first row keeps
    it), and (with ``check_paths``) an audio file that does not exist or cannot be read. More
    than ``max_rejected_fraction`` of the rows rejected (or all of them) raises
    :class:`ManifestError` instead.

    Parameters
    ----------
    name : str
        Dataset name.
    clip_ids : sequence of str, length N
        One ID per clip.
    paths : sequence of path-like, length N
        Audio files; made absolute (``~`` expanded).
    splits : sequence of str, length N
        Each one of :data:`SPLITS`.
    classes : sequence of str, length C
        Class names, unique, none of :data:`FIXED_COLUMNS`.
    labels : np.ndarray, shape (N, C)
        Values in {0, 1} where known.
    mask : np.ndarray, shape (N, C), bool, optional
        True where the label is known; all known when omitted.
    durations_s : sequence of float, length N, optional
        Clip durations in seconds; read from the file headers when omitted.
    check_paths : bool
        Reject rows whose audio file does not exist or cannot be read.
    sources : sequence of str, length N, optional
        Where each row comes from (e.g. "CSV line 7"), named in the rejection causes.
    max_rejected_fraction : float
        Largest share of rejected rows that still gives a manifest.

    Returns
    -------
    Manifest
        The kept rows, and the rejected ones in :attr:`Manifest.rejected`.

    Raises
    ------
    ManifestError
        If the inputs do not line up, or on bad splits, classes or labels, or too many
        rejected rows.
    """
    n, classes = len(clip_ids), list(classes)
    labels = np.asarray(labels)
    mask = np.ones(labels.shape, bool) if mask is None else np.asarray(mask, bool)
    if not (len(paths) == len(splits) == n and labels.shape == mask.shape == (n, len(classes))):
        raise ManifestError(
            f"{name}: {n} clip IDs, {len(paths)} paths, {len(splits)} splits, labels "
            f"{labels.shape} and mask {mask.shape} for {len(classes)} classes do not line up"
        )
    if sources is not None and len(sources) != n:
        raise ManifestError(f"{name}: {len(sources)} row sources for {n} clip IDs")
    if len(set(classes)) != len(classes) or set(classes) & set(FIXED_COLUMNS):
        raise ManifestError(f"{name}: class names must be unique and not {FIXED_COLUMNS}")
    ids = [str(c) for c in clip_ids]
    bad_split = sorted({s for s in splits} - set(SPLITS))
    if bad_split:
        raise ManifestError(f"{name}: unknown split names {bad_split}; use {list(SPLITS)}")
    bad_values = ~np.isin(labels, (0, 1)) & mask
    if bad_values.any():
        rows = sorted(set(np.nonzero(bad_values)[0].tolist()))
        raise ManifestError(
            f"{name}: labels must be 0 or 1 (or unknown); clips {listing([ids[r] for r in rows])}"
        )
    splits = list(splits)
    abs_paths = [str(Path(p).expanduser().absolute()) for p in paths]
    where = list(sources) if sources is not None else [f"row {i + 1}" for i in range(n)]
    if check_paths or durations_s is None:
        inspected = Parallel(n_jobs=8, prefer="threads")(
            delayed(_inspect)(p, durations_s is None) for p in abs_paths
        )
    else:
        inspected = [(None, float("nan"))] * n
    if durations_s is None:
        durations_s = [duration for _, duration in inspected]

    causes: list[str | None] = [None] * n
    first_row: dict[str, int] = {}
    for i, clip in enumerate(ids):
        if not clip.strip():
            causes[i] = f"empty clip ID ({where[i]})"
        elif clip in first_row:
            causes[i] = f"duplicate clip ID: {where[i]} repeats {where[first_row[clip]]}"
        else:
            first_row[clip] = i
            problem = inspected[i][0] if check_paths else None
            if problem is not None:
                causes[i] = f"{problem} ({where[i]})" if sources is not None else problem
    rejected = tuple(
        Rejection(ids[i], abs_paths[i], cause) for i, cause in enumerate(causes) if cause
    )
    if rejected and (len(rejected) == n or len(rejected) > max_rejected_fraction * n):
        shown = "; ".join(str(r) for r in rejected[:10])
        more = f" … and {len(rejected) - 10} more" if len(rejected) > 10 else ""
        raise ManifestError(
            f"{name}: {len(rejected)} of {n} clips rejected (more than "
            f"{max_rejected_fraction:.0%}: is the audio folder right?): {shown}{more}"
        )
    keep = np.array([cause is None for cause in causes], dtype=bool)
    rows = np.flatnonzero(keep)
    clips = pd.DataFrame(
        {
            "clip_id": pd.Series([ids[i] for i in rows]),
            "path": [abs_paths[i] for i in rows],
            "split": pd.Series([splits[i] for i in rows], dtype=str),
            "duration_s": np.asarray(durations_s, dtype=np.float64)[rows],
        }
    )
    kept_mask = mask[rows]
    label_frame = pd.DataFrame(
        np.where(kept_mask, labels[rows], 0).astype(np.int8), columns=classes
    ).astype("Int8")
    label_frame = label_frame.mask(~kept_mask)
    return Manifest(name, tuple(classes), pd.concat([clips, label_frame], axis=1), rejected)
