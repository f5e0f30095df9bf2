"""The run folder of a training run and what is written into it.

``data/runs/<dataset>/<student>-<teacher>-<hash>/`` (:func:`run_dir_for`) holds:

* ``config.json`` — the config as resolved (λ, time factors, classes, mel shape, recipe), and
  ``stores.json`` — the fingerprints of the stores read (:func:`write_run_files`);
* ``last.pt`` — weights, optimiser and loop state after the last epoch, the resume point
  (:func:`save_epoch`, :func:`resume`), with ``metrics.csv`` (one row per epoch) and the
  TensorBoard events under ``tb/`` (:func:`tensorboard`);
* ``best.pt`` — what prediction needs, of the epoch of the best validation mAP
  (:func:`inference_checkpoint`);
* ``probe-<teacher>.pt`` / ``.json`` — the KD linear probes
  (:func:`pipeline.train.probe.kd_probes`);
* ``train.json`` — the summary, written last: a run folder with it is finished.

Every file is written whole or not at all (:mod:`pipeline.fileio`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd
import torch

import pipeline
from pipeline.fileio import atomic_path, write_json, write_text
from pipeline.paths import runs_path
from pipeline.stores import StoreError, read_store
from pipeline.stores.status import content_version
from pipeline.students import Student
from pipeline.train.config import RECIPE, TrainConfig
from pipeline.train.data import TrainingData, store_paths

SUMMARY = "train.json"
LAST = "last.pt"
BEST = "best.pt"


def run_dir_for(cfg: TrainConfig, data_dir: Path) -> Path:
    """``data/runs/<dataset>/<student>-<teacher>-<hash>``; the hash covers the stores' identity.

    Parameters
    ----------
    cfg : TrainConfig
        The run's config.
    data_dir : Path
        The data folder; the stores the config reads must exist.

    Returns
    -------
    Path
        The run folder (not created here).
    """
    mel, teachers = store_paths(cfg, data_dir)
    prints = [read_store(p).fingerprint for p in (mel, *teachers)]
    return runs_path(data_dir, cfg.dataset) / cfg.run_name(json.dumps(prints, sort_keys=True))


def save_checkpoint(obj: Any, path: Path) -> None:
    """``torch.save`` of ``obj`` to ``path``, written whole or not at all.

    Parameters
    ----------
    obj : Any
        What to save (state dicts, plain containers).
    path : Path
        The file to (re)place.
    """
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def read_summary(run_dir: Path) -> dict[str, Any] | None:
    """The summary of a finished run, ``None`` while the run is not finished.

    Parameters
    ----------
    run_dir : Path
        The run folder.

    Returns
    -------
    dict or None
        The contents of ``train.json``.
    """
    path = run_dir / SUMMARY
    return json.loads(path.read_text()) if path.is_file() else None


def run_config(cfg: TrainConfig, run_dir: Path, data: TrainingData) -> dict[str, Any]:
    """The config as resolved, as ``config.json`` and ``best.pt`` record it.

    Parameters
    ----------
    cfg : TrainConfig
        The run's config.
    run_dir : Path
        The run folder (its name is recorded).
    data : TrainingData
        Classes, mel shape and the number of labelled training clips.

    Returns
    -------
    dict
        ``cfg``'s fields, plus the values resolved (``lam``, ``time_factors``, ``probe_lrs``
        from tables, ``precision`` for the device), the run name, classes, ``n_mels``,
        ``mel_frames``, the package version, the recipe and ``labelled_train_clips``.
    """
    return {
        **cfg.as_dict(),
        "lam": cfg.regulariser_weight,
        "time_factors": cfg.time_factors,
        "probe_lrs": cfg.probe_lrs,
        "precision": cfg.resolved_precision,
        "run": run_dir.name,
        "classes": list(data.manifest.classes),
        "n_mels": data.train_set.n_mels,
        "mel_frames": data.train_set.mel_frames,
        "pipeline_version": pipeline.__version__,
        "recipe": RECIPE,
        "labelled_train_clips": data.labelled,
    }


def write_run_files(run_dir: Path, config: dict[str, Any], data: TrainingData) -> None:
    """Create the run folder and write ``config.json`` and ``stores.json``.

    Parameters
    ----------
    run_dir : Path
        The run folder.
    config : dict
        :func:`run_config`'s result.
    data : TrainingData
        The stores (their fingerprints are recorded) and the skipped training clips.
    """
    run_dir.mkdir(parents=True, exist_ok=True)
    # json.dumps' ASCII escapes, as in the config.json of every run on disk.
    write_text(run_dir / "config.json", json.dumps(config, indent=2))
    stores = {}
    for path in (data.mel_path, *data.teacher_paths):
        store = read_store(path)
        stores[str(path)] = {
            "fingerprint": store.fingerprint,
            "content": content_version(store),
            "skipped": data.train_set.skipped,
        }
    write_json(run_dir / "stores.json", stores)


def changed_stores(run_dir: Path) -> list[str]:
    """The stores a finished run read whose content changed since (clips extracted again from
    new audio, failed clips fixed; :func:`pipeline.stores.status.content_version`).

    Their fingerprints are the same, so the run keeps its name and is not trained again on its
    own: the caller says so.

    Parameters
    ----------
    run_dir : Path
        The run folder, with the ``stores.json`` of :func:`write_run_files`.

    Returns
    -------
    list of str
        The changed stores' folder names; none for runs that recorded no content version, and
        for stores that are gone.
    """
    path = run_dir / "stores.json"
    recorded = json.loads(path.read_text()) if path.is_file() else {}
    changed = []
    for store, entry in recorded.items():
        try:
            now = content_version(read_store(Path(store)))
        except (StoreError, FileNotFoundError):
            continue
        if entry.get("content") not in (None, now):
            changed.append(Path(store).name)
    return changed


def fresh_state() -> dict[str, Any]:
    """The loop state of a run that has not trained an epoch yet.

    Returns
    -------
    dict
        ``epoch`` (epochs done), ``step`` (optimiser steps done), ``history`` (one row per
        epoch, as ``metrics.csv``), ``seconds`` (time spent in epochs).
    """
    return {"epoch": 0, "step": 0, "history": [], "seconds": 0.0}


def resume(
    run_dir: Path, student: Student, optimizer: torch.optim.Optimizer, device: torch.device
) -> dict[str, Any]:
    """Load ``last.pt`` into ``student`` and ``optimizer``, if there is one; return the state.

    Parameters
    ----------
    run_dir : Path
        The run folder.
    student : Student
        Loaded in place.
    optimizer : torch.optim.Optimizer
        Loaded in place.
    device : torch.device
        Where the loaded tensors go.

    Returns
    -------
    dict
        The loop state after the last epoch saved, or :func:`fresh_state`'s.
    """
    path = run_dir / LAST
    if not path.is_file():
        return fresh_state()
    checkpoint = torch.load(path, map_location=device, weights_only=True)
    student.load_state_dict(checkpoint["model"])
    optimizer.load_state_dict(checkpoint["optimizer"])
    return checkpoint["state"]


def save_epoch(
    run_dir: Path,
    student: Student,
    optimizer: torch.optim.Optimizer,
    state: dict[str, Any],
    writer: Any,
    row: dict[str, float],
) -> None:
    """After an epoch: ``last.pt`` (resume point), ``metrics.csv`` and the TensorBoard scalars.

    Parameters
    ----------
    run_dir : Path
        The run folder.
    student, optimizer :
        Their state dicts go into ``last.pt``.
    state : dict
        The loop state (see :func:`fresh_state`), ``row`` already in its history.
    writer : SummaryWriter
        :func:`tensorboard`'s writer.
    row : dict
        The epoch's figures; ``"epoch"`` is the 1-based epoch, the others become scalars
        (``train_bce`` → ``train/bce``).
    """
    save_checkpoint(
        {
            "model": student.state_dict(),
            "optimizer": optimizer.state_dict(),
            "state": state,
        },
        run_dir / LAST,
    )
    write_text(run_dir / "metrics.csv", pd.DataFrame(state["history"]).to_csv(index=False))
    for key, value in row.items():
        if key != "epoch":
            writer.add_scalar(key.replace("_", "/", 1), value, row["epoch"])
    writer.flush()


def inference_checkpoint(
    model: Student, config: dict[str, Any], epoch: int, valid: dict[str, float]
) -> dict[str, Any]:
    """What prediction needs: weights, the config (student, front end, classes), provenance.

    Parameters
    ----------
    model : Student
        The trained student.
    config : dict
        :func:`run_config`'s result.
    epoch : int
        The 1-based epoch of the weights.
    valid : dict
        That epoch's validation figures.

    Returns
    -------
    dict
        ``model`` (state dict), ``config``, ``epoch``, ``valid``: the contents of ``best.pt``.
    """
    return {"model": model.state_dict(), "config": config, "epoch": epoch, "valid": valid}


def tensorboard(run_dir: Path, purge_step: int) -> Any:
    """A TensorBoard writer; on resume, events logged after ``purge_step`` are dropped.

    Parameters
    ----------
    run_dir : Path
        The run folder; events go to its ``tb/``.
    purge_step : int
        Epochs done before this start (0 for a new run).

    Returns
    -------
    torch.utils.tensorboard.SummaryWriter
    """
    from torch.utils.tensorboard import SummaryWriter

    return SummaryWriter(str(run_dir / "tb"), purge_step=purge_step or None)
