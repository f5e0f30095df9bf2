"""MagnaTagATune release → manifest.

Expected under ``root``: ``annotations_final.csv`` (tab-separated, quoted fields: ``clip_id``,
188 tag columns, ``mp3_path``) and the audio as ``mp3/<0-f>/<name>.mp3`` or ``<0-f>/<name>.mp3``.

With ``split_dir`` (the cleaned top-50 split of minzwon/sota-music-tagging-models,
``split/mtat/``) the split is used exactly: classes from ``tags.npy``; ``train.npy``,
``valid.npy`` and ``test.npy`` list ``"<row>\\t<dir>/<name>.mp3"``; labels are row ``<row>`` of
``binary.npy``. The clip ID is the annotations' ``clip_id`` of that mp3 path, so IDs agree
between both modes; a split entry whose path is not in the annotations is an error (the split
and the annotations come from different releases) rather than silently getting another kind of
ID.

Without ``split_dir`` the split is derived from the annotations: the ``top_k`` tags with the most
clips (ties broken by column order) in descending count order; folders 0–b train, c valid, d–f
test; clips with none of those tags are left out. Unlike the cleaned split, clips shorter than
29.1 s are kept (``duration_s`` in the manifest shows them).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.data.datasets import DATASETS
from pipeline.data.manifest import Manifest, ManifestError, listing, make_manifest

ANNOTATIONS_NAME = "annotations_final.csv"
SPLIT_FILES = ("tags.npy", "binary.npy", "train.npy", "valid.npy", "test.npy")
SPLIT_OF_FOLDER = {
    **dict.fromkeys("0123456789ab", "train"),
    "c": "valid",
    **dict.fromkeys("def", "test"),
}
_ID, _PATH = "clip_id", "mp3_path"


@DATASETS.register
def magnatagatune(
    *, root: Path, split_dir: Path | None = None, top_k: int = 50, **_: object
) -> Manifest:
    """Build the MagnaTagATune manifest (``top_k`` applies only without ``split_dir``).

    Parameters
    ----------
    root : Path
        The release: ``annotations_final.csv`` and the mp3 folders.
    split_dir : Path, optional
        The cleaned top-50 split (``tags.npy``, ``binary.npy``, ``train.npy``, …), used exactly.
    top_k : int
        Without ``split_dir``: keep the ``top_k`` most frequent tags as classes.

    Returns
    -------
    Manifest
        Named ``magnatagatune``.

    Raises
    ------
    ManifestError
        If the annotations or the split files are missing, malformed or disagree.
    """
    root = Path(root).expanduser()
    annotations = _read_annotations(root / ANNOTATIONS_NAME)
    audio_root = root / "mp3" if (root / "mp3").is_dir() else root
    if split_dir is not None:
        ids, paths, splits, classes, labels = _from_split_files(Path(split_dir), annotations)
    else:
        ids, paths, splits, classes, labels = _from_annotations(annotations, top_k)
    return make_manifest(
        "magnatagatune",
        clip_ids=ids,
        paths=[audio_root / p for p in paths],
        splits=splits,
        classes=classes,
        labels=labels,
    )


def _read_annotations(path: Path) -> pd.DataFrame:
    """All fields as stripped strings; the C parser handles the quoting and CRLF line ends."""
    if not path.is_file():
        raise ManifestError(
            f"magnatagatune: missing {path} (the tab-separated tag table with columns "
            f"clip_id, 188 tags, mp3_path)"
        )
    frame = pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False)
    frame.columns = [str(c).strip() for c in frame.columns]
    absent = [c for c in (_ID, _PATH) if c not in frame.columns]
    if absent:
        raise ManifestError(f"magnatagatune: {path} lacks the columns {absent}")
    return frame.apply(lambda column: column.str.strip())


def _from_split_files(
    split_dir: Path, annotations: pd.DataFrame
) -> tuple[list[str], list[str], list[str], list[str], np.ndarray]:
    missing = [name for name in SPLIT_FILES if not (split_dir / name).is_file()]
    if missing:
        raise ManifestError(
            f"magnatagatune: split_dir {split_dir} lacks {missing} (expected the cleaned top-50 "
            "split: tags.npy, binary.npy and train/valid/test.npy)"
        )
    classes = [str(t) for t in _load_npy(split_dir / "tags.npy")]
    binary = _load_npy(split_dir / "binary.npy")
    if binary.ndim != 2 or binary.shape[1] != len(classes):
        raise ManifestError(
            f"magnatagatune: binary.npy has shape {binary.shape}, expected (rows, {len(classes)})"
        )
    rows, paths, splits = [], [], []
    for split in ("train", "valid", "test"):
        for row, mp3 in _parse_entries(split_dir / f"{split}.npy", n_rows=len(binary)):
            rows.append(row)
            paths.append(mp3)
            splits.append(split)
    ids = _clip_ids_for(paths, annotations)
    return ids, paths, splits, classes, binary[rows]


def _load_npy(path: Path) -> np.ndarray:
    try:
        return np.load(path)
    except (OSError, ValueError) as err:
        raise ManifestError(f"magnatagatune: cannot read {path} ({err})") from None


def _parse_entries(path: Path, *, n_rows: int) -> list[tuple[int, str]]:
    """``"<row>\\t<dir>/<name>.mp3"`` entries → (row, mp3 path); bad entries are an error."""
    parsed, bad = [], []
    for entry in (str(e) for e in _load_npy(path).ravel()):
        row, _, mp3 = entry.partition("\t")
        if row.strip().isdigit() and int(row) < n_rows and mp3.strip():
            parsed.append((int(row), mp3.strip()))
        else:
            bad.append(entry)
    if bad:
        raise ManifestError(
            f"magnatagatune: {path}: entries not of the form '<row < {n_rows}>\\t<dir>/<name>"
            f".mp3': {listing(bad)}"
        )
    return parsed


def _clip_ids_for(paths: list[str], annotations: pd.DataFrame) -> list[str]:
    """The annotations' clip_id of each mp3 path; unknown or ambiguous paths are an error."""
    by_path = annotations.groupby(_PATH)[_ID].unique()
    unknown = [p for p in paths if p not in by_path.index]
    if unknown:
        raise ManifestError(
            f"magnatagatune: split entries whose mp3 path is not in {ANNOTATIONS_NAME}: "
            f"{listing(unknown)}"
        )
    ambiguous = sorted({p for p in paths if len(by_path[p]) > 1})
    if ambiguous:
        raise ManifestError(
            f"magnatagatune: mp3 paths with several clip_ids in {ANNOTATIONS_NAME}: "
            f"{listing(ambiguous)}"
        )
    return [str(by_path[p][0]) for p in paths]


