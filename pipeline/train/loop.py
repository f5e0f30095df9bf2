"""Stage two: train a student on cached mels, regularised toward cached teacher embeddings.

Read top to bottom: data → run folder → model and optimiser → (resume) → epochs of
train / validate / checkpoint / log → summary. Teachers never run here; their embeddings
stream from the stores next to the mels.

The recipe is the official one. A training step: (OpenMIC) the band limits jittered per clip,
approximated by warping the cached log-mels → SpecAugment on each clip (its own masks) →
per-clip mixup with a partner drawn from the whole training split → (1 − λ)·BCE + λ·regulariser
→ Adam step with the gradient norm clipped. Each epoch ends with validation: the same objective
on the validation clips and their teacher embeddings (no augmentation), in batches of
``batch_size``, and mAP. The validation *total loss* drives the learning-rate plateau schedule and
early stopping, the validation *mAP* picks ``best.pt`` (:mod:`pipeline.train.schedule`). A run ends at
``max_steps`` optimiser steps, ``max_epochs`` epochs or early stopping, whichever comes first.

Determinism: the model is initialised from ``seed``; every epoch reseeds torch and the
augmentation generator from (seed, epoch) and the sampler orders clips (and draws mixup
partners) from (seed, epoch). ``last.pt`` holds everything else (weights, optimiser, step count,
history — the schedule is replayed from it), so a run killed at any moment and started again
ends with the metrics of an uninterrupted run.

Several processes (``torchrun``, data-parallel): when ``WORLD_SIZE`` > 1 in the environment,
:func:`train` joins the process group (gloo on the CPU, nccl on CUDA with ``cuda:LOCAL_RANK``
per process) and wraps the student in ``DistributedDataParallel``. ``batch_size`` stays the
*global* batch: each of the ``W`` processes takes ``batch_size // W`` clips per step (a batch
size ``W`` does not divide is refused), and the averaged gradients make one step of the global
batch, so a config means the same with any number of processes and the run folder does not
depend on it. Each process reads whole store shards of its own (:class:`ShardAwareSampler` with
its rank), cut every epoch to the length of the shortest rank's share so that every process
takes the same number of steps. What is computed per process, on its local batch of
``batch_size // W`` clips, is everything batch-relational: the EAsT regulariser (distance
correlation or cosine-distance difference between the clips of the batch), BatchNorm statistics
and the KD term; these see fewer clips than in a single process, so the results are close to,
not identical with, a one-process run. Mixup partners come from the whole training split on
every process, from a stream of each rank's own. Rank 0 alone validates (the others
wait for its figures, which drive the schedule and early stopping on every rank), fits the KD
probes (saved, then loaded by the others), writes checkpoints, metrics, TensorBoard and the
summary, and prints. On resume every process loads ``last.pt``; epochs are reseeded from
(seed, epoch, rank), so an interrupted multi-process run also ends as an uninterrupted one.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import BatchSampler, DataLoader, Sampler
from tqdm.auto import tqdm

import pipeline
from pipeline.data.fractions import labelled_subset
from pipeline.data.manifest import clip_difference
from pipeline.evaluate.metrics import label_frequency_map, mean_average_precision
from pipeline.extract.frontends import frontend_config
from pipeline.extract.melbanks import jitter_mel_bands
from pipeline.paths import locate_store, manifest_path, mel_store_name, read_manifest, runs_path
from pipeline.stores.zarr_store import StoreError, read_store
from pipeline.students import Student, count_parameters, create_student
from pipeline.train.config import RECIPE, ConfigError, TrainConfig, probe_standardises
from pipeline.train.distributed import (
    Processes,
    barrier,
    from_main,
    mean_over_processes,
    per_process_batch,
    process_device,
    process_group,
    processes_from_env,
)
from pipeline.train.loader import (
    ClipDataset,
    EvenShardSampler,
    MixupBatchSampler,
    collate,
    draw_mixup,
    mixup,
    spec_augment,
)
from pipeline.train.losses import east_loss
from pipeline.train.probe import LinearProbe, fit_probe
from pipeline.train.schedule import Review, review


@dataclass(frozen=True)
class TrainResult:
    run_dir: Path
    best_epoch: int
    best_valid_map: float
    epochs: int
    resumed_from: int


def _save_atomic(obj: Any, path: Path) -> None:
    tmp = path.with_name(path.name + ".partial")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def _write_text_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".partial")
    tmp.write_text(text)
    os.replace(tmp, path)


def _epoch_seed(seed: int, epoch: int) -> int:
    return seed * 100_003 + epoch


def _rank_seed(seed: int, epoch: int, rank: int) -> int:
    """Seed of an epoch's augmentation and dropout draws in one process.

    Rank 0 (and a lone process) keeps the single-process seed; the other ranks get streams of
    their own, so the processes do not draw the same masks for different clips.
    """
    base = _epoch_seed(seed, epoch)
    return base if rank == 0 else int(np.random.SeedSequence([base, rank]).generate_state(1)[0])


def resolve_device(device: str | None) -> torch.device:
    return torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))


def store_paths(cfg: TrainConfig, data_dir: Path) -> tuple[Path, list[Path]]:
    """The mel store and the teacher stores a config reads (``.zarr``, else ``.h5``)."""
    mel = locate_store(data_dir, cfg.dataset, mel_store_name(cfg.frontend))
    return mel, [locate_store(data_dir, cfg.dataset, t) for t in cfg.teachers]


def run_dir_for(cfg: TrainConfig, data_dir: Path) -> Path:
    """``data/runs/<dataset>/<student>-<teacher>-<hash>``; the hash covers the stores' identity."""
    mel, teachers = store_paths(cfg, data_dir)
    prints = [read_store(p).fingerprint for p in (mel, *teachers)]
    return runs_path(data_dir, cfg.dataset) / cfg.run_name(json.dumps(prints, sort_keys=True))


