"""Generic CSV → manifest.

Columns: ``clip_id``, ``path`` (absolute, or relative to the CSV's folder), ``split`` (train /
valid / test) and one column per class, in the CSV's column order, holding ``1`` (present),
``0`` (absent) or nothing (unknown). The spellings other tools write are read too: ``1.0`` /
``0.0`` (pandas saves an integer column with missing values as floats), ``true`` / ``false`` in
any case, and ``NaN`` for unknown. Surrounding whitespace is ignored; blank lines are skipped.

The file must be UTF-8 (a byte order mark is allowed) with the same number of fields on every
row; otherwise, as for unbalanced quotes, the error names the file and the line. Rows with a
problem of their own (an empty clip ID, a clip ID repeated on a later line, an audio file that
is missing or unreadable) are left out and listed, each naming its CSV line (see
:func:`pipeline.data.manifest.make_manifest`).
"""

from __future__ import annotations

import csv as csv_module
import io
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.data.datasets import DATASETS
from pipeline.data.manifest import Manifest, ManifestError, listing, make_manifest

REQUIRED = ("clip_id", "path", "split")
# Label spellings, lower-cased, and their codes; -1 marks unknown until the mask is taken.
_LABEL_VALUES = {
    "1": 1,
    "1.0": 1,
    "true": 1,
    "0": 0,
    "0.0": 0,
    "false": 0,
    "": -1,
    "nan": -1,
}


@DATASETS.register
def csv_table(*, csv: Path, name: str | None = None, **_: object) -> Manifest:
    """Build a manifest named ``name`` (default: the CSV's stem) from a clip table.

    Parameters
    ----------
    csv : Path
        The clip table (see the module docstring for its columns).
    name : str, optional
        Name of the manifest; the CSV's file name without extension by default.

    Returns
    -------
    Manifest
        One class per column besides ``clip_id``, ``path`` and ``split``, in column order.

    Raises
    ------
    ManifestError
        If the file is missing, not UTF-8, malformed, lacks columns or holds bad labels; the
        message names the file and the line.
    """
    csv = Path(csv).expanduser()
    name = name or csv.stem
    table, lines = _read_table(csv, name)
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
        sources=[f"CSV line {line}" for line in lines],
    )


def _decode(csv: Path, name: str) -> str:
    raw = csv.read_bytes()
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = raw[: err.start].count(b"\n") + 1
        column = err.start - (raw.rfind(b"\n", 0, err.start) + 1) + 1
        raise ManifestError(
            f"{name}: {csv}: line {line}: not UTF-8 text (byte 0x{raw[err.start]:02x} at "
            f"column {column}); save the CSV as UTF-8"
        ) from None


def _read_table(csv: Path, name: str) -> tuple[pd.DataFrame, list[int]]:
    """The CSV as stripped strings, and the line each row starts on.

    Raises :class:`ManifestError` naming the file and the line for text that is not UTF-8,
    unbalanced quotes and rows with another number of fields than the header.
    """
    if not csv.is_file():
        raise ManifestError(f"{name}: no CSV file at {csv}")
    reader = csv_module.reader(io.StringIO(_decode(csv, name), newline=""), strict=True)
    header: list[str] | None = None
    records: list[list[str]] = []
    lines: list[int] = []
    start = 1
    try:
        for record in reader:
            if not record or (len(record) == 1 and not record[0].strip()):
                start = reader.line_num + 1
                continue  # a blank line
            if header is None:
                header = [c.strip() for c in record]
            elif len(record) != len(header):
                spans = (
                    f" (this row runs on to line {reader.line_num}: an unbalanced quote?)"
                    if reader.line_num > start
                    else ""
                )
                raise ManifestError(
                    f"{name}: {csv}: line {start}: {len(record)} field"
                    f"{'s' * (len(record) != 1)}, the header has {len(header)}{spans}"
                )
            else:
                records.append([c.strip() for c in record])
                lines.append(start)
            start = reader.line_num + 1
    except csv_module.Error as err:
        what = "a quoted field is never closed" if "end of data" in str(err) else err
        raise ManifestError(f"{name}: {csv}: line {start}: malformed CSV ({what})") from None
    if header is None:
        raise ManifestError(f"{name}: {csv} is empty")
    if not records:
        raise ManifestError(f"{name}: {csv} has a header but no clip rows")
    absent = [c for c in REQUIRED if c not in header]
    if absent:
        raise ManifestError(f"{name}: {csv} lacks the required columns {absent}")
    repeated = sorted({c for c in header if header.count(c) > 1})
    if repeated:
        raise ManifestError(f"{name}: {csv}: line 1: repeated columns {repeated}")
    return pd.DataFrame(records, columns=header, dtype=object), lines


def _label_codes(table: pd.DataFrame, classes: list[str], name: str) -> np.ndarray:
    """(N, C) int8: 1 / 0, or -1 for unknown; other values are an error naming clip and column.

    The spellings of :data:`_LABEL_VALUES` are accepted in any case (``True``, ``FALSE``, ``NaN``).
    """
    cells = table[classes]
    spellings = cells.map(str.lower)
    bad = ~spellings.isin(tuple(_LABEL_VALUES)).to_numpy()
    if bad.any():
        rows, cols = np.nonzero(bad)
        offenders = [
            f"{table['clip_id'].iat[r]}/{classes[c]}={cells.iat[r, c]!r}"
            for r, c in zip(rows, cols, strict=True)
        ]
        raise ManifestError(
            f"{name}: labels must be 1, 0 or blank (also 1.0, 0.0, true, false; NaN for "
            f"unknown); clip/column=value: {listing(offenders)}"
        )
    return spellings.map(_LABEL_VALUES.__getitem__).to_numpy(dtype=np.int8)
