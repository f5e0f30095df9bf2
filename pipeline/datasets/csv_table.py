"""Generic CSV → manifest.

Columns: ``clip_id``, ``path`` (absolute, or relative to the CSV's folder), ``split`` (train /
valid / test) and one column per class, in the CSV's column order, holding ``1`` (present),
``0`` (absent) or nothing (unknown). Surrounding whitespace is ignored.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.datasets import register_dataset
from pipeline.manifest import Manifest, ManifestError, listing, make_manifest

REQUIRED = ("clip_id", "path", "split")
_LABEL_VALUES = {"1": 1, "0": 0, "": -1}  # -1 marks unknown until the mask is taken


@register_dataset("csv")
def csv_table(*, csv: Path, name: str | None = None, **_: object) -> Manifest:
    """Build a manifest named ``name`` (default: the CSV's stem) from a clip table."""
    csv = Path(csv).expanduser()
    name = name or csv.stem
    table = _read_table(csv, name)
    classes = [c for c in table.columns if c not in REQUIRED]
    if not classes:
        raise ManifestError(f"{name}: {csv} has no class columns besides {list(REQUIRED)}")
    codes = _label_codes(table, classes, name)
    folder = csv.parent
    return make_manifest(
        name,
        clip_ids=table["clip_id"].tolist(),
        paths=[folder / Path(p).expanduser() for p in table["path"]],
        splits=table["split"].tolist(),
        classes=classes,
        labels=np.maximum(codes, 0),
        mask=codes >= 0,
    )


def _read_table(csv: Path, name: str) -> pd.DataFrame:
    """The CSV as stripped strings (blank cells become ""), with the required columns checked."""
    if not csv.is_file():
        raise ManifestError(f"{name}: no CSV file at {csv}")
    table = pd.read_csv(csv, dtype=str, keep_default_na=False)
    table.columns = [str(c).strip() for c in table.columns]
    absent = [c for c in REQUIRED if c not in table.columns]
    if absent:
        raise ManifestError(f"{name}: {csv} lacks the required columns {absent}")
    return table.apply(lambda column: column.str.strip())


def _label_codes(table: pd.DataFrame, classes: list[str], name: str) -> np.ndarray:
    """(N, C) int8: 1 / 0, or -1 for unknown; other values are an error naming clip and column."""
    cells = table[classes]
    bad = ~cells.isin(tuple(_LABEL_VALUES)).to_numpy()
    if bad.any():
        rows, cols = np.nonzero(bad)
        offenders = [
            f"{table['clip_id'].iat[r]}/{classes[c]}={cells.iat[r, c]!r}"
            for r, c in zip(rows, cols, strict=True)
        ]
        raise ManifestError(
            f"{name}: labels must be 1, 0 or blank; clip/column=value: {listing(offenders)}"
        )
    return cells.map(_LABEL_VALUES.__getitem__).to_numpy(dtype=np.int8)
