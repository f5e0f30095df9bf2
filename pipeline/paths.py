"""Where each stage's output lives under the data folder (``data/`` by default), and which
names may become part of those paths."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pipeline.data.manifest import Manifest


def is_safe_name(name: str) -> bool:
    """Whether ``name`` may name a folder or file under the data folder.

    Parameters
    ----------
    name : str
        A dataset, store or teacher name.

    Returns
    -------
    bool
        True when it is not empty, does not start with '.' and holds only letters, digits,
        '-', '_' and '.' (so it cannot climb out of its folder).
    """
    return bool(name) and not name.startswith(".") and all(c.isalnum() or c in "-_." for c in name)


def manifest_path(data_dir: Path, dataset: str) -> Path:
    """The dataset's manifest, ``<data_dir>/manifests/<dataset>.parquet``.

    Parameters
    ----------
    data_dir : Path
        Root of everything generated.
    dataset : str
        The dataset's name.

    Returns
    -------
    Path
    """
    return data_dir / "manifests" / f"{dataset}.parquet"


def rejected_path(data_dir: Path, dataset: str) -> Path:
    """The table of source rows left out of the dataset's manifest, and why.

    Parameters
    ----------
    data_dir : Path
        Root of everything generated.
    dataset : str
        The dataset's name.

    Returns
    -------
    Path
        ``<data_dir>/manifests/<dataset>.rejected.csv``.
    """
    return data_dir / "manifests" / f"{dataset}.rejected.csv"


def source_record_path(data_dir: Path, dataset: str) -> Path:
    """The record of how the dataset's manifest was made (:mod:`pipeline.data.source`).

    Parameters
    ----------
    data_dir : Path
        Root of everything generated.
    dataset : str
        The dataset's name.

    Returns
    -------
    Path
        ``<data_dir>/manifests/<dataset>.source.json``.
    """
    return Path(data_dir) / "manifests" / f"{dataset}.source.json"


def audio_list_path(data_dir: Path, dataset: str) -> Path:
    """The list of the audio files the dataset's manifest was built from, one path per line.

    Parameters
    ----------
    data_dir : Path
        Root of everything generated.
    dataset : str
        The dataset's name.

    Returns
    -------
    Path
        ``<data_dir>/manifests/<dataset>.audio.txt``.
    """
    return Path(data_dir) / "manifests" / f"{dataset}.audio.txt"


def read_manifest(data_dir: Path, dataset: str) -> Manifest:
    """The dataset's manifest, or a FileNotFoundError saying how to build it.

    Parameters
    ----------
    data_dir : Path
        Root of everything generated.
    dataset : str
        The dataset's name.

    Returns
    -------
    Manifest
    """
    from pipeline.data.manifest import Manifest

    path = manifest_path(data_dir, dataset)
    if not path.is_file():
        raise FileNotFoundError(
            f"no manifest for dataset {dataset!r} at {path}: "
            f"build it first with `make data DATASET={dataset}`"
        )
    return Manifest.read(path)


def store_name(teacher: str) -> str:
    """A teacher's store (and Make target) name: the teacher's, with ':' as '-' (``hear:m``).

    Parameters
    ----------
    teacher : str
        A teacher name (``musicnn``, ``hear:<module>``) or a store name.

    Returns
    -------
    str
        The name with every ':' replaced by '-'; ValueError if it is not :func:`is_safe_name`.
    """
    name = teacher.replace(":", "-")
    if not is_safe_name(name):
        raise ValueError(f"{teacher!r} cannot name a store: use letters, digits, '-', '_', '.'")
    return name


def store_path(data_dir: Path, dataset: str, name: str) -> Path:
    """A clip store: teacher embeddings (``name``: teacher or store) or mels (``mel-<fe>``).

    Parameters
    ----------
    data_dir : Path
        Root of everything generated.
    dataset : str
        The dataset's name.
    name : str
        A teacher or store name (see :func:`store_name`).

    Returns
    -------
    Path
        ``<data_dir>/cache/<dataset>/<store name>.zarr``.
    """
    return data_dir / "cache" / dataset / f"{store_name(name)}.zarr"


def h5_store_path(data_dir: Path, dataset: str, name: str) -> Path:
    """The single-file HDF5 copy of a clip store (``python -m pipeline export``).

    Parameters
    ----------
    data_dir, dataset, name : as for :func:`store_path`

    Returns
    -------
    Path
        The store's path with the suffix ``.h5``.
    """
    return store_path(data_dir, dataset, name).with_suffix(".h5")


def locate_store(data_dir: Path, dataset: str, name: str) -> Path:
    """The store that exists: ``<name>.zarr``, else ``<name>.h5``, else the ``.zarr`` path.

    Falling back to the Zarr path keeps "no store" errors pointing at where extraction writes.

    Parameters
    ----------
    data_dir, dataset, name : as for :func:`store_path`

    Returns
    -------
    Path
    """
    zarr_path = store_path(data_dir, dataset, name)
    if zarr_path.exists():
        return zarr_path
    h5_path = zarr_path.with_suffix(".h5")
    return h5_path if h5_path.is_file() else zarr_path


def mel_store_name(frontend: str) -> str:
    """The store name of a mel front end's spectrograms: ``mel-<frontend>``.

    Parameters
    ----------
    frontend : str
        A front end name (``cp_resnet``, ``mobile_fcn``, …).

    Returns
    -------
    str
    """
    return f"mel-{frontend}"


def runs_path(data_dir: Path, dataset: str) -> Path:
    """The folder of a dataset's training runs, ``<data_dir>/runs/<dataset>``.

    Parameters
    ----------
    data_dir : Path
        Root of everything generated.
    dataset : str
        The dataset's name.

    Returns
    -------
    Path
    """
    return data_dir / "runs" / dataset
