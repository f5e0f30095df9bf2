"""The data of a training run: its stores, checked against the manifest, its two splits and
their loaders.

:func:`training_data` opens the mel and teacher stores a config names (refusing stores that are
missing or were made for other clips), builds the training and validation
:class:`pipeline.train.loader.ClipDataset` and, in the label-scarce regime, hides the labels of
the training clips outside the kept fraction. :func:`make_loaders` wraps them in the loaders of
one process: whole shards of its own in shard-aware order, mixup partners appended
(:mod:`pipeline.train.samplers`), validation on rank 0 only.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import BatchSampler, DataLoader, Sampler, SequentialSampler

from pipeline.data.fractions import labelled_subset
from pipeline.data.manifest import Manifest, clip_difference
from pipeline.paths import locate_store, manifest_path, mel_store_name, read_manifest
from pipeline.stores import StoreError, read_store
from pipeline.train.config import ConfigError, TrainConfig
from pipeline.train.device_data import (
    CachedLoader,
    DeviceCache,
    DevicePrefetcher,
    Loader,
    use_device_cache,
)
from pipeline.train.distributed import Processes, per_process_batch
from pipeline.train.loader import ClipDataset, collate
from pipeline.train.samplers import EvenShardSampler, MixupBatchSampler


@dataclass
class TrainingData:
    """The manifest, stores and splits of a run.

    Attributes
    ----------
    manifest : the dataset's manifest
    mel_path, teacher_paths : the mel store and the teacher stores (config order)
    train_set, valid_set : the usable clips of the two splits
    labelled : training clips that keep their labels (all but those ``label_fraction`` hides)
    """

    manifest: Manifest
    mel_path: Path
    teacher_paths: list[Path]
    train_set: ClipDataset
    valid_set: ClipDataset
    labelled: int


def store_paths(cfg: TrainConfig, data_dir: Path) -> tuple[Path, list[Path]]:
    """The mel store and the teacher stores a config reads (``.zarr``, else ``.h5``).

    Parameters
    ----------
    cfg : TrainConfig
        The run's config (dataset, front end, teachers).
    data_dir : Path
        The data folder.

    Returns
    -------
    tuple of Path and list of Path
        The mel store, and one store per teacher in ``cfg.teachers`` order.
    """
    mel = locate_store(data_dir, cfg.dataset, mel_store_name(cfg.frontend))
    return mel, [locate_store(data_dir, cfg.dataset, t) for t in cfg.teachers]


def training_data(
    cfg: TrainConfig, data_dir: Path, say: Callable[[str], object] = print
) -> TrainingData:
    """Check the stores of ``cfg`` against the manifest and open the two splits.

    Parameters
    ----------
    cfg : TrainConfig
        The run's config.
    data_dir : Path
        The data folder.
    say : callable
        Where notes go (hidden labels, skipped clips); ``print`` by default.

    Returns
    -------
    TrainingData

    Raises
    ------
    FileNotFoundError
        When a store does not exist (the message names the command that makes it).
    pipeline.stores.StoreError
        When a store was made for other clips than the manifest's.
    """
    manifest = read_manifest(data_dir, cfg.dataset)
    mel_path, teacher_paths = store_paths(cfg, data_dir)
    for store in (mel_path, *teacher_paths):
        if not ((store / "zarr.json").exists() or store.is_file()):  # a .zarr or a .h5
            what = "make mels" if store == mel_path else "make extract"
            raise FileNotFoundError(
                f"no store at {store}: run `{what} DATASET={cfg.dataset}` first"
            )
    for store in (mel_path, *teacher_paths):
        # Stores are read by clip ID: one made from another manifest would silently give some
        # clips no data, or another dataset's clips of the same name.
        other = clip_difference(
            read_store(store, require_complete=False).clip_ids, manifest.clip_ids
        )
        if other:
            what = "make mels" if store == mel_path else "make extract"
            raise StoreError(
                f"{store} was made for other clips than {manifest_path(data_dir, cfg.dataset)}: "
                f"{other}; run `{what} DATASET={cfg.dataset}` again (it replaces the store)"
            )
    train_set = ClipDataset(manifest, "train", mel_path, teacher_paths)
    labelled = len(train_set)
    if cfg.label_fraction < 1:  # label-scarce regime: the other clips keep no known label
        keep = labelled_subset(
            train_set.labels, train_set.mask, fraction=cfg.label_fraction, seed=cfg.seed
        )
        train_set.mask = np.array(train_set.mask, dtype=bool)  # a writable copy
        train_set.mask[~keep] = False
        labelled = int(keep.sum())
        say(
            f"label_fraction {cfg.label_fraction}: labels kept for {labelled} of "
            f"{len(train_set)} training clips (seed {cfg.seed})"
        )
    valid_set = ClipDataset(manifest, "valid", mel_path, teacher_paths)
    for name, dataset in (("train", train_set), ("valid", valid_set)):
        for clip, cause in sorted(dataset.skipped.items()):
            say(f"skipping {name} clip {clip}: {cause}")
    return TrainingData(manifest, mel_path, teacher_paths, train_set, valid_set, labelled)


def make_loaders(
    cfg: TrainConfig,
    train_set: ClipDataset,
    valid_set: ClipDataset,
    device: torch.device,
    procs: Processes,
    say: Callable[[str], object] = print,
) -> tuple[Loader, EvenShardSampler | MixupBatchSampler, Loader | None]:
    """Training loader of this process's shards; the validation loader on rank 0 only.

    With mixup, each training batch carries its clips' partners, drawn from the whole split
    (:class:`pipeline.train.samplers.MixupBatchSampler`). Validation takes batches of the
    global ``batch_size`` in split order, as the official run did. Batches reach the device as
    ``cfg.cache_on_device`` decides (:mod:`pipeline.train.device_data`): indexed from splits
    held there, or streamed by the workers and copied ahead of the step; the batches and their
    order are the same either way.

    Parameters
    ----------
    cfg : TrainConfig
        Batch size, shard window, seed, mixup, workers.
    train_set, valid_set : ClipDataset
        The two splits.
    device : torch.device
        Where batches go (memory is pinned for CUDA).
    procs : Processes
        This process's rank and the number of processes.
    say : callable
        Where the caching decision is told.

    Returns
    -------
    train_loader : DataLoader, DevicePrefetcher or CachedLoader
        Batches of ``batch_size // world_size`` clips (twice that with mixup partners).
    epochs : EvenShardSampler or MixupBatchSampler
        What to call ``set_epoch`` on before each epoch.
    valid_loader : DataLoader, DevicePrefetcher, CachedLoader or None
        ``None`` on ranks other than 0.

    Raises
    ------
    ConfigError
        When the training split spans fewer store shards than there are processes.
    """
    batch_size = per_process_batch(cfg.batch_size, procs.world_size)
    try:
        sampler = EvenShardSampler(
            train_set.shard_ids,
            batch_size=batch_size,
            window=cfg.shard_window,
            seed=cfg.seed,
            rank=procs.rank,
            world_size=procs.world_size,
        )
    except ValueError as err:  # fewer shards than processes
        raise ConfigError(str(err)) from None
    # Whole batches only: BatchNorm and the batch-relational regularisers need N > 1.
    batches: Sampler[list[int]] = BatchSampler(sampler, batch_size, drop_last=True)
    epochs: EvenShardSampler | MixupBatchSampler = sampler
    if cfg.mixup_alpha > 0:
        batches = epochs = MixupBatchSampler(
            sampler, batch_size=batch_size, n_items=len(train_set), seed=cfg.seed, rank=procs.rank
        )
    splits = (train_set, valid_set) if procs.main else (train_set,)
    cached, why = use_device_cache(cfg.cache_on_device, splits, device)
    if why:
        say(why)
    if cached:
        valid_batches = BatchSampler(SequentialSampler(valid_set), cfg.batch_size, False)
        return (
            CachedLoader(DeviceCache(train_set, device), batches),
            epochs,
            CachedLoader(DeviceCache(valid_set, device), valid_batches) if procs.main else None,
        )
    common = {
        "collate_fn": collate,
        "num_workers": cfg.workers,
        "persistent_workers": cfg.workers > 0,
        "pin_memory": device.type == "cuda",
    }
    train_loader = DevicePrefetcher(DataLoader(train_set, batch_sampler=batches, **common), device)
    valid_loader = None
    if procs.main:
        valid_loader = DevicePrefetcher(
            DataLoader(valid_set, batch_size=cfg.batch_size, shuffle=False, **common), device
        )
    return train_loader, epochs, valid_loader
