"""OpenMIC-2018 release → manifest.

Expected under ``root`` (the unpacked release)::

    openmic-2018.npz                 Y_true (N, 20) float, Y_mask (N, 20) bool, sample_key (N,)
    class-map.json                   {instrument name: column index}
    partitions/split01_train.csv     one sample key per line, no header
    partitions/split01_test.csv
    audio/<key[:3]>/<key>.ogg

Audio files that are missing or unreadable are left out of the manifest and listed (see
:func:`pipeline.data.manifest.make_manifest`).

Labels: a label is known where ``Y_mask`` is True and ``Y_true`` != 0.5; known labels are
``Y_true > 0.5``. Keys listed in neither partition file are left out of the manifest.

Validation split: the paper's procedure, exactly. One ``random.Random(seed)`` (Python's Mersenne
Twister, seed 2022) draws ``uniform(0, 1)`` once per training key, in the archive's
``sample_key`` order (sorted in the release); a draw below ``valid_fraction`` (0.15) moves the key
to "valid". Test keys consume no draws. On split01 this selects 2,223 of the 14,915 training keys,
the same keys as the official EAsT list (``openmic_valid.json``); the count is random, not
``round(0.15 * 14915)``. The order of lines in the partition file does not matter.
"""

from __future__ import annotations

import json
import random
from collections import Counter
from pathlib import Path

import numpy as np

from pipeline.data.datasets import DATASETS
from pipeline.data.manifest import Manifest, ManifestError, listing, make_manifest

NPZ_NAME = "openmic-2018.npz"
CLASS_MAP_NAME = "class-map.json"
TRAIN_PARTITION = Path("partitions/split01_train.csv")
TEST_PARTITION = Path("partitions/split01_test.csv")
_NPZ_ARRAYS = ("Y_true", "Y_mask", "sample_key")
_EXPECTED = {
    Path(NPZ_NAME): "the label archive (Y_true, Y_mask, sample_key)",
    Path(CLASS_MAP_NAME): "the JSON map of instrument name → label column",
    TRAIN_PARTITION: "the split01 train partition (one sample key per line)",
    TEST_PARTITION: "the split01 test partition (one sample key per line)",
}


@DATASETS.register
def openmic(*, root: Path, valid_fraction: float = 0.15, seed: int = 2022, **_: object) -> Manifest:
    """Build the OpenMIC-2018 manifest (split01, with a seeded validation hold-out).

    Parameters
    ----------
    root : Path
        The unpacked release (see the module docstring for the files expected there).
    valid_fraction : float
        Probability, in [0, 1), of a training key moving to "valid".
    seed : int
        Seed of the validation draw (2022 reproduces the paper's split).

    Returns
    -------
    Manifest
        Named ``openmic``; the 20 classes in the order of ``class-map.json``.

    Raises
    ------
    ManifestError
        If files are missing or malformed, or the partitions disagree with the archive.
    """
    root = Path(root).expanduser()
    if not 0.0 <= valid_fraction < 1.0:
        raise ManifestError(f"openmic: valid_fraction must be in [0, 1), got {valid_fraction}")
    _require_files(root)
    keys, y_true, y_mask = _load_labels(root / NPZ_NAME)
    classes = _load_classes(root / CLASS_MAP_NAME, n_columns=y_true.shape[1])
    train = _read_partition(root / TRAIN_PARTITION)
    test = _read_partition(root / TEST_PARTITION)
    split_of = _assign_splits(train, test, keys=keys, valid_fraction=valid_fraction, seed=seed)

    rows = [i for i, key in enumerate(keys) if key in split_of]
    kept = [keys[i] for i in rows]
    known = y_mask[rows] & (y_true[rows] != 0.5)
    return make_manifest(
        "openmic",
        clip_ids=kept,
        paths=[root / "audio" / key[:3] / f"{key}.ogg" for key in kept],
        splits=[split_of[key] for key in kept],
        classes=classes,
        labels=(y_true[rows] > 0.5).astype(np.int8),
        mask=known,
    )


