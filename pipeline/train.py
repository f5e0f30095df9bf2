"""Stage two: train a student on cached mels, regularised toward cached teacher embeddings.

Read top to bottom: data → run folder → model and optimiser → (resume) → epochs of
train / validate / checkpoint / log → summary. Teachers never run here; their embeddings
stream from the stores next to the mels.

Determinism: the model is initialised from ``seed``; every epoch reseeds torch and the
augmentation generator from (seed, epoch) and the sampler orders clips from (seed, epoch).
``last.pt`` holds everything else (weights, optimiser, schedule, early-stopping state, history),
so a run killed at any moment and started again ends with the metrics of an uninterrupted run.
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

import pipeline
from pipeline.config import TrainConfig
from pipeline.loader import ClipDataset, ShardAwareSampler, collate, mixup, spec_augment
from pipeline.losses import east_loss, masked_bce
from pipeline.metrics import label_frequency_map, mean_average_precision
from pipeline.paths import locate_store, mel_store_name, read_manifest, runs_path
from pipeline.probe import LinearProbe, fit_probe
from pipeline.store import read_store
from pipeline.students import Student, count_parameters, create_student


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
    for k, teacher in enumerate(cfg.teachers):
        path = run_dir / f"probe-{teacher}.pt"
        if path.is_file():
            saved = torch.load(path, weights_only=True)
            probe = LinearProbe(saved["mean"], saved["std"], len(train_set.classes))
            probe.load_state_dict(saved)
        else:
            inputs = [
                np.stack([item["teachers"][k].mean(dim=0).numpy() for item in dataset])
                for dataset in (train_set, valid_set)
            ]
            probe, info = fit_probe(
                inputs[0],
                train_set.labels,
                train_set.mask,
                inputs[1],
                valid_set.labels,
                valid_set.mask,
                lr=cfg.probe_lr,
                max_epochs=cfg.probe_epochs,
                seed=cfg.seed,
            )
            _save_atomic(probe.state_dict(), path)
            _write_text_atomic(path.with_suffix(".json"), json.dumps(info, indent=2))
            print(f"linear probe on {teacher}: valid mAP {info['valid_map']:.3f}")
        probes.append(probe.eval().requires_grad_(False))
    return probes


def train_one_epoch(
    model: Student,
    loader: DataLoader,
    optimizer: torch.optim.Optimizer,
    cfg: TrainConfig,
    probes: list[LinearProbe],
    generator: torch.Generator,
    device: torch.device,
    bar: tqdm,
) -> dict[str, float]:
    """One pass over the training split; returns the mean of each logged loss part."""
    model.train()
    sums: dict[str, float] = {}
    steps = 0
    for batch in loader:
        if cfg.mixup_alpha > 0:
            batch = mixup(batch, alpha=cfg.mixup_alpha, generator=generator)
        mel = batch["mel"].to(device, non_blocking=True)
        if cfg.specaug_freq or cfg.specaug_time:
            mel = spec_augment(
                mel, freq_mask=cfg.specaug_freq, time_mask=cfg.specaug_time, generator=generator
            )
        labels = batch["labels"].to(device, non_blocking=True)
        mask = batch["mask"].to(device, non_blocking=True)
        teachers = [t.to(device, non_blocking=True) for t in batch["teachers"]]

        logits, features = model(mel)
        teacher_logits = None
        if probes:
            teacher_logits = torch.stack([p(t) for p, t in zip(probes, teachers, strict=True)])
            teacher_logits = teacher_logits.mean(dim=0)
        loss, logs = east_loss(
            logits,
            labels,
            mask,
            features,
            teachers,
            lam=cfg.regulariser_weight,
            regulariser=cfg.loss,
            teacher_weights=cfg.teacher_weights,
            align_mode=cfg.align,
            teacher_logits=teacher_logits,
            kd_weight=cfg.kd_weight,
            reg_weight=1.0 - cfg.kd_weight,
        )
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        optimizer.step()

        steps += 1
        for key, value in logs.items():
            sums[key] = sums.get(key, 0.0) + value
        bar.update(len(mel))
        rate = bar.format_dict["n"] / max(bar.format_dict["elapsed"], 1e-9)
        bar.set_postfix(loss=f"{sums['total'] / steps:.4f}", clips_s=f"{rate:.1f}")
    return {key: value / max(steps, 1) for key, value in sums.items()}


@torch.no_grad()
def predict_logits(model: Student, loader: DataLoader, device: torch.device) -> torch.Tensor:
    """Logits (N, C) on the CPU, in the loader's order."""
    model.eval()
    return torch.cat([model(batch["mel"].to(device))[0].float().cpu() for batch in loader])


