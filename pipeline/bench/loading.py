"""Loader benchmarks P2 and P3: how fast stage two gets its training batches.

Setup (written once under ``ctx.root``, reused while complete): a corpus of
``ctx.size(2000, minimum=32)`` clips of 10 s, its mobile_fcn log-mel store (made by the real
stage one) and a teacher-shaped store of random float16 values with PaSST's shape, 11 frames ×
768 per clip (see :mod:`pipeline.bench.stores`; the loader only moves bytes, so the values do not
matter). Every side below delivers the same batches: the same clips in the same order (one
:class:`pipeline.train.samplers.ShardAwareSampler` order), 32 clips per batch, mels as
(32, 96, 500) and embeddings as (32, 11, 768) float32 tensors. The setup, the baselines'
files and their datasets are in :mod:`pipeline.bench.reference`.

P2 -- our loader ÷ the way the EAsT reference code loads its data.
    Ours: :class:`pipeline.train.loader.ClipDataset` over the two stores, torch ``DataLoader``
    with ``ctx.workers`` workers. Theirs: a ``Dataset`` whose ``__getitem__`` decodes the clip's
    audio file (:func:`pipeline.data.audio.load_audio`, 16 kHz), computes its log-mel with the
    same :class:`pipeline.extract.frontends.MelSpectrogram` and ``np.load``-s the clip's
    embedding from one ``.npy`` file per clip; same ``DataLoader`` settings. Ratio of clips/s;
    target >= 5.

P3 -- our loader ÷ reading the same bytes raw.
    The raw side holds every clip's valid mel rows and embedding rows (float16, in store order)
    in one flat file, reads each clip with one ``os.pread`` in our loader's access order and
    converts a whole batch to the same float32 tensors with a few numpy calls: the least work
    that yields the batch. Both sides run single-process (``num_workers=0``) for the figure; the
    same comparison with ``ctx.workers`` workers is in the details. "P3" uses the Zarr stores;
    "P3-h5" HDF5 copies made by ``pipeline.stores.export_h5`` (skipped where that is
    missing). Ratio of clips/s; target >= 0.5.

Each side is timed for whole passes over the corpus: one untimed pass first (it fills the page
cache and starts the workers; workers persist between passes), then the median of
``ctx.repeats`` passes. Every side therefore reads from memory, not disk: the figures compare
CPU cost. The first batch of each side is built once beforehand and compared with ours: the raw
side must match exactly; the audio side's mels differ by float16 rounding (details).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from pipeline.bench import BenchContext, Figure, device_name, error_figure, median_seconds
from pipeline.bench.reference import (
    AudioFileDataset,
    LoaderSetup,
    RawFileDataset,
    pass_through,
    setup,
)
from pipeline.bench.stores import newer_than
from pipeline.train.loader import ClipDataset, collate
from pipeline.train.samplers import ShardAwareSampler

BATCH_SIZE = 32
FRONTEND = "mobile_fcn"
WHAT = {
    "P2": "our loader ÷ decode audio + mel + .npy per clip (clips/s)",
    "P3": "our loader over the Zarr stores ÷ pread of the same bytes (clips/s, 1 process)",
    "P3-h5": "our loader over HDF5 copies ÷ pread of the same bytes (clips/s, 1 process)",
}


# -- timing ------------------------------------------------------------------------------------
def make_loader(
    dataset: Dataset, sampler: Sampler[int], workers: int, *, collated: bool = False
) -> DataLoader:
    """The DataLoader every side uses: batches of 32 in ``sampler``'s order, persistent workers.

    Parameters
    ----------
    dataset : Dataset -- one side's dataset
    sampler : Sampler -- the clip order shared by every side
    workers : int >= 0 -- DataLoader worker processes
    collated : bool -- whether ``dataset.__getitems__`` already returns whole batches

    Returns
    -------
    DataLoader
    """
    return DataLoader(
        dataset,
        batch_size=BATCH_SIZE,
        sampler=sampler,
        num_workers=workers,
        persistent_workers=workers > 0,
        collate_fn=pass_through if collated else collate,
    )


def one_pass(loader: DataLoader) -> int:
    """Iterate ``loader`` once.

    Parameters
    ----------
    loader : DataLoader -- yields batches with an ``index`` entry

    Returns
    -------
    int -- the clips delivered.
    """
    return sum(len(batch["index"]) for batch in loader)


def time_passes(
    dataset: Dataset, sampler: Sampler[int], workers: int, repeats: int, *, collated: bool = False
) -> dict[str, Any]:
    """Clips per pass, median seconds per pass and clips/s, after one untimed pass.

    The loader and its workers live only for this call, so no idle worker of another side
    competes for the CPU while a side is timed.

    Parameters
    ----------
    dataset, sampler, workers, collated : as for :func:`make_loader`
    repeats : int >= 1 -- timed passes

    Returns
    -------
    dict -- ``clips`` per pass, ``median_s`` and ``times_s`` (seconds per pass) and
    ``clips_per_s``.
    """
    loader = make_loader(dataset, sampler, workers, collated=collated)
    clips = one_pass(loader)  # warm-up: page cache, worker start, lazy store opening
    median_s, times = median_seconds(lambda: one_pass(loader), repeats)
    return {
        "clips": clips,
        "median_s": median_s,
        "times_s": [round(t, 4) for t in times],
        "clips_per_s": clips / median_s,
    }


def first_batch(dataset: Dataset, sampler: Sampler[int]) -> dict[str, Any]:
    """The first batch in ``sampler``'s order, built in this process.

    Parameters
    ----------
    dataset : Dataset -- a :class:`RawFileDataset` or a dataset of items
    sampler : Sampler -- the clip order

    Returns
    -------
    dict -- the collated batch of the first 32 clips.
    """
    indices = list(sampler)[:BATCH_SIZE]
    if isinstance(dataset, RawFileDataset):
        return dataset.__getitems__(indices)
    return collate([dataset[i] for i in indices])


def batch_difference(a: dict[str, Any], b: dict[str, Any]) -> dict[str, float]:
    """Largest absolute differences of the mels and the embeddings of two batches.

    Parameters
    ----------
    a, b : dict -- batches of the same clips (:class:`AssertionError` otherwise)

    Returns
    -------
    dict -- ``mel`` and ``embedding``: the largest absolute difference of each.
    """
    if not torch.equal(a["index"], b["index"]):
        raise AssertionError("the compared loaders deliver different clips")
    return {
        "mel": float((a["mel"] - b["mel"]).abs().max()),
        "embedding": float((a["teachers"][0] - b["teachers"][0]).abs().max()),
    }


def _workers(n: int) -> str:
    return "1 worker" if n == 1 else f"{n} workers"


def _compare(
    ours: dict[str, Any], theirs: dict[str, Any], **extra: Any
) -> tuple[float, dict[str, Any]]:
    if ours["clips"] != theirs["clips"]:
        raise AssertionError(f"ours read {ours['clips']} clips, the baseline {theirs['clips']}")
    ratio = ours["clips_per_s"] / theirs["clips_per_s"]
    details = {
        "clips": ours["clips"],
        "batch_size": BATCH_SIZE,
        **{f"ours_{k}": v for k, v in ours.items() if k != "clips"},
        **{f"baseline_{k}": v for k, v in theirs.items() if k != "clips"},
        **extra,
    }
    return ratio, details


# -- the figures -------------------------------------------------------------------------------
def p2(ctx: BenchContext, s: LoaderSetup) -> Figure:
    """Our loader ÷ decoding audio, computing mels and loading one .npy per clip.

    Parameters
    ----------
    ctx : BenchContext -- ``workers`` and ``repeats`` are used
    s : LoaderSetup -- from :func:`setup`

    Returns
    -------
    Figure -- the P2 row.
    """
    sampler = ShardAwareSampler(s.dataset.shard_ids, seed=0)
    paths = s.manifest.clips.set_index("clip_id").loc[s.dataset.clip_ids, "path"].tolist()
    audio = AudioFileDataset(s.dataset, paths, s.npy_paths, FRONTEND)
    check = batch_difference(first_batch(s.dataset, sampler), first_batch(audio, sampler))
    ours = time_passes(s.dataset, sampler, ctx.workers, ctx.repeats)
    theirs = time_passes(audio, sampler, ctx.workers, ctx.repeats)
    ratio, details = _compare(
        ours, theirs, workers=ctx.workers, first_batch_max_abs_difference=check
    )
    return Figure(
        id="P2",
        what=WHAT["P2"],
        ratio=ratio,
        target=">= 5",
        numerator=f"{ours['clips_per_s']:.1f} clips/s (stores, {_workers(ctx.workers)})",
        denominator=f"{theirs['clips_per_s']:.1f} clips/s (audio + mel + .npy)",
        details=details,
        device=device_name("cpu"),
    )


def _raw_comparison(
    ours_set: ClipDataset, raw_set: RawFileDataset, workers: int, repeats: int
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Timings of our loader and of the raw reads, after checking they give the same batch."""
    sampler = ShardAwareSampler(ours_set.shard_ids, seed=0)
    check = batch_difference(first_batch(ours_set, sampler), first_batch(raw_set, sampler))
    if check["mel"] or check["embedding"]:
        raise AssertionError(f"the flat file holds other values than the stores: {check}")
    ours = time_passes(ours_set, sampler, workers, repeats)
    raw = time_passes(raw_set, sampler, workers, repeats, collated=True)
    return ours, raw


