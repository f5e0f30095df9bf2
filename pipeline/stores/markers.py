"""A Zarr clip store's bookkeeping: per-shard done markers and the completion marker.

Both are Zarr groups of the store, so that Zarr readers (``zarr.open_group``, xarray) see a
clean hierarchy; what a marker records is its group's attributes::

    progress/zarr.json                   group holding the shard markers
    progress/shard-000003/zarr.json      shard 3 is done; attributes ``rows``, ``failures``
                                         and ``audio`` (clip → identity of the audio its
                                         values were made from; stores written before it
                                         was recorded have none)
    COMPLETE/zarr.json                   every shard is done; attributes = the run's summary
    held/zarr.json                       every shard is done but too many clips failed: the
                                         store is held back from completion (attributes:
                                         ``failed``, ``clips``, ``max_failed``, ``failures_csv``)

Each marker is one ``zarr.json`` file written whole or not at all
(:func:`pipeline.fileio.write_text`), and a shard's marker only by the one writer of that
shard, so concurrent writers never write the same file. Stores written before the markers
were groups hold ``progress/shard-000003.json`` files and a ``COMPLETE`` file with the same
content; they are read as markers too (and a legacy ``COMPLETE`` file is replaced when the
store is marked complete again). This module imports neither zarr nor h5py.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pipeline.fileio import write_text
from pipeline.stores.base import COMPLETE_MARKER

PROGRESS = "progress"
ZARR_JSON = "zarr.json"
#: The completion marker of stores written before it was a group: a plain JSON file.
LEGACY_COMPLETE = "COMPLETE"
#: The marker of a store whose extraction refused to mark it complete (too many clips failed).
HELD = "held"
_SHARD = "shard-{:06d}"


def group_metadata(attributes: dict[str, Any]) -> str:
    """The ``zarr.json`` text of a Zarr v3 group with ``attributes``.

    Parameters
    ----------
    attributes : dict
        JSON-serialisable attributes.

    Returns
    -------
    str
        The group's metadata document.
    """
    document = {"zarr_format": 3, "node_type": "group", "attributes": attributes}
    return json.dumps(document, ensure_ascii=False, indent=2)


def prepare(store: Path) -> None:
    """Ready the markers of ``store`` for a writing run: make its ``progress`` group if it has
    none (a new store, or one of the legacy layout), and remove the empty marker folders that
    a writer killed before renaming a marker into place leaves (Zarr readers would trip on
    them; a marker without its ``zarr.json`` never counted).

    Parameters
    ----------
    store : Path
        The ``<name>.zarr`` folder (or the folder it is being built in).
    """
    metadata = store / PROGRESS / ZARR_JSON
    if not metadata.is_file():
        write_text(metadata, group_metadata({"about": "one group per shard done"}))
    for folder in [*(store / PROGRESS).glob("shard-*"), store / LEGACY_COMPLETE, store / HELD]:
        if folder.is_dir() and not any(folder.iterdir()):
            folder.rmdir()


def shard_marker(store: Path, shard: int) -> Path:
    """The ``zarr.json`` of shard ``shard``'s done marker in ``store``."""
    return store / PROGRESS / _SHARD.format(shard) / ZARR_JSON


def write_shard_marker(store: Path, shard: int, marker: dict[str, Any]) -> None:
    """Mark shard ``shard`` of ``store`` done, recording ``marker`` (``rows``, ``failures``).

    Parameters
    ----------
    store : Path
        The ``<name>.zarr`` folder.
    shard : int
        Index of the shard.
    marker : dict
        JSON-serialisable record of the shard.
    """
    write_text(shard_marker(store, shard), group_metadata(marker))


def read_shard_marker(store: Path, shard: int) -> dict[str, Any]:
    """What shard ``shard``'s done marker in ``store`` records; {} if it has none.

    Parameters
    ----------
    store : Path
        The ``<name>.zarr`` folder.
    shard : int
        Index of the shard.

    Returns
    -------
    dict
        The marker group's attributes (or a legacy marker file's content).
    """
    metadata = shard_marker(store, shard)
    if metadata.is_file():
        return json.loads(metadata.read_text())["attributes"]
    legacy = store / PROGRESS / f"{_SHARD.format(shard)}.json"
    return json.loads(legacy.read_text()) if legacy.is_file() else {}


def _shard_index(name: str) -> int:
    return int(name.split(".")[0].split("-")[1])


def shard_markers(store: Path) -> dict[int, dict[str, Any]]:
    """Shard index → what its done marker records, for every shard done (legacy ones too).

    Parameters
    ----------
    store : Path
        The ``<name>.zarr`` folder.

    Returns
    -------
    dict
        The attributes of each shard's marker group (or the content of a legacy marker file).
    """
    progress = store / PROGRESS
    out = {_shard_index(p.name): json.loads(p.read_text()) for p in progress.glob("shard-*.json")}
    for metadata in progress.glob(f"shard-*/{ZARR_JSON}"):
        out[_shard_index(metadata.parent.name)] = json.loads(metadata.read_text())["attributes"]
    return dict(sorted(out.items()))


