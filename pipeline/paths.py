"""Where each stage's output lives under the data folder (``data/`` by default)."""

from __future__ import annotations

from pathlib import Path


def manifest_path(data_dir: Path, dataset: str) -> Path:
    return data_dir / "manifests" / f"{dataset}.parquet"


def store_path(data_dir: Path, dataset: str, name: str) -> Path:
    """A clip store: teacher embeddings (``name`` = teacher) or mels (``mel-<frontend>``)."""
    return data_dir / "cache" / dataset / f"{name}.zarr"


def mel_store_name(frontend: str) -> str:
    return f"mel-{frontend}"


def runs_path(data_dir: Path, dataset: str) -> Path:
    return data_dir / "runs" / dataset