def p3(
    ctx: BenchContext, s: LoaderSetup, ours_set: ClipDataset, stores: Sequence[Path], figure_id: str
) -> Figure:
    """Our loader over ``stores`` (``ours_set``) ÷ ``os.pread`` of the same bytes, 1 process.

    Parameters
    ----------
    ctx : BenchContext -- ``workers`` (for the details) and ``repeats`` are used
    s : LoaderSetup -- from :func:`setup`; its flat file is the baseline
    ours_set : ClipDataset -- our dataset over ``stores``
    stores : sequence of Path -- the stores ``ours_set`` reads, for the details
    figure_id : str -- "P3" or "P3-h5"

    Returns
    -------
    Figure -- the row ``figure_id``.
    """
    raw_set = RawFileDataset(s.dataset, s.raw_path, s.raw_index)
    ours, raw = _raw_comparison(ours_set, raw_set, 0, ctx.repeats)
    ratio, details = _compare(ours, raw, workers=0, stores=[str(p) for p in stores])
    if ctx.workers > 0:
        ours_w, raw_w = _raw_comparison(ours_set, raw_set, ctx.workers, ctx.repeats)
        details[f"with_{ctx.workers}_workers"] = {
            "ratio": ours_w["clips_per_s"] / raw_w["clips_per_s"],
            "ours_clips_per_s": ours_w["clips_per_s"],
            "baseline_clips_per_s": raw_w["clips_per_s"],
            "ours_times_s": ours_w["times_s"],
            "baseline_times_s": raw_w["times_s"],
        }
    kind = "HDF5" if figure_id.endswith("h5") else "Zarr"
    return Figure(
        id=figure_id,
        what=WHAT[figure_id],
        ratio=ratio,
        target=">= 0.5",
        numerator=f"{ours['clips_per_s']:.1f} clips/s ({kind} stores)",
        denominator=f"{raw['clips_per_s']:.1f} clips/s (pread, flat file)",
        details=details,
        device=device_name("cpu"),
    )


