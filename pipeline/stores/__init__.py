"""Clip stores: per-clip arrays (teacher embeddings, mel spectrograms) cached on disk.

A store is a sharded Zarr folder (:mod:`pipeline.stores.zarr_store`, what extraction writes and
resumes) or one HDF5 file exported from it (:mod:`pipeline.stores.h5_store`, written by
:mod:`pipeline.stores.h5_export`); both offer the read interface
:class:`pipeline.stores.base.ClipStoreReader`, and :func:`read_store` opens either. Fast direct
reads of Zarr shards are in :mod:`pipeline.stores.shard_reader`, the batch reads both backends
share in :mod:`pipeline.stores.rows`, settings fingerprints in
:mod:`pipeline.stores.fingerprint`.

The public names of those modules are importable from here. The backends, and with them zarr
and h5py, are imported on first use of one of their names, so that importing this package stays
cheap for the command line.
"""

from __future__ import annotations

import importlib
import os
from typing import TYPE_CHECKING, Any

from pipeline.stores.base import (
    COMPLETE_MARKER,
    STORE_FORMAT,
    ClipStoreReader,
    ShardPlan,
    StoreError,
    is_h5_path,
    plan_shards,
)

if TYPE_CHECKING:
    from pipeline.stores.h5_export import export_h5
    from pipeline.stores.h5_store import H5ClipStore, read_h5_store
    from pipeline.stores.shard_reader import ShardReader
    from pipeline.stores.zarr_store import (
        ClipStore,
        open_for_writing,
        open_store,
        read_zarr_store,
    )

# Name → the module that defines it, imported when the name is first asked for.
_BACKEND_NAMES = {
    "ClipStore": "pipeline.stores.zarr_store",
    "open_store": "pipeline.stores.zarr_store",
    "open_for_writing": "pipeline.stores.zarr_store",
    "read_zarr_store": "pipeline.stores.zarr_store",
    "H5ClipStore": "pipeline.stores.h5_store",
    "read_h5_store": "pipeline.stores.h5_store",
    "export_h5": "pipeline.stores.h5_export",
    "ShardReader": "pipeline.stores.shard_reader",
}

__all__ = [
    "COMPLETE_MARKER",
    "STORE_FORMAT",
    "ClipStore",
    "ClipStoreReader",
    "H5ClipStore",
    "ShardPlan",
    "ShardReader",
    "StoreError",
    "export_h5",
    "is_h5_path",
    "open_for_writing",
    "open_store",
    "plan_shards",
    "read_h5_store",
    "read_store",
    "read_zarr_store",
]


def __getattr__(name: str) -> Any:
    """Import a backend's public name on first use (module attribute hook, PEP 562)."""
    module = _BACKEND_NAMES.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)


def read_store(
    path: str | os.PathLike, *, require_complete: bool = True, direct: bool = True
) -> ClipStoreReader:
    """Open a finished store for reading, a Zarr folder or an HDF5 file (by its suffix).

    Parameters
    ----------
    path : str or os.PathLike
        A ``<name>.zarr`` folder, or a ``<name>.h5`` / ``.hdf5`` file.
    require_complete : bool
        Refuse a store that is not complete (an interrupted extraction or export).
    direct : bool
        False reads every clip through the zarr API (or as h5py slices), never by the direct
        readers; the values are the same, only slower.

    Returns
    -------
    ClipStoreReader
        A :class:`pipeline.stores.zarr_store.ClipStore` or a
        :class:`pipeline.stores.h5_store.H5ClipStore`.

    Raises
    ------
    StoreError
        If there is no store at ``path``, or it is incomplete and ``require_complete`` is set.
    """
    if is_h5_path(path):
        from pipeline.stores.h5_store import read_h5_store

        return read_h5_store(path, require_complete=require_complete, direct=direct)
    from pipeline.stores.zarr_store import read_zarr_store

    return read_zarr_store(path, require_complete=require_complete, direct=direct)
