"""Mel stores: a front end's log-mel spectrograms of every clip, cached like a teacher's output.

:func:`run_mels` is the mels stage; :func:`ensure_mel_store` builds the store a training needs
before it starts (the train, compare and paper stages), and builds it again when it is stale.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pipeline.extract.audio_identity import check_audio
from pipeline.extract.frontends import create_frontend
from pipeline.extract.local import ExtractSummary, extract, max_frames_for
from pipeline.extract.run import FilledStore, fill_store
from pipeline.paths import locate_store, mel_store_name, read_manifest, store_path
from pipeline.stores.status import existing_store, staleness


def build_mels(data_dir: Path, dataset: str, frontend_name: str, **options: Any) -> ExtractSummary:
    """Compute (or finish) the mel store of a dataset; see ``pipeline.extract.local.extract``.

    Parameters
    ----------
    data_dir : Path
        Root of everything generated; the store is ``cache/<dataset>/mel-<frontend>.zarr``.
    dataset : str
        The manifest's name.
    frontend_name : str
        A mel front end (:func:`pipeline.extract.frontends.list_frontends`).
    **options
        ``device`` of the front end (default: the CPU) and the keyword arguments of
        :func:`pipeline.extract.local.extract`.

    Returns
    -------
    ExtractSummary
    """
    manifest = read_manifest(data_dir, dataset)
    frontend = create_frontend(frontend_name, device=options.pop("device", None) or "cpu")
    out = store_path(data_dir, dataset, mel_store_name(frontend_name))
    return extract(manifest, frontend, out, **options)


def run_mels(
    data_dir: Path, dataset: str, frontend_name: str, *, device: str | None = None, **options: Any
) -> FilledStore:
    """The mels stage: compute (or finish) a dataset's mel store, with its failures table.

    Parameters
    ----------
    data_dir, dataset, frontend_name : as for :func:`build_mels`
    device : str, optional
        Torch device of the front end; default: the CPU.
    **options
        The store options of :func:`pipeline.extract.run.fill_store`.

    Returns
    -------
    FilledStore
    """
    manifest = read_manifest(data_dir, dataset)
    frontend = create_frontend(frontend_name, device=device or "cpu")
    out = store_path(data_dir, dataset, mel_store_name(frontend_name))
    return fill_store(frontend, manifest, out, **options)


def ensure_mel_store(
    data_dir: Path,
    dataset: str,
    frontend_name: str,
    *,
    progress: bool = True,
    say: Callable[[str], None] = print,
) -> ExtractSummary | None:
    """Build (or rebuild, when stale) the mel store a training reads, on the first process only.

    A mel store is derived from the manifest and the front end alone: one made with other
    front-end settings or for other clips is computed again (saying why), never mixed, and
    in a complete one the clips whose audio changed since are computed again
    (:mod:`pipeline.extract.audio_identity`; by path, size and modification time). Under
    ``torchrun`` only the first process (``RANK`` 0) builds the mels; the others wait for it
    when they join the process group in training.

    Parameters
    ----------
    data_dir, dataset, frontend_name : as for :func:`build_mels`
    progress : bool
        Show a progress bar while computing.
    say : callable
        Where the lines about the computation go.

    Returns
    -------
    ExtractSummary or None
        The computation's summary; None when the store was there and current, or on a process
        other than the first.
    """
    manifest = read_manifest(data_dir, dataset)
    mel_store = locate_store(data_dir, dataset, mel_store_name(frontend_name))
    frontend = create_frontend(frontend_name)
    stale = staleness(mel_store, frontend.fingerprint(), manifest.clip_ids)
    existing = existing_store(mel_store)
    if os.environ.get("RANK", "0") != "0":
        return None
    current = existing is not None and existing.is_complete and not stale
    paths = [str(p) for p in manifest.clips["path"]]
    if current and not check_audio(mel_store, manifest.clip_ids, paths).changed:
        return None
    # Writing into it: its rows must have the room the manifest's clips now need (a store cut
    # by `mels --max-duration` is read as it is, but is made afresh once it has to be written).
    if not stale:
        room = max_frames_for(manifest, frontend, None)
        stale = staleness(mel_store, frontend.fingerprint(), manifest.clip_ids, max_frames=room)
    if stale:
        say(f"{mel_store} was {stale}: computing it again")
    elif not current:
        say(f"computing the {frontend_name} mel store first")
    summary = build_mels(
        data_dir, dataset, frontend_name, overwrite=bool(stale), progress=progress, say=say
    )
    say(str(summary))
    return summary
