"""Dataset adapters: each turns a dataset release (or a generator) into a :class:`Manifest`.

One file per source registers a builder with ``@register_dataset("name")``. A builder is a
function taking keyword options (``root``, ``csv``, ``out_dir``, ``clips``, ``seed``, …; the
ones it does not use are ignored) and returning a validated manifest.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

from pipeline.data.manifest import Manifest

DATASETS: dict[str, Callable[..., Manifest]] = {}
_DATASET_MODULES = {
    "demo": "demo",
    "openmic": "openmic",
    "magnatagatune": "magnatagatune",
    "csv": "csv_table",
}


def register_dataset(name: str) -> Callable[[Callable[..., Manifest]], Callable[..., Manifest]]:
    def add(fn: Callable[..., Manifest]) -> Callable[..., Manifest]:
        DATASETS[name] = fn
        return fn

    return add


def list_datasets() -> list[str]:
    return sorted(_DATASET_MODULES)


def build_manifest(source: str, **options: Any) -> Manifest:
    """Run the ``source`` adapter; ``None``-valued options are dropped so defaults apply."""
    if source not in _DATASET_MODULES:
        raise ValueError(f"unknown dataset source {source!r}; choose one of {list_datasets()}")
    importlib.import_module(f"{__name__}.{_DATASET_MODULES[source]}")
    return DATASETS[source](**{k: v for k, v in options.items() if v is not None})