def _fit_probes(
    cfg: TrainConfig, train_set: ClipDataset, valid_set: ClipDataset, run_dir: Path
) -> list[LinearProbe]:
    """One frozen linear probe per teacher for KD, trained once and kept in the run folder."""
    probes = []
    for k, (teacher, lr) in enumerate(zip(cfg.teachers, cfg.probe_lrs, strict=True)):
        path = run_dir / f"probe-{teacher}.pt"
        probe = LinearProbe(train_set.teacher_shapes[k][1], len(train_set.classes))
        if path.is_file():
            probe.load_state_dict(torch.load(path, weights_only=True))
        else:
            inputs = [dataset.mean_embeddings(k) for dataset in (train_set, valid_set)]
            probe, info = fit_probe(
                inputs[0],
                train_set.labels,
                train_set.mask,
                inputs[1],
                valid_set.labels,
                valid_set.mask,
                lr=lr,
                max_steps=cfg.probe_max_steps,
                standardise=probe_standardises(teacher),
                seed=cfg.seed,
            )
            _save_atomic(probe.state_dict(), path)
            _write_text_atomic(path.with_suffix(".json"), json.dumps(info, indent=2))
            print(f"linear probe on {teacher}: valid mAP {info['valid_map']:.3f}")
        probes.append(probe.eval().requires_grad_(False))
    return probes