def validate(
    model: Student, loader: DataLoader, dataset: ClipDataset, device: torch.device
) -> dict[str, float]:
    """Masked BCE (the quantity schedules and early stopping watch) and mAP on a split."""
    logits = predict_logits(model, loader, device)
    labels, mask = torch.as_tensor(dataset.labels), torch.as_tensor(dataset.mask)
    return {
        "loss": masked_bce(logits, labels, mask).item(),
        "map": mean_average_precision(torch.sigmoid(logits).numpy(), dataset.labels, dataset.mask),
    }


def _loaders(
    cfg: TrainConfig, train_set: ClipDataset, valid_set: ClipDataset, device: torch.device
) -> tuple[DataLoader, ShardAwareSampler, DataLoader]:
    sampler = ShardAwareSampler(train_set.shard_ids, window=cfg.shard_window, seed=cfg.seed)
    common = {
        "collate_fn": collate,
        "num_workers": cfg.workers,
        "persistent_workers": cfg.workers > 0,
        "pin_memory": device.type == "cuda",
    }
    # Whole batches only: BatchNorm and the batch-relational regularisers need N > 1.
    train_loader = DataLoader(
        train_set, batch_size=cfg.batch_size, sampler=sampler, drop_last=True, **common
    )
    valid_loader = DataLoader(valid_set, batch_size=2 * cfg.batch_size, shuffle=False, **common)
    return train_loader, sampler, valid_loader


