"""Stage two: train a student on cached mels, regularised toward cached teacher embeddings.

Read top to bottom: data → run folder → model and optimiser → (resume) → epochs of
train / validate / checkpoint / log → summary. Teachers never run here; their embeddings
stream from the stores next to the mels. The parts live beside this module: the stores, splits
and loaders in :mod:`pipeline.train.data`, clip orders in :mod:`pipeline.train.samplers`,
augmentation in :mod:`pipeline.train.augment`, the step and validation in
:mod:`pipeline.train.steps`, the run folder in :mod:`pipeline.train.checkpoints`.

The recipe is the official one. A training step: (OpenMIC) the band limits jittered per clip,
approximated by warping the cached log-mels → SpecAugment on each clip (its own masks) →
per-clip mixup with a partner drawn from the whole training split → (1 − λ)·BCE + λ·regulariser
→ Adam step with the gradient norm clipped. Each epoch ends with validation: the same objective
on the validation clips and their teacher embeddings (no augmentation), in batches of
``batch_size``, and mAP. The validation *total loss* drives the learning-rate plateau schedule
and early stopping, the validation *mAP* picks ``best.pt`` (:mod:`pipeline.train.schedule`). A
run ends at ``max_steps`` optimiser steps, ``max_epochs`` epochs or early stopping, whichever
comes first.

Determinism: the model is initialised from ``seed``; every epoch reseeds torch and the
augmentation generator from (seed, epoch) and the sampler orders clips (and draws mixup
partners) from (seed, epoch). ``last.pt`` holds everything else (weights, optimiser, step count,
history — the schedule is replayed from it), so a run killed at any moment and started again
ends with the metrics of an uninterrupted run.

Speed: the student's forward and backward run under autocast at ``precision`` (bf16 by default on
a capable GPU, see :mod:`pipeline.train.steps`) while weights, losses, metrics and checkpoints stay
float32; on CUDA its convolutions use the channels-last layout; batches come from splits held on
the device or are copied there ahead of each step (:mod:`pipeline.train.device_data`). None of
these changes which clips a step sees or in what order.

Several processes (``torchrun``, data-parallel): when ``WORLD_SIZE`` > 1 in the environment,
:func:`train` joins the process group (gloo on the CPU, nccl on CUDA with ``cuda:LOCAL_RANK``
per process) and wraps the student in ``DistributedDataParallel``. ``batch_size`` stays the
*global* batch: each of the ``W`` processes takes ``batch_size // W`` clips per step (a batch
size ``W`` does not divide is refused), and the averaged gradients make one step of the global
batch, so a config means the same with any number of processes and the run folder does not
depend on it. Each process reads whole store shards of its own
(:class:`pipeline.train.samplers.EvenShardSampler`), cut every epoch to the length of the
shortest rank's share so that every process takes the same number of steps. What is computed per
process, on its local batch of ``batch_size // W`` clips, is everything batch-relational: the
EAsT regulariser (distance correlation or cosine-distance difference between the clips of the
batch), BatchNorm statistics and the KD term; these see fewer clips than in a single process, so
the results are close to, not identical with, a one-process run. Mixup partners come from the
whole training split on every process, from a stream of each rank's own. Rank 0 alone validates
(the others wait for its figures, which drive the schedule and early stopping on every rank),
fits the KD probes (saved, then loaded by the others), writes checkpoints, metrics, TensorBoard
and the summary, and prints. On resume every process loads ``last.pt``; epochs are reseeded from
(seed, epoch, rank), so an interrupted multi-process run also ends as an uninterrupted one.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from tqdm.auto import tqdm

from pipeline.devices import resolve_device, resolve_precision
from pipeline.evaluate.metrics import label_frequency_map
from pipeline.fileio import write_json
from pipeline.students import count_parameters, create_student, on_device
from pipeline.train.checkpoints import (
    BEST,
    SUMMARY,
    changed_stores,
    inference_checkpoint,
    read_summary,
    resume,
    run_config,
    run_dir_for,
    save_checkpoint,
    save_epoch,
    tensorboard,
    write_run_files,
)
from pipeline.train.config import TrainConfig
from pipeline.train.data import make_loaders, training_data
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
from pipeline.train.probe import kd_probes
from pipeline.train.samplers import rank_seed
from pipeline.train.schedule import Review, review
from pipeline.train.steps import train_one_epoch, validate


@dataclass(frozen=True)
class TrainResult:
    """What :func:`train` returns.

    Attributes
    ----------
    run_dir : the run folder
    best_epoch : 1-based epoch of the best validation mAP (0: no epoch was validated)
    best_valid_map : its validation mAP (−∞ without one)
    epochs : epochs trained in all
    resumed_from : epochs done before this call (−1: the run had already finished)
    """

    run_dir: Path
    best_epoch: int
    best_valid_map: float
    epochs: int
    resumed_from: int


def train(cfg: TrainConfig, data_dir: str | os.PathLike, *, progress: bool = True) -> TrainResult:
    """Train (or resume, or just report) the run of ``cfg``; returns its best validation mAP.

    Started by ``torchrun`` with more than one process (``WORLD_SIZE`` > 1), every process
    calls this: it joins the process group (unless the caller already did), trains its share
    of each global batch of ``cfg.batch_size`` clips (see the module docstring) and leaves the
    group at the end, also on errors. Every process returns the same result.

    Parameters
    ----------
    cfg : TrainConfig
        The run.
    data_dir : str or os.PathLike
        The data folder (manifests, stores; the run folder goes under ``runs/``).
    progress : bool
        Show a progress bar per epoch (on rank 0, when writing to a terminal).

    Returns
    -------
    TrainResult

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

    # -- data, run folder ---------------------------------------------------------------------
    data = training_data(cfg, data_dir, say)
    train_set, valid_set = data.train_set, data.valid_set
    run_dir = run_dir_for(cfg, data_dir)
    if (done := read_summary(run_dir)) is not None:
        best_map = -math.inf if done["best_valid_map"] is None else done["best_valid_map"]
        changed = ", ".join(changed_stores(run_dir))
        note = f"; {changed} changed since: delete the folder to train it again" if changed else ""
        say(f"{run_dir}: already trained (best valid mAP {best_map:.4f}){note}")
        return TrainResult(run_dir, done["best_epoch"], best_map, done["epochs"], -1)
    config = run_config(cfg, run_dir, data)
    if main:
        write_run_files(run_dir, config, data)

    # -- model, optimiser, probes, loaders, resume ----------------------------------------------
    torch.manual_seed(cfg.seed)
    student = create_student(
        cfg.student,
        n_classes=len(data.manifest.classes),
        n_mels=train_set.n_mels,
        **cfg.student_options,
    )
    student = on_device(student, device)
    optimizer = torch.optim.Adam(student.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    precision = resolve_precision(cfg.precision, device)
    scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")
    probes = kd_probes(cfg, train_set, valid_set, run_dir, procs, device) if cfg.kd else []
    train_loader, epochs, valid_loader = make_loaders(cfg, train_set, valid_set, device, procs, say)
    state = resume(run_dir, student, optimizer, device)
    if "grad_scaler" in state:
        scaler.load_state_dict(state["grad_scaler"])
    if state["epoch"]:
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
        f"label-frequency valid mAP {chance:.3f}, on {device} at {precision}"
        + (f" × {procs.world_size} processes" if procs.parallel else "")
    )
    writer = tensorboard(run_dir, purge_step=resumed_from) if main else None

    # -- epochs ------------------------------------------------------------------------------
    decision, stopped = _review(cfg, state)
    while stopped is None:
        epoch = state["epoch"]
        started = time.perf_counter()
        torch.manual_seed(rank_seed(cfg.seed, epoch, procs.rank))
        generator = torch.Generator().manual_seed(rank_seed(cfg.seed, epoch, procs.rank))
        epochs.set_epoch(epoch)
        steps = len(train_loader)
        if cfg.max_steps is not None:
            steps = min(steps, cfg.max_steps - state["step"])
        lr = optimizer.param_groups[0]["lr"]
        with _progress_bar(cfg, epoch, steps, show=progress and main) as bar:
            train_logs = train_one_epoch(
                model,
                train_loader,
                optimizer,
                cfg,
                probes,
                generator,
                device,
                bar,
                scaler=scaler,
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
        if scaler.is_enabled():
            state["grad_scaler"] = scaler.state_dict()
        decision, stopped = _review(cfg, state)
        for group in optimizer.param_groups:
            group["lr"] = decision.lr
        if main:
            if decision.best_epoch == epoch + 1:
                checkpoint = inference_checkpoint(student, config, epoch + 1, valid)
                save_checkpoint(checkpoint, run_dir / BEST)
            save_epoch(run_dir, student, optimizer, state, writer, row)
        say(
            f"epoch {epoch + 1}: train loss {train_logs.get('total', float('nan')):.4f}, "
            f"valid loss {valid['loss']:.4f}, valid mAP {valid['map']:.4f}, "
            f"{row['clips_per_s']:.1f} clips/s"
        )
    if writer is not None:
        writer.close()

    # -- summary -------------------------------------------------------------------------------
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
        write_json(run_dir / SUMMARY, summary)
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


def _progress_bar(cfg: TrainConfig, epoch: int, steps: int, *, show: bool) -> tqdm:
    """The bar of an epoch of ``steps`` steps; it counts the clips of all processes."""
    return tqdm(
        total=steps * cfg.batch_size,
        unit="clip",
        desc=f"epoch {epoch + 1}" + (f"/{cfg.max_epochs}" if cfg.max_epochs else ""),
        disable=None if show else True,  # None: off when not writing to a terminal
        leave=False,
    )


def _quiet(*args: Any, **kwargs: Any) -> None:
    """``print`` for the processes other than rank 0."""