def _h5_dataset(s: LoaderSetup) -> tuple[ClipDataset, list[Path]] | None:
    """Our dataset over HDF5 copies of the stores, and the copies; None without ``export_h5``."""
    try:
        from pipeline.stores import export_h5
    except ImportError:
        return None
    copies = []
    for store in (s.mel_store, s.teacher_store):
        copy = store.with_suffix(".h5")
        if not newer_than(copy, store):
            export_h5(store, copy)
        copies.append(copy)
    return ClipDataset(s.manifest, "train", copies[0], copies[1:]), copies


def p3_h5(ctx: BenchContext, s: LoaderSetup) -> Figure:
    """P3 over HDF5 copies of the stores; a "skipped" row where ``export_h5`` is missing.

    Parameters
    ----------
    ctx, s : as for :func:`p3`

    Returns
    -------
    Figure -- the P3-h5 row.
    """
    h5 = _h5_dataset(s)
    if h5 is None:
        why = "skipped: pipeline.stores.export_h5 is not available"
        return Figure(
            "P3-h5",
            WHAT["P3-h5"],
            None,
            ">= 0.5",
            why,
            details={"skipped": why},
            device=device_name("cpu"),
        )
    return p3(ctx, s, h5[0], h5[1], "P3-h5")


def run(ctx: BenchContext) -> list[Figure]:
    """P2, P3 and P3-h5 (those that ``ctx`` asks for); a figure that fails is an error row.

    Parameters
    ----------
    ctx : BenchContext

    Returns
    -------
    list of Figure
    """
    s = setup(ctx)
    zarr_stores = [s.mel_store, s.teacher_store]
    measure = {
        "P2": lambda: p2(ctx, s),
        "P3": lambda: p3(ctx, s, s.dataset, zarr_stores, "P3"),
        "P3-h5": lambda: p3_h5(ctx, s),
    }
    figures = []
    for figure_id, fn in measure.items():
        if not ctx.wants(figure_id):
            continue
        try:
            figures.append(fn())
        except Exception as err:  # report it and go on with the other figures
            figures.append(error_figure(figure_id, WHAT[figure_id], err))
    return figures