def train(cfg: TrainConfig, data_dir: str | os.PathLike, *, progress: bool = True) -> TrainResult:
    """Train (or resume, or just report) the run of ``cfg``; returns its best validation mAP."""
    data_dir = Path(data_dir)
    device = resolve_device(cfg.device)
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
    train_set = ClipDataset(manifest, "train", mel_path, teacher_paths)
    valid_set = ClipDataset(manifest, "valid", mel_path, teacher_paths)
    for name, dataset in (("train", train_set), ("valid", valid_set)):
        for clip, cause in sorted(dataset.skipped.items()):
            print(f"skipping {name} clip {clip}: {cause}")

    # -- run folder --------------------------------------------------------------------------
    run_dir = run_dir_for(cfg, data_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    summary_path = run_dir / "train.json"
    if summary_path.is_file():
        summary = json.loads(summary_path.read_text())
        print(f"{run_dir}: already trained (best valid mAP {summary['best_valid_map']:.4f})")
        return TrainResult(
            run_dir, summary["best_epoch"], summary["best_valid_map"], summary["epochs"], -1
        )
    resolved = {
        **cfg.as_dict(),
        "lam": cfg.regulariser_weight,
        "run": run_dir.name,
        "classes": list(manifest.classes),
        "n_mels": train_set.n_mels,
        "mel_frames": train_set.mel_frames,
        "pipeline_version": pipeline.__version__,
    }
    _write_text_atomic(run_dir / "config.json", json.dumps(resolved, indent=2))
    stores = {
        str(p): {"fingerprint": read_store(p).fingerprint, "skipped": train_set.skipped}
        for p in (mel_path, *teacher_paths)
    }
    _write_text_atomic(run_dir / "stores.json", json.dumps(stores, indent=2, ensure_ascii=False))

    # -- model, optimiser, schedule ----------------------------------------------------------------
    torch.manual_seed(cfg.seed)
    model = create_student(
        cfg.student,
        n_classes=len(manifest.classes),
        n_mels=train_set.n_mels,
        **cfg.student_options,
    ).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
        optimizer, factor=cfg.plateau_factor, patience=cfg.plateau_patience
    )
    probes = (
        [p.to(device) for p in _fit_probes(cfg, train_set, valid_set, run_dir)] if cfg.kd else []
    )
    train_loader, sampler, valid_loader = _loaders(cfg, train_set, valid_set, device)

    state = {"epoch": 0, "best_map": -math.inf, "best_epoch": 0, "best_loss": math.inf}
    state |= {"bad_epochs": 0, "history": [], "seconds": 0.0}
    last_path = run_dir / "last.pt"
    if last_path.is_file():
        checkpoint = torch.load(last_path, map_location=device, weights_only=True)
        model.load_state_dict(checkpoint["model"])
        optimizer.load_state_dict(checkpoint["optimizer"])
        scheduler.load_state_dict(checkpoint["scheduler"])
        state = checkpoint["state"]
        print(f"{run_dir}: resuming after epoch {state['epoch']}")
    resumed_from = state["epoch"]

    n_params = count_parameters(model)
    chance = label_frequency_map(valid_set.labels, valid_set.mask)
    print(
        f"{run_dir.name}: {cfg.student} ({n_params:,} parameters), teacher {cfg.teacher}, "
        f"λ={cfg.regulariser_weight}, {len(train_set)} train / {len(valid_set)} valid clips, "
        f"label-frequency valid mAP {chance:.3f}, on {device}"
    )
    writer = _tensorboard(run_dir, purge_step=resumed_from)

    # -- epochs ------------------------------------------------------------------------------
    while state["epoch"] < cfg.max_epochs and state["bad_epochs"] < cfg.early_stop_patience:
        epoch = state["epoch"]
        started = time.perf_counter()
        torch.manual_seed(_epoch_seed(cfg.seed, epoch))
        generator = torch.Generator().manual_seed(_epoch_seed(cfg.seed, epoch))
        sampler.set_epoch(epoch)
        with tqdm(
            total=len(train_loader) * cfg.batch_size,
            unit="clip",
            desc=f"epoch {epoch + 1}/{cfg.max_epochs}",
            disable=None if progress else True,  # None: off when not writing to a terminal
            leave=False,
        ) as bar:
            train_logs = train_one_epoch(
                model, train_loader, optimizer, cfg, probes, generator, device, bar
            )
        valid = validate(model, valid_loader, valid_set, device)
        scheduler.step(valid["loss"])
        seconds = time.perf_counter() - started

        state["epoch"] = epoch + 1
        state["seconds"] += seconds
        if valid["loss"] < state["best_loss"]:
            state["best_loss"], state["bad_epochs"] = valid["loss"], 0
        else:
            state["bad_epochs"] += 1
        if valid["map"] > state["best_map"]:
            state["best_map"], state["best_epoch"] = valid["map"], epoch + 1
            _save_atomic(
                _inference_checkpoint(model, resolved, epoch + 1, valid), run_dir / "best.pt"
            )
        row = {
            "epoch": epoch + 1,
            **{f"train_{k}": float(v) for k, v in train_logs.items()},
            "valid_loss": valid["loss"],
            "valid_map": valid["map"],
            "lr": optimizer.param_groups[0]["lr"],
            "seconds": seconds,
            "clips_per_s": len(train_loader) * cfg.batch_size / seconds,
        }
        state["history"].append(row)
        _save_atomic(
            {
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "state": state,
            },
            last_path,
        )
        _write_text_atomic(
            run_dir / "metrics.csv", pd.DataFrame(state["history"]).to_csv(index=False)
        )
        for key, value in row.items():
            if key != "epoch":
                writer.add_scalar(key.replace("_", "/", 1), value, epoch + 1)
        writer.flush()
        print(
            f"epoch {epoch + 1}: train loss {train_logs.get('total', float('nan')):.4f}, "
            f"valid loss {valid['loss']:.4f}, valid mAP {valid['map']:.4f}, "
            f"{row['clips_per_s']:.1f} clips/s"
        )
    writer.close()

    summary = {
        "run": run_dir.name,
        "best_epoch": state["best_epoch"],
        "best_valid_map": state["best_map"],
        "epochs": state["epoch"],
        "stopped_early": state["epoch"] < cfg.max_epochs,
        "label_frequency_valid_map": chance,
        "parameters": n_params,
        "train_seconds": state["seconds"],
        "train_clips": len(train_set),
        "valid_clips": len(valid_set),
    }
    _write_text_atomic(summary_path, json.dumps(summary, indent=2))
    print(f"{run_dir}: best valid mAP {state['best_map']:.4f} at epoch {state['best_epoch']}")
    return TrainResult(
        run_dir, state["best_epoch"], state["best_map"], state["epoch"], resumed_from
    )


def _inference_checkpoint(
    model: Student, config: dict[str, Any], epoch: int, valid: dict[str, float]
) -> dict[str, Any]:
    """What prediction needs: weights, the config (student, front end, classes), provenance."""
    return {"model": model.state_dict(), "config": config, "epoch": epoch, "valid": valid}


def _tensorboard(run_dir: Path, purge_step: int):
    """A TensorBoard writer; on resume, events logged after ``purge_step`` are dropped."""
    from torch.utils.tensorboard import SummaryWriter

    return SummaryWriter(str(run_dir / "tb"), purge_step=purge_step or None)
