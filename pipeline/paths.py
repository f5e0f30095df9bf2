"""Where each stage's output lives under the data folder (``data/`` by default)."""

from __future__ import annotations

from pathlib import Path


def manifest_path(data_dir: Path, dataset: str) -> Path:
    return data_dir / "manifests" / f"{dataset}.parquet"


def rejected_path(data_dir: Path, dataset: str) -> Path:
    """The table of source rows left out of the dataset's manifest, and why."""
    return data_dir / "manifests" / f"{dataset}.rejected.csv"


def read_manifest(data_dir: Path, dataset: str):
    """The dataset's manifest, or a FileNotFoundError saying how to build it."""
    from pipeline.data.manifest import Manifest

    path = manifest_path(data_dir, dataset)
    if not path.is_file():
        raise FileNotFoundError(
            f"no manifest for dataset {dataset!r} at {path}: "
            f"build it first with `make data DATASET={dataset}`"
        )
    return Manifest.read(path)


def store_name(teacher: str) -> str:
    """A teacher's store (and Make target) name: the teacher's, with ':' as '-' (``hear:m``)."""
    name = teacher.replace(":", "-")
    if not name or name.startswith(".") or not all(c.isalnum() or c in "-_." for c in name):
        raise ValueError(f"{teacher!r} cannot name a store: use letters, digits, '-', '_', '.'")
    return name


def store_path(data_dir: Path, dataset: str, name: str) -> Path:
    """A clip store: teacher embeddings (``name``: teacher or store) or mels (``mel-<fe>``)."""
    return data_dir / "cache" / dataset / f"{store_name(name)}.zarr"


def h5_store_path(data_dir: Path, dataset: str, name: str) -> Path:
    """The single-file HDF5 copy of a clip store (``python -m pipeline export``)."""
    return store_path(data_dir, dataset, name).with_suffix(".h5")


def locate_store(data_dir: Path, dataset: str, name: str) -> Path:
    """The store that exists: ``<name>.zarr``, else ``<name>.h5``, else the ``.zarr`` path.

    Falling back to the Zarr path keeps "no store" errors pointing at where extraction writes.
    """
    zarr_path = store_path(data_dir, dataset, name)
    if zarr_path.exists():
        return zarr_path
    h5_path = zarr_path.with_suffix(".h5")
    return h5_path if h5_path.is_file() else zarr_path


def mel_store_name(frontend: str) -> str:
    return f"mel-{frontend}"


def runs_path(data_dir: Path, dataset: str) -> Path:
    return data_dir / "runs" / dataset
