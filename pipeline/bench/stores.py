"""Clip stores for a benchmark corpus: the mobile_fcn mel store and a teacher-shaped store.

:func:`build_stores` gives the two stores that stage two reads for a corpus manifest:

* ``mel-mobile_fcn.zarr``: real log-mels, made by :func:`pipeline.extract.local.extract` with the
  ``mobile_fcn`` front end (16 kHz, hop 20 ms, 96 bands: 500 frames for a 10 s clip).
* ``teacher-passt-shaped.zarr``: random float16 values shaped like PaSST timestamp embeddings
  (11 frames × 768 per 10 s clip). The loader never looks at the values, only at their bytes, so
  a teacher run is not needed to time it; the values are fixed by a seed, so rebuilding gives
  the same store.

Both are written under ``ctx.root / "stores" / name`` and reused by later runs when they are
complete and hold the manifest's clips. :func:`ensure_store` does the same for any encoder's
store and reports the extraction time; :func:`newer_than` tells whether a file derived from
stores is fresh.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from pipeline.bench import BenchContext
from pipeline.data.manifest import Manifest
from pipeline.extract.frontends import create_frontend
from pipeline.extract.local import Encoder, extract
from pipeline.stores import COMPLETE_MARKER, StoreError, open_store, read_store

TEACHER_FRAMES = 11
TEACHER_DIM = 768
SHARD_SIZE = 256  # extract()'s default; the sampler's order depends on it


def _as_stored(fingerprint: dict) -> dict:
    """``fingerprint`` as a store returns it (JSON round trip), for comparisons."""
    return json.loads(json.dumps(fingerprint, sort_keys=True))


def _is_ready(path: Path, clip_ids: list[str], fingerprint: dict | None = None) -> bool:
    """Whether ``path`` is a complete store of exactly ``clip_ids`` (and ``fingerprint``)."""
    try:
        store = read_store(path)
    except StoreError:
        return False
    if fingerprint is not None and store.fingerprint != _as_stored(fingerprint):
        return False
    return store.clip_ids == clip_ids


def newer_than(path: Path, *stores: Path) -> bool:
    """Whether ``path`` exists and was written after every store in ``stores`` was completed.

    Parameters
    ----------
    path : Path -- a file derived from the stores (a copy, a flat file, a marker)
    *stores : Path -- complete clip stores (folders holding their completion marker)

    Returns
    -------
    bool -- False if ``path`` is missing or older than any store's completion marker.
    """
    if not path.exists():
        return False
    return all(path.stat().st_mtime >= (s / COMPLETE_MARKER).stat().st_mtime for s in stores)


def build_mel_store(ctx: BenchContext, manifest: Manifest, path: Path) -> Path:
    """The mobile_fcn log-mel store of ``manifest`` at ``path``, extracted unless already there.

    Decoding runs in ``ctx.workers`` processes; mels are computed on the CPU.

    Parameters
    ----------
    ctx : BenchContext -- its ``workers`` are used
    manifest : Manifest -- the clips
    path : Path -- the store; one made with other settings or other clips is replaced

    Returns
    -------
    Path -- ``path``, a complete store of (frames, 96) log-mels.
    """
    frontend = create_frontend("mobile_fcn")
    if _is_ready(path, manifest.clip_ids, frontend.fingerprint()):
        return path
    try:
        extract(manifest, frontend, path, jobs=ctx.workers, progress=False)
    except StoreError:  # made with other settings or other clips: start afresh
        extract(manifest, frontend, path, jobs=ctx.workers, progress=False, overwrite=True)
    return path


def build_teacher_store(manifest: Manifest, path: Path, *, seed: int = 0) -> Path:
    """A store of random (11, 768) float16 embeddings per clip (PaSST's shape) at ``path``.

    Parameters
    ----------
    manifest : Manifest -- the clips
    path : Path -- the store; reused if complete with the same clips and seed
    seed : int -- the values of shard ``k`` come from ``default_rng([seed, k])``

    Returns
    -------
    Path -- ``path``.
    """
    fingerprint = {
        "teacher": "passt-shaped random values",
        "frames": TEACHER_FRAMES,
        "dim": TEACHER_DIM,
        "seed": seed,
    }
    clip_ids = manifest.clip_ids
    if _is_ready(path, clip_ids, fingerprint):
        return path
    store = open_store(
        path,
        fingerprint=fingerprint,
        clip_ids=clip_ids,
        dim=TEACHER_DIM,
        max_frames=TEACHER_FRAMES,
        shard_size=SHARD_SIZE,
        overwrite=True,
    )
    for plan in store.shards():
        rng = np.random.default_rng([seed, plan.index])
        block = rng.standard_normal((plan.stop - plan.start, TEACHER_FRAMES, TEACHER_DIM))
        store.write_shard(plan.index, list(block.astype(np.float16)), {})
    store.mark_complete({"clips": len(clip_ids), "values": "random"})
    return path


def ensure_store(
    manifest: Manifest, encoder: Encoder, path: Path, jobs: int, *, shard_size: int = SHARD_SIZE
) -> tuple[float, bool]:
    """Make ``path`` with :func:`extract` unless a complete store of the same data is there.

    Parameters
    ----------
    manifest : Manifest -- the clips the store must hold
    encoder : Encoder -- teacher or mel front end; its fingerprint must match the store's
    path : Path -- the store
    jobs : int >= 1 -- decode worker processes of :func:`extract`
    shard_size : int > 0 -- clips per shard of a new store

    Returns
    -------
    seconds : float -- the extraction time, recorded by the run that made the store
    reused : bool -- whether the store was already there
    """
    try:
        store = read_store(path)
        expected = _as_stored(encoder.fingerprint())
        if store.fingerprint == expected and store.clip_ids == manifest.clip_ids:
            return float(store.summary["seconds"]), True
    except (StoreError, KeyError, ValueError):
        pass
    summary = extract(
        manifest, encoder, path, shard_size=shard_size, jobs=jobs, overwrite=True, progress=False
    )
    return summary.seconds, False


def build_stores(ctx: BenchContext, manifest: Manifest, name: str) -> tuple[Path, Path]:
    """(mel store, teacher-shaped store) of ``manifest`` under ``ctx.root / "stores" / name``.

    Parameters
    ----------
    ctx : the benchmark context (``root`` and ``workers`` are used)
    manifest : the corpus, e.g. from :func:`pipeline.bench.corpus.make_corpus`
    name : folder name for this corpus' stores, e.g. ``manifest.name``

    Returns
    -------
    tuple of Path -- ``mel-mobile_fcn.zarr`` and ``teacher-passt-shaped.zarr``, both complete.
    """
    folder = Path(ctx.root) / "stores" / name
    folder.mkdir(parents=True, exist_ok=True)
    mel = build_mel_store(ctx, manifest, folder / "mel-mobile_fcn.zarr")
    teacher = build_teacher_store(manifest, folder / "teacher-passt-shaped.zarr")
    return mel, teacher
