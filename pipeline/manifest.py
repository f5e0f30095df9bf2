"""Manifests: one table per dataset describing its clips, written as Parquet.

Columns: ``clip_id`` (str, unique), ``path`` (absolute audio path), ``split`` (train / valid /
test), ``duration_s`` (from the file header, NaN if unreadable), then one nullable ``Int8``
column per class: 1 = present, 0 = absent, <NA> = unknown. Arrow stores the nulls as a validity
bitmap, so the label mask travels with the labels. The class order is kept in the Parquet
metadata.
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

from pipeline.audio import probe_duration

SPLITS = ("train", "valid", "test")
FIXED_COLUMNS = ("clip_id", "path", "split", "duration_s")
_META_KEY = b"pipeline.manifest"


class ManifestError(ValueError):
    """A dataset description that cannot be used as it is."""


def listing(items: Sequence[object], limit: int = 10) -> str:
    shown = ", ".join(repr(x) for x in items[:limit])
    return shown + (f" … and {len(items) - limit} more" if len(items) > limit else "")


@dataclass(frozen=True)
class Manifest:
    name: str
    classes: tuple[str, ...]
    clips: pd.DataFrame

    def __len__(self) -> int:
        return len(self.clips)

    @property
    def clip_ids(self) -> list[str]:
        return self.clips["clip_id"].tolist()

    def labels(self) -> np.ndarray:
        """(N, C) float32, 1 = present; unknown entries are 0 (see :meth:`mask`)."""
        return self.clips[list(self.classes)].fillna(0).to_numpy(dtype=np.float32)

    def mask(self) -> np.ndarray:
        """(N, C) bool, True where the label is known."""
        return self.clips[list(self.classes)].notna().to_numpy()

    def split(self, name: str) -> Manifest:
        rows = self.clips[self.clips["split"] == name].reset_index(drop=True)
        return Manifest(self.name, self.classes, rows)

    def write(self, path: str | os.PathLike) -> Path:
        """Write atomically (temporary file + rename) so a killed run leaves the old file."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        table = pa.Table.from_pandas(self.clips, preserve_index=False)
        meta = {"name": self.name, "classes": list(self.classes)}
        table = table.replace_schema_metadata(
            {**(table.schema.metadata or {}), _META_KEY: json.dumps(meta).encode()}
        )
        tmp = path.with_name(path.name + ".partial")
        pq.write_table(table, tmp)
        os.replace(tmp, path)
        return path

    @classmethod
    def read(cls, path: str | os.PathLike) -> Manifest:
        table = pq.read_table(path)
        raw = (table.schema.metadata or {}).get(_META_KEY)
        if raw is None:
            raise ManifestError(f"{path}: not a manifest written by this pipeline")
        meta = json.loads(raw)
        clips = table.to_pandas()
        return cls(meta["name"], tuple(meta["classes"]), clips)


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
) -> Manifest:
    """Validate and assemble a manifest.

    ``labels`` is (N, C) with values in {0, 1}; ``mask`` (N, C) bool marks known labels (all
    known when omitted). Raises :class:`ManifestError` listing every offender for duplicate clip
    IDs, unknown split names, bad label values and (with ``check_paths``) missing audio files.
    """
    n, classes = len(clip_ids), list(classes)
    labels = np.asarray(labels)
    mask = np.ones(labels.shape, bool) if mask is None else np.asarray(mask, bool)
    if not (len(paths) == len(splits) == n and labels.shape == mask.shape == (n, len(classes))):
        raise ManifestError(
            f"{name}: {n} clip IDs, {len(paths)} paths, {len(splits)} splits, labels "
            f"{labels.shape} and mask {mask.shape} for {len(classes)} classes do not line up"
        )
    if len(set(classes)) != len(classes) or set(classes) & set(FIXED_COLUMNS):
        raise ManifestError(f"{name}: class names must be unique and not {FIXED_COLUMNS}")
    ids = pd.Series([str(c) for c in clip_ids])
    dup = ids[ids.duplicated(keep=False)].unique().tolist()
    if dup:
        raise ManifestError(f"{name}: duplicate clip IDs: {listing(dup)}")
    empty = [i for i, c in enumerate(ids) if not c.strip()]
    if empty:
        raise ManifestError(f"{name}: empty clip IDs at rows {listing(empty)}")
    bad_split = sorted({s for s in splits} - set(SPLITS))
    if bad_split:
        raise ManifestError(f"{name}: unknown split names {bad_split}; use {list(SPLITS)}")
    bad_values = ~np.isin(labels, (0, 1)) & mask
    if bad_values.any():
        rows = sorted(set(np.nonzero(bad_values)[0].tolist()))
        raise ManifestError(
            f"{name}: labels must be 0 or 1 (or unknown); clips {listing(ids[rows].tolist())}"
        )
    abs_paths = [str(Path(p).expanduser().absolute()) for p in paths]
    if check_paths:
        missing = [
            f"{c} ({p})" for c, p in zip(ids, abs_paths, strict=True) if not Path(p).is_file()
        ]
        if missing:
            raise ManifestError(
                f"{name}: {len(missing)} audio files do not exist: {listing(missing)}"
            )
    if durations_s is None:
        durations_s = Parallel(n_jobs=8, prefer="threads")(
            delayed(probe_duration)(p) for p in abs_paths
        )
    clips = pd.DataFrame(
        {
            "clip_id": ids,
            "path": abs_paths,
            "split": pd.Series(list(splits), dtype=str),
            "duration_s": np.asarray(durations_s, dtype=np.float64),
        }
    )
    label_frame = pd.DataFrame(np.where(mask, labels, 0).astype(np.int8), columns=classes).astype(
        "Int8"
    )
    label_frame = label_frame.mask(~mask)
    return Manifest(name, tuple(classes), pd.concat([clips, label_frame], axis=1))