def _require_files(root: Path) -> None:
    missing = [f"{rel} ({what})" for rel, what in _EXPECTED.items() if not (root / rel).is_file()]
    if missing:
        raise ManifestError(
            f"openmic: {root} is not an unpacked OpenMIC-2018 release; missing "
            + "; ".join(missing)
        )


def _load_labels(path: Path) -> tuple[list[str], np.ndarray, np.ndarray]:
    """(sample keys, Y_true (N, C) float, Y_mask (N, C) bool) from the release archive."""
    try:
        archive = np.load(path, allow_pickle=True)  # sample_key is an object array
    except (OSError, ValueError) as err:
        raise ManifestError(f"openmic: cannot read {path} as a .npz archive ({err})") from None
    with archive:
        absent = [name for name in _NPZ_ARRAYS if name not in archive.files]
        if absent:
            raise ManifestError(f"openmic: {path} lacks the arrays {absent}")
        keys = [str(k) for k in archive["sample_key"]]
        y_true = np.asarray(archive["Y_true"], dtype=np.float64)
        y_mask = np.asarray(archive["Y_mask"], dtype=bool)
    if y_true.ndim != 2 or y_true.shape != y_mask.shape or len(keys) != len(y_true):
        raise ManifestError(
            f"openmic: {path}: sample_key {len(keys)}, Y_true {y_true.shape} and Y_mask "
            f"{y_mask.shape} do not line up"
        )
    # A key twice in the archive has two label rows and no way to tell the right one: the
    # archive is damaged, unlike a clip whose audio is missing (left out and listed).
    repeated = sorted(k for k, count in Counter(keys).items() if count > 1)
    if repeated:
        raise ManifestError(
            f"openmic: duplicate clip IDs in {path} sample_key: {listing(repeated)}"
        )
    return keys, y_true, y_mask


def _load_classes(path: Path, *, n_columns: int) -> list[str]:
    """Class names ordered by their column index; the indices must be exactly 0..n_columns-1."""
    try:
        mapping = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise ManifestError(f"openmic: cannot read {path} as JSON ({err})") from None
    valid = isinstance(mapping, dict) and all(type(v) is int for v in mapping.values())
    if not valid or sorted(mapping.values()) != list(range(n_columns)):
        raise ManifestError(
            f"openmic: {path} must map {n_columns} class names to the indices 0..{n_columns - 1}"
        )
    return sorted(mapping, key=mapping.__getitem__)


def _read_partition(path: Path) -> list[str]:
    lines = path.read_text(encoding="utf-8").splitlines()
    return [key for key in (line.strip() for line in lines) if key]


def validation_keys(train_keys: list[str], *, fraction: float = 0.15, seed: int = 2022) -> set[str]:
    """The training keys held out for validation by the paper's procedure.

    Parameters
    ----------
    train_keys : list of str
        Training keys in the archive's order (one draw each, in this order).
    fraction : float
        Probability of a key going to validation.
    seed : int
        Seed of the ``random.Random`` generator.

    Returns
    -------
    set of str
        The keys whose draw ``uniform(0, 1)`` fell below ``fraction``.
    """
    draws = random.Random(seed)
    return {key for key in train_keys if draws.uniform(0.0, 1.0) < fraction}


def _assign_splits(
    train: list[str], test: list[str], *, keys: list[str], valid_fraction: float, seed: int
) -> dict[str, str]:
    """Map every partitioned key to train / valid / test (see the module docstring)."""
    both = sorted(set(train) & set(test))
    if both:
        raise ManifestError(f"openmic: keys in both train and test partitions: {listing(both)}")
    unknown = sorted((set(train) | set(test)) - set(keys))
    if unknown:
        raise ManifestError(f"openmic: partition keys absent from {NPZ_NAME}: {listing(unknown)}")
    in_train = set(train)
    train_keys = [key for key in keys if key in in_train]
    valid = validation_keys(train_keys, fraction=valid_fraction, seed=seed)
    split_of = {key: "valid" if key in valid else "train" for key in train_keys}
    split_of.update(dict.fromkeys(test, "test"))
    return split_of