def _to_device(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    moved = {k: batch[k].to(device, non_blocking=True) for k in ("mel", "labels", "mask")}
    moved["teachers"] = [t.to(device, non_blocking=True) for t in batch["teachers"]]
    return {**batch, **moved}


def objective(
    cfg: TrainConfig,
    probes: Sequence[LinearProbe],
    logits: torch.Tensor,
    features: torch.Tensor,
    batch: dict[str, Any],
) -> tuple[torch.Tensor, dict[str, float]]:
    """(1 − λ)·BCE + λ·regulariser of a batch on the device, and its parts for logging.

    The regulariser is the teacher term (with KD from the frozen ``probes``, applied to the
    batch's — possibly mixed — embeddings, for EAsT-KD), as :func:`pipeline.train.losses.east_loss`.
    """
    teacher_logits = None
    if probes:
        teacher_logits = torch.stack(
            [p(t) for p, t in zip(probes, batch["teachers"], strict=True)]
        ).mean(dim=0)
    return east_loss(
        logits,
        batch["labels"],
        batch["mask"],
        features,
        batch["teachers"],
        lam=cfg.regulariser_weight,
        regulariser=cfg.loss,
        teacher_weights=cfg.teacher_weights,
        align_mode=cfg.align,
        time_factors=cfg.time_factors,
        teacher_logits=teacher_logits,
        kd_weight=cfg.kd_weight,
        reg_weight=1.0 - cfg.kd_weight,
    )


def train_one_epoch(
    model: nn.Module,
    loader: DataLoader,
    optimizer: torch.optim.Optimizer,
    cfg: TrainConfig,
    probes: list[LinearProbe],
    generator: torch.Generator,
    device: torch.device,
    bar: tqdm,
    *,
    world_size: int = 1,
    max_steps: int | None = None,
) -> dict[str, float]:
    """One pass over this process's part of the training split (at most ``max_steps`` steps).

    ``model`` is a :class:`Student` or one wrapped in ``DistributedDataParallel``. Per batch:
    the band-limit jitter (``band_jitter``), SpecAugment on every clip, then (``mixup_alpha``
    > 0) each clip mixed with the partner the loader appended
    (:class:`pipeline.train.loader.MixupBatchSampler`), then :func:`objective` on the (local) batch.
    The progress bar counts the clips of all ``world_size`` processes. Returns
    the mean over this process's steps of each logged loss part.
    """
    model.train()
    mel_config = frontend_config(cfg.frontend)
    sums: dict[str, float] = {}
    steps = 0
    for batch in loader if max_steps is None else itertools.islice(loader, max_steps):
        batch = _to_device(batch, device)
        if cfg.band_jitter:
            batch["mel"] = jitter_mel_bands(batch["mel"], config=mel_config, generator=generator)
        if cfg.specaug_freq or cfg.specaug_time:
            batch["mel"] = spec_augment(
                batch["mel"],
                freq_mask=cfg.specaug_freq,
                time_mask=cfg.specaug_time,
                fill=mel_config.zero_log_mel,
                generator=generator,
            )
        if cfg.mixup_alpha > 0:
            lam = draw_mixup(len(batch["mel"]) // 2, alpha=cfg.mixup_alpha, generator=generator)
            batch = mixup(batch, lam=lam)

        logits, features = model(batch["mel"])
        loss, logs = objective(cfg, probes, logits, features, batch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        optimizer.step()

        steps += 1
        for key, value in logs.items():
            sums[key] = sums.get(key, 0.0) + value
        bar.update(len(logits) * world_size)
        rate = bar.format_dict["n"] / max(bar.format_dict["elapsed"], 1e-9)
        bar.set_postfix(loss=f"{sums['total'] / steps:.4f}", clips_s=f"{rate:.1f}")
    return {key: value / max(steps, 1) for key, value in sums.items()}


@torch.no_grad()
def predict_logits(model: Student, loader: DataLoader, device: torch.device) -> torch.Tensor:
    """Logits (N, C) on the CPU, in the loader's order."""
    model.eval()
    return torch.cat([model(batch["mel"].to(device))[0].float().cpu() for batch in loader])


@torch.no_grad()
def validate(
    model: Student,
    loader: DataLoader,
    cfg: TrainConfig,
    probes: Sequence[LinearProbe],
    device: torch.device,
) -> dict[str, float]:
    """The training objective without augmentation, and mAP, on the loader's split.

    ``"loss"`` is the total (1 − λ)·BCE + λ·regulariser that the schedule and early stopping
    watch; the other parts (``"bce"``, ``"dc"``, ``"kd"``, …) come as logged in training. Each
    is computed per batch (the regulariser compares a batch's clips) and averaged weighted by
    the batches' clip counts, as Lightning's epoch figures are. ``"map"`` is over the split.
    """
    model.eval()
    sums: dict[str, float] = {}
    chunks = []
    for batch in loader:
        batch = _to_device(batch, device)
        logits, features = model(batch["mel"])
        _, logs = objective(cfg, probes, logits, features, batch)
        for key, value in logs.items():
            sums[key] = sums.get(key, 0.0) + value * len(logits)
        chunks.append(logits.float().cpu())
    scores = torch.sigmoid(torch.cat(chunks)).numpy()
    dataset: ClipDataset = loader.dataset  # type: ignore[assignment]
    clips = len(scores)
    return {
        "loss": sums["total"] / clips,
        **{key: value / clips for key, value in sums.items() if key != "total"},
        "map": mean_average_precision(scores, dataset.labels, dataset.mask),
    }


def _loaders(
    cfg: TrainConfig,
    train_set: ClipDataset,
    valid_set: ClipDataset,
    device: torch.device,
    procs: Processes,
) -> tuple[DataLoader, EvenShardSampler | MixupBatchSampler, DataLoader | None]:
    """Training loader of this process's shards; the validation loader on rank 0 only.

    Also returns what to call ``set_epoch`` on. With mixup, each training batch carries its
    clips' partners, drawn from the whole split (:class:`MixupBatchSampler`). Validation takes
    batches of the global ``batch_size`` in split order, as the official run did.
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
    common = {
        "collate_fn": collate,
        "num_workers": cfg.workers,
        "persistent_workers": cfg.workers > 0,
        "pin_memory": device.type == "cuda",
    }
    train_loader = DataLoader(train_set, batch_sampler=batches, **common)
    valid_loader = None
    if procs.main:
        valid_loader = DataLoader(valid_set, batch_size=cfg.batch_size, shuffle=False, **common)
    return train_loader, epochs, valid_loader


def train(cfg: TrainConfig, data_dir: str | os.PathLike, *, progress: bool = True) -> TrainResult:
    """Train (or resume, or just report) the run of ``cfg``; returns its best validation mAP.

    Started by ``torchrun`` with more than one process (``WORLD_SIZE`` > 1), every process
    calls this: it joins the process group (unless the caller already did), trains its share
    of each global batch of ``cfg.batch_size`` clips (see the module docstring) and leaves the
    group at the end, also on errors. Every process returns the same result.

    Raises
    ------
    ConfigError
        When ``cfg.batch_size`` does not split evenly over the processes, or the training split
        has fewer store shards than there are processes.
    """
    procs = processes_from_env()
    device = resolve_device(cfg.device)
    if not procs.parallel:
        return _train(cfg, Path(data_dir), device, procs, progress)
    per_process_batch(cfg.batch_size, procs.world_size)  # refuse before joining the group
    device = process_device(procs, device)
    with process_group(procs, device):
        return _train(cfg, Path(data_dir), device, procs, progress)


def _train(
    cfg: TrainConfig, data_dir: Path, device: torch.device, procs: Processes, progress: bool
) -> TrainResult:
    main = procs.main
    say = print if main else _quiet
    if device.type == "cuda":
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True, warn_only=True)

    # -- data ------------------------------------------------------------------------------
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

    # -- run folder --------------------------------------------------------------------------
    run_dir = run_dir_for(cfg, data_dir)
    summary_path = run_dir / "train.json"
    if summary_path.is_file():
        summary = json.loads(summary_path.read_text())
        best_map = summary["best_valid_map"]
        best_map = -math.inf if best_map is None else best_map
        say(f"{run_dir}: already trained (best valid mAP {best_map:.4f})")
        return TrainResult(run_dir, summary["best_epoch"], best_map, summary["epochs"], -1)
    resolved = {
        **cfg.as_dict(),
        "lam": cfg.regulariser_weight,
        "time_factors": cfg.time_factors,
        "probe_lrs": cfg.probe_lrs,
        "run": run_dir.name,
        "classes": list(manifest.classes),
        "n_mels": train_set.n_mels,
        "mel_frames": train_set.mel_frames,
        "pipeline_version": pipeline.__version__,
        "recipe": RECIPE,
        "labelled_train_clips": labelled,
    }
    if main:
        run_dir.mkdir(parents=True, exist_ok=True)
        _write_text_atomic(run_dir / "config.json", json.dumps(resolved, indent=2))
        stores = {
            str(p): {"fingerprint": read_store(p).fingerprint, "skipped": train_set.skipped}
            for p in (mel_path, *teacher_paths)
        }
        _write_text_atomic(
            run_dir / "stores.json", json.dumps(stores, indent=2, ensure_ascii=False)
        )

    # -- model, optimiser ----------------------------------------------------------------------
    torch.manual_seed(cfg.seed)
    student = create_student(
        cfg.student,
        n_classes=len(manifest.classes),
        n_mels=train_set.n_mels,
        **cfg.student_options,
    ).to(device)
    optimizer = torch.optim.Adam(student.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    probes: list[LinearProbe] = []
    if cfg.kd:
        # Rank 0 fits and saves the probes; the others then load its files.
        if main:
            probes = _fit_probes(cfg, train_set, valid_set, run_dir)
        barrier(procs)
        if not main:
            probes = _fit_probes(cfg, train_set, valid_set, run_dir)
        probes = [p.to(device) for p in probes]
    train_loader, epochs, valid_loader = _loaders(cfg, train_set, valid_set, device, procs)

    state: dict[str, Any] = {"epoch": 0, "step": 0, "history": [], "seconds": 0.0}
    last_path = run_dir / "last.pt"
    if last_path.is_file():
        checkpoint = torch.load(last_path, map_location=device, weights_only=True)
        student.load_state_dict(checkpoint["model"])
        optimizer.load_state_dict(checkpoint["optimizer"])
        state = checkpoint["state"]
        say(f"{run_dir}: resuming after epoch {state['epoch']} (step {state['step']})")
    resumed_from = state["epoch"]
    barrier(procs)  # every process has read last.pt before rank 0 may replace it
    model: nn.Module = student
    if procs.parallel:
        model = DistributedDataParallel(
            student, device_ids=[device.index] if device.type == "cuda" else None
        )

    n_params = count_parameters(student)
    chance = label_frequency_map(valid_set.labels, valid_set.mask)
    say(
        f"{run_dir.name}: {cfg.student} ({n_params:,} parameters), teacher {cfg.teacher}, "
        f"λ={cfg.regulariser_weight}, {len(train_set)} train / {len(valid_set)} valid clips, "
        f"label-frequency valid mAP {chance:.3f}, on {device}"
        + (f" × {procs.world_size} processes" if procs.parallel else "")
    )
    writer = _tensorboard(run_dir, purge_step=resumed_from) if main else None

    # -- epochs ------------------------------------------------------------------------------
    decision, stopped = _review(cfg, state)
    while stopped is None:
        epoch = state["epoch"]
        started = time.perf_counter()
        torch.manual_seed(_rank_seed(cfg.seed, epoch, procs.rank))
        generator = torch.Generator().manual_seed(_rank_seed(cfg.seed, epoch, procs.rank))
        epochs.set_epoch(epoch)
        steps = len(train_loader)
        if cfg.max_steps is not None:
            steps = min(steps, cfg.max_steps - state["step"])
        lr = optimizer.param_groups[0]["lr"]
        with tqdm(
            total=steps * cfg.batch_size,  # clips of all processes
            unit="clip",
            desc=f"epoch {epoch + 1}" + (f"/{cfg.max_epochs}" if cfg.max_epochs else ""),
            # None: off when not writing to a terminal
            disable=None if progress and main else True,
            leave=False,
        ) as bar:
            train_logs = train_one_epoch(
                model,
                train_loader,
                optimizer,
                cfg,
                probes,
                generator,
                device,
                bar,
                world_size=procs.world_size,
                max_steps=steps,
            )
        state["step"] += steps
        if steps < len(train_loader):  # max_steps reached inside the epoch: as in Lightning,
            stopped = "max_steps"  # the cut epoch is not validated
            break
        train_logs = mean_over_processes(procs, train_logs, device)
        # Rank 0's figures drive the schedule and early stopping on every process alike.
        valid = from_main(
            procs, validate(student, valid_loader, cfg, probes, device) if main else None
        )
        seconds = time.perf_counter() - started

        state["epoch"] = epoch + 1
        state["seconds"] += seconds
        row = {
            "epoch": epoch + 1,
            "step": state["step"],
            **{f"train_{k}": float(v) for k, v in train_logs.items()},
            **{f"valid_{k}": float(v) for k, v in valid.items()},
            "lr": lr,
            "seconds": seconds,
            "clips_per_s": steps * cfg.batch_size / seconds,
        }
        state["history"].append(row)
        decision, stopped = _review(cfg, state)
        for group in optimizer.param_groups:
            group["lr"] = decision.lr
        if main:
            if decision.best_epoch == epoch + 1:
                _save_atomic(
                    _inference_checkpoint(student, resolved, epoch + 1, valid),
                    run_dir / "best.pt",
                )
            _save_epoch(run_dir, student, optimizer, state, writer, row)
        say(
            f"epoch {epoch + 1}: train loss {train_logs.get('total', float('nan')):.4f}, "
            f"valid loss {valid['loss']:.4f}, valid mAP {valid['map']:.4f}, "
            f"{row['clips_per_s']:.1f} clips/s"
        )
    if writer is not None:
        writer.close()

    best = decision.best_epoch
    best_map = state["history"][best - 1]["valid_map"] if best else -math.inf
    if main:
        summary = {
            "run": run_dir.name,
            "best_epoch": best,
            "best_valid_map": best_map if best else None,
            "epochs": state["epoch"],
            "steps": state["step"],
            "stopped_by": stopped,
            "stopped_early": stopped == "early_stopping",
            "label_frequency_valid_map": chance,
            "parameters": n_params,
            "train_seconds": state["seconds"],
            "train_clips": len(train_set),
            "valid_clips": len(valid_set),
            "processes": procs.world_size,
        }
        _write_text_atomic(summary_path, json.dumps(summary, indent=2))
    barrier(procs)  # the summary exists when any process returns
    if not best:
        say(
            f"{run_dir}: no epoch was validated (max_steps {cfg.max_steps} ends inside the "
            f"first epoch of {len(train_loader)} steps), so there is no best.pt"
        )
    else:
        say(f"{run_dir}: best valid mAP {best_map:.4f} at epoch {best}")
    return TrainResult(run_dir, best, best_map, state["epoch"], resumed_from)


def _review(cfg: TrainConfig, state: Mapping[str, Any]) -> tuple[Review, str | None]:
    """The schedule's review of the epochs so far, and why the run is over (``None``: it isn't):
    ``"early_stopping"``, ``"max_epochs"`` or ``"max_steps"``."""
    history = state["history"]
    decision = review(
        [row["valid_loss"] for row in history],
        [row["valid_map"] for row in history],
        lr=cfg.lr,
        factor=cfg.plateau_factor,
        plateau_patience=cfg.plateau_patience,
        early_stop_patience=cfg.early_stop_patience,
    )
    stopped = None
    if decision.stop:
        stopped = "early_stopping"
    elif cfg.max_epochs is not None and state["epoch"] >= cfg.max_epochs:
        stopped = "max_epochs"
    elif cfg.max_steps is not None and state["step"] >= cfg.max_steps:
        stopped = "max_steps"
    return decision, stopped


def _quiet(*args: Any, **kwargs: Any) -> None:
    """``print`` for the processes other than rank 0."""


def _save_epoch(
    run_dir: Path,
    student: Student,
    optimizer: torch.optim.Optimizer,
    state: dict[str, Any],
    writer: Any,
    row: dict[str, float],
) -> None:
    """After an epoch: ``last.pt`` (resume point), ``metrics.csv`` and the TensorBoard scalars."""
    _save_atomic(
        {
            "model": student.state_dict(),
            "optimizer": optimizer.state_dict(),
            "state": state,
        },
        run_dir / "last.pt",
    )
    _write_text_atomic(run_dir / "metrics.csv", pd.DataFrame(state["history"]).to_csv(index=False))
    for key, value in row.items():
        if key != "epoch":
            writer.add_scalar(key.replace("_", "/", 1), value, row["epoch"])
    writer.flush()


def _inference_checkpoint(
    model: Student, config: dict[str, Any], epoch: int, valid: dict[str, float]
) -> dict[str, Any]:
    """What prediction needs: weights, the config (student, front end, classes), provenance."""
    return {"model": model.state_dict(), "config": config, "epoch": epoch, "valid": valid}


def _tensorboard(run_dir: Path, purge_step: int):
    """A TensorBoard writer; on resume, events logged after ``purge_step`` are dropped."""
    from torch.utils.tensorboard import SummaryWriter

    return SummaryWriter(str(run_dir / "tb"), purge_step=purge_step or None)