def _from_annotations(
    annotations: pd.DataFrame, top_k: int
) -> tuple[list[str], list[str], list[str], list[str], np.ndarray]:
    tags = [c for c in annotations.columns if c not in (_ID, _PATH)]
    if not 1 <= top_k <= len(tags):
        raise ManifestError(f"magnatagatune: top_k must be in 1..{len(tags)}, got {top_k}")
    values = _tag_matrix(annotations, tags)
    order = np.argsort(-values.sum(axis=0), kind="stable")[:top_k]
    classes = [tags[i] for i in order]
    labels = values[:, order]
    folders = annotations[_PATH].str.split("/").str[0]
    odd = annotations.loc[~folders.isin(SPLIT_OF_FOLDER.keys()), _ID].tolist()
    if odd:
        raise ManifestError(
            f"magnatagatune: clips whose mp3_path is not under a folder 0–f: {listing(odd)}"
        )
    keep = labels.any(axis=1)
    kept = annotations[keep]
    splits = [SPLIT_OF_FOLDER[f] for f in folders[keep]]
    return kept[_ID].tolist(), kept[_PATH].tolist(), splits, classes, labels[keep]


def _tag_matrix(annotations: pd.DataFrame, tags: list[str]) -> np.ndarray:
    """(N, T) int8 tag matrix; any value other than "0" / "1" is an error."""
    raw = annotations[tags]
    bad = ~raw.isin(("0", "1"))
    if bad.to_numpy().any():
        rows, cols = np.nonzero(bad.to_numpy())
        offenders = [
            f"{annotations[_ID].iat[r]}/{tags[c]}" for r, c in zip(rows, cols, strict=True)
        ]
        raise ManifestError(
            f"magnatagatune: tag values must be 0 or 1; clip/tag: {listing(offenders)}"
        )
    return (raw == "1").to_numpy(dtype=np.int8)