def done_shards(store: Path) -> set[int]:
    """Indices of the shards of ``store`` whose done marker exists (legacy ones too)."""
    progress = store / PROGRESS
    legacy = {_shard_index(p.name) for p in progress.glob("shard-*.json")}
    return legacy | {_shard_index(p.parent.name) for p in progress.glob(f"shard-*/{ZARR_JSON}")}


def failures(store: Path) -> dict[str, str]:
    """Clip ID → cause, for every clip a finished shard of ``store`` could not produce."""
    out: dict[str, str] = {}
    for marker in shard_markers(store).values():
        out.update(marker["failures"])
    return out


def is_complete(store: Path) -> bool:
    """Whether ``store`` has its completion marker (or a legacy ``COMPLETE`` file)."""
    return (store / COMPLETE_MARKER).is_file() or (store / LEGACY_COMPLETE).is_file()


def completion_summary(store: Path) -> dict[str, Any]:
    """What the extraction recorded when it marked ``store`` complete.

    Parameters
    ----------
    store : Path
        A complete ``<name>.zarr`` folder.

    Returns
    -------
    dict
        The summary given to :func:`mark_complete`.

    Raises
    ------
    FileNotFoundError
        If the store is not complete.
    """
    legacy = store / LEGACY_COMPLETE
    if legacy.is_file():
        return json.loads(legacy.read_text())
    return json.loads((store / COMPLETE_MARKER).read_text())["attributes"]


def mark_complete(store: Path, summary: dict[str, Any]) -> None:
    """Write the completion marker of ``store`` with ``summary`` (replacing a legacy one).

    A legacy ``COMPLETE`` file is removed first, since the new marker's folder takes its name;
    a run killed in between leaves the store incomplete, and the next run marks it again.

    Parameters
    ----------
    store : Path
        The ``<name>.zarr`` folder, every shard of which is done.
    summary : dict
        JSON-serialisable record of the run.
    """
    legacy = store / LEGACY_COMPLETE
    if legacy.is_file():
        legacy.unlink()
    write_text(store / COMPLETE_MARKER, group_metadata(summary))
    held = store / HELD / ZARR_JSON
    if held.is_file():
        held.unlink()
        held.parent.rmdir()


def withdraw_complete(store: Path) -> None:
    """Remove the completion marker of ``store`` (and a legacy ``COMPLETE`` file), before a run
    changes shards that are done, so that a run killed meanwhile leaves the store incomplete.

    A run killed between removing the marker file and its folder leaves an empty folder, which
    :func:`prepare` removes.

    Parameters
    ----------
    store : Path
        The ``<name>.zarr`` folder.
    """
    metadata = store / COMPLETE_MARKER
    for marker in (metadata, store / LEGACY_COMPLETE):
        if marker.is_file():
            marker.unlink()
    if metadata.parent.is_dir() and not any(metadata.parent.iterdir()):
        metadata.parent.rmdir()


def held_reason(failed: int, clips: int, max_failed: float, failures_csv: str) -> str:
    """Why an extraction left a store incomplete although every shard is done, and what to do.

    Parameters
    ----------
    failed, clips : int
        Clips that failed, of all the store's clips.
    max_failed : float
        The failure limit the run was given, a fraction of the clips.
    failures_csv : str
        The table of the failed clips.

    Returns
    -------
    str
        One sentence naming the counts, the limit, the table and the ways on.
    """
    return (
        f"{failed} of {clips} clips failed, over the limit of {max_failed * 100:g} %, so the "
        f"store was not marked complete; the failed clips are listed in {failures_csv}: fix "
        "their audio and run the extraction again, or accept the store without them with "
        "--max-failed FRACTION (make MAX_FAILED=FRACTION)"
    )


def hold(store: Path, failed: int, clips: int, max_failed: float, failures_csv: str) -> str:
    """Record in ``store`` that its extraction refused to mark it complete, and why.

    The record stays until the store is marked complete (:func:`mark_complete` removes it).

    Parameters
    ----------
    store : Path
        The ``<name>.zarr`` folder, every shard of which is done.
    failed, clips, max_failed, failures_csv
        As for :func:`held_reason`.

    Returns
    -------
    str
        The reason recorded (:func:`held_reason`).
    """
    record = {"failed": failed, "clips": clips, "max_failed": max_failed}
    write_text(store / HELD / ZARR_JSON, group_metadata({**record, "failures_csv": failures_csv}))
    return held_reason(failed, clips, max_failed, failures_csv)


def incomplete_reason(store: Path) -> str:
    """Why ``store`` is not complete, as the end of a sentence naming it.

    Parameters
    ----------
    store : Path
        The ``<name>.zarr`` folder, without its completion marker.

    Returns
    -------
    str
        The reason recorded by :func:`hold`, else that a run was likely interrupted.
    """
    held = store / HELD / ZARR_JSON
    if not held.is_file():
        return "is incomplete (a run was interrupted?): extract again to resume"
    return "is incomplete: " + held_reason(**json.loads(held.read_text())["attributes"])
