"""Evaluation on the test split: trained students and the teachers' linear-probe baselines.

Each evaluated folder gets ``metrics.json``::

    {"run", "kind": "student" | "probe", "split": "test", "clips", "classes",
     "summary": {"map", "roc_auc", "f1_macro", "f1_macro_at_0.4", "label_frequency_map"},
     "per_class": {"ap", "roc_auc", "f1", "f1_at_0.4", "threshold", "positives", "known"},
     "source": {...}}

Per-class F1 uses a threshold chosen on the validation split (the one maximising that class's
validation F1) and, as in the official code, the fixed threshold 0.4. ``source`` identifies
what was evaluated (checkpoint hash, store fingerprint, this module's code); evaluating again
with the same source does nothing.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

import pipeline.train.probe
import pipeline.train.schedule
from pipeline.data.fractions import labelled_subset
from pipeline.data.manifest import Manifest
from pipeline.evaluate.metrics import (
    average_precision,
    best_f1_thresholds,
    f1_scores,
    label_frequency_map,
    nanmean,
    roc_auc,
)
from pipeline.paths import locate_store, manifest_path, mel_store_name, runs_path
from pipeline.stores.zarr_store import read_store
from pipeline.students import create_student
from pipeline.train.config import (
    RECIPE,
    TrainConfig,
    of_current_recipe,
    paper_probe_lr,
    probe_standardises,
)
from pipeline.train.loader import ClipDataset, collate
from pipeline.train.loop import predict_logits, resolve_device
from pipeline.train.probe import fit_probe

FIXED_THRESHOLD = 0.4
PREDICTIONS = "predictions.npz"


def _code_digest() -> str:
    """This module's code and the probe recipe's: a change to either evaluates again."""
    digest = hashlib.sha256()
    for module in (sys.modules[__name__], pipeline.train.probe, pipeline.train.schedule):
        digest.update(inspect.getsource(module).encode())
    return digest.hexdigest()[:16]


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _write_json_atomic(path: Path, obj: Any) -> None:
    tmp = path.with_name(path.name + ".partial")
    tmp.write_text(json.dumps(obj, indent=2, ensure_ascii=False))
    os.replace(tmp, path)


def _finite_or_none(values: np.ndarray) -> list[float | None]:
    return [float(v) if np.isfinite(v) else None for v in np.asarray(values, dtype=float)]


def score_report(
    valid: tuple[np.ndarray, np.ndarray, np.ndarray],
    test: tuple[np.ndarray, np.ndarray, np.ndarray],
) -> tuple[dict[str, float], dict[str, list]]:
    """Summary and per-class metrics from (scores, labels, mask) of validation and test."""
    scores, labels, mask = test
    thresholds = best_f1_thresholds(*valid)
    ap = average_precision(scores, labels, mask)
    auc = roc_auc(scores, labels, mask)
    f1 = f1_scores(scores, labels, mask, thresholds)
    f1_fixed = f1_scores(scores, labels, mask, FIXED_THRESHOLD)
    summary = {
        "map": nanmean(ap),
        "roc_auc": nanmean(auc),
        "f1_macro": nanmean(f1),
        f"f1_macro_at_{FIXED_THRESHOLD}": nanmean(f1_fixed),
        "label_frequency_map": label_frequency_map(labels, mask),
    }
    per_class = {
        "ap": _finite_or_none(ap),
        "roc_auc": _finite_or_none(auc),
        "f1": _finite_or_none(f1),
        f"f1_at_{FIXED_THRESHOLD}": _finite_or_none(f1_fixed),
        "threshold": [float(t) for t in thresholds],
        "positives": [int(v) for v in ((labels > 0.5) & mask).sum(axis=0)],
        "known": [int(v) for v in mask.sum(axis=0)],
    }
    return summary, per_class


def _is_current(folder: Path, source: dict[str, Any]) -> bool:
    path = folder / "metrics.json"
    return (
        path.is_file()
        and (folder / PREDICTIONS).is_file()
        and json.loads(path.read_text()).get("source") == source
    )


def save_predictions(
    folder: Path, clip_ids: list[str], scores: np.ndarray, labels: np.ndarray, mask: np.ndarray
) -> None:
    """Keep the test predictions next to ``metrics.json``: what comparisons resample.

    ``predictions.npz`` holds ``clip_ids`` (N,), ``scores`` (N, C) float32 probabilities,
    ``labels`` (N, C) and ``mask`` (N, C) bool, exactly as the metrics were computed from.
    """
    tmp = folder / (PREDICTIONS + ".partial")
    with open(tmp, "wb") as f:
        np.savez_compressed(
            f,
            clip_ids=np.asarray(clip_ids, dtype=str),
            scores=np.asarray(scores, dtype=np.float32),
            labels=np.asarray(labels, dtype=np.float32),
            mask=np.asarray(mask, dtype=bool),
        )
    os.replace(tmp, folder / PREDICTIONS)


def load_predictions(folder: str | os.PathLike) -> dict[str, np.ndarray]:
    """What :func:`save_predictions` wrote: clip_ids, scores, labels, mask."""
    with np.load(Path(folder) / PREDICTIONS) as data:
        return {k: data[k] for k in ("clip_ids", "scores", "labels", "mask")}


def evaluate_run(
    run_dir: str | os.PathLike, data_dir: str | os.PathLike, *, device: str | None = None
) -> dict[str, Any] | None:
    """Evaluate a trained run's ``best.pt`` on the test split; ``None`` if already up to date."""
    run_dir, data_dir = Path(run_dir), Path(data_dir)
    checkpoint_path = run_dir / "best.pt"
    if not checkpoint_path.is_file():
        raise FileNotFoundError(f"{run_dir}: no best.pt (train the run first)")
    source = {"checkpoint_sha256": _file_sha256(checkpoint_path), "code": _code_digest()}
    if _is_current(run_dir, source):
        return None
    torch_device = resolve_device(device)
    checkpoint = torch.load(checkpoint_path, map_location=torch_device, weights_only=True)
    config = checkpoint["config"]
    mel = locate_store(data_dir, config["dataset"], mel_store_name(config["frontend"]))
    mel_store = read_store(mel)
    config.setdefault("n_mels", mel_store.dim)  # runs trained before these were recorded
    config.setdefault("mel_frames", mel_store.max_frames)
    model = create_student(
        config["student"],
        n_classes=len(config["classes"]),
        n_mels=config["n_mels"],
        **config["student_options"],
    ).to(torch_device)
    model.load_state_dict(checkpoint["model"])
    manifest = Manifest.read(manifest_path(data_dir, config["dataset"]))

    splits = {}
    for split in ("valid", "test"):
        dataset = ClipDataset(manifest, split, mel, mel_frames=config["mel_frames"])
        loader = DataLoader(dataset, batch_size=32, collate_fn=collate)
        scores = torch.sigmoid(predict_logits(model, loader, torch_device)).numpy()
        splits[split] = (scores, dataset.labels, dataset.mask)
    test_ids = list(dataset.clip_ids)
    summary, per_class = score_report(splits["valid"], splits["test"])
    save_predictions(run_dir, test_ids, *splits["test"])
    result = {
        "run": run_dir.name,
        "kind": "student",
        "split": "test",
        "clips": len(splits["test"][0]),
        "classes": list(config["classes"]),
        "summary": summary,
        "per_class": per_class,
        "source": source,
    }
    _write_json_atomic(run_dir / "metrics.json", result)
    return result


def probe_folder(teacher: str, *, label_fraction: float = 1.0, seed: int = TrainConfig.seed) -> str:
    """``probe-<teacher>``, or ``probe-<teacher>-f<fraction>-s<seed>`` for other settings."""
    if label_fraction == 1.0 and seed == TrainConfig.seed:
        return f"probe-{teacher}"
    return f"probe-{teacher}-f{label_fraction:g}-s{seed}"


def evaluate_probe(
    data_dir: str | os.PathLike,
    dataset: str,
    teacher: str,
    *,
    frontend: str,
    seed: int = TrainConfig.seed,
    label_fraction: float = 1.0,
) -> dict[str, Any] | None:
    """The teacher's reference line: a linear probe on its cached embeddings, on the test split.

    Trained on the training split (its labelled part at ``label_fraction < 1``, the subset a
    student of the same seed gets, :func:`pipeline.data.fractions.labelled_subset`) and selected on
    validation like the KD probes; written to ``data/runs/<dataset>/<probe_folder(...)>/``.
    ``None`` if already up to date.
    """
    data_dir = Path(data_dir)
    teacher_store = locate_store(data_dir, dataset, teacher)
    mel = locate_store(data_dir, dataset, mel_store_name(frontend))
    source = {
        "teacher_fingerprint": read_store(teacher_store).fingerprint,
        "seed": seed,
        "code": _code_digest(),
    }
    if label_fraction != 1.0:
        source["label_fraction"] = label_fraction
    folder = runs_path(data_dir, dataset) / probe_folder(
        teacher, label_fraction=label_fraction, seed=seed
    )
    if _is_current(folder, source):
        return None
    folder.mkdir(parents=True, exist_ok=True)
    manifest = Manifest.read(manifest_path(data_dir, dataset))
    sets = {s: ClipDataset(manifest, s, mel, [teacher_store]) for s in ("train", "valid", "test")}
    inputs = {s: d.mean_embeddings(0) for s, d in sets.items()}
    train_mask = sets["train"].mask
    if label_fraction < 1.0:
        keep = labelled_subset(sets["train"].labels, train_mask, fraction=label_fraction, seed=seed)
        train_mask = train_mask & keep[:, None]
    started = time.perf_counter()
    probe, info = fit_probe(
        inputs["train"],
        sets["train"].labels,
        train_mask,
        inputs["valid"],
        sets["valid"].labels,
        sets["valid"].mask,
        lr=paper_probe_lr(dataset, teacher),
        standardise=probe_standardises(teacher),
        seed=seed,
    )
    seconds = time.perf_counter() - started
    with torch.no_grad():
        scores = {s: torch.sigmoid(probe(torch.as_tensor(x))).numpy() for s, x in inputs.items()}
    summary, per_class = score_report(
        (scores["valid"], sets["valid"].labels, sets["valid"].mask),
        (scores["test"], sets["test"].labels, sets["test"].mask),
    )
    torch.save(probe.state_dict(), folder / "probe.pt")
    config = {
        "kind": "probe",
        "recipe": RECIPE,
        "teacher": teacher,
        "seed": seed,
        "label_fraction": label_fraction,
        "frontend": frontend,
        "parameters": sum(p.numel() for p in probe.linear.parameters()),
        "train_seconds": seconds,
        **{f"probe_{k}": v for k, v in info.items()},
    }
    _write_json_atomic(folder / "config.json", config)
    result = {
        "run": folder.name,
        "kind": "probe",
        "split": "test",
        "clips": len(scores["test"]),
        "classes": list(manifest.classes),
        "summary": summary,
        "per_class": per_class,
        "source": source,
    }
    test = sets["test"]
    save_predictions(folder, list(test.clip_ids), scores["test"], test.labels, test.mask)
    _write_json_atomic(folder / "metrics.json", result)
    return result


def trained_runs(data_dir: str | os.PathLike, dataset: str | None = None) -> list[Path]:
    """Run folders whose training has finished (``train.json`` present), sorted."""
    root = Path(data_dir) / "runs"
    pattern = f"{dataset}/*/train.json" if dataset else "*/*/train.json"
    return sorted(p.parent for p in root.glob(pattern))


def evaluate_all(
    data_dir: str | os.PathLike,
    dataset: str | None = None,
    *,
    device: str | None = None,
    probes: bool = True,
) -> list[str]:
    """Evaluate every finished run without up-to-date metrics, and each teacher's probe.

    Returns one line per folder saying what happened.
    """
    lines = []
    teachers: set[tuple[str, str, str, int, float]] = set()
    for run_dir in trained_runs(data_dir, dataset):
        config = json.loads((run_dir / "config.json").read_text())
        if not of_current_recipe(config):
            lines.append(
                f"{run_dir}: left out, trained by recipe {config.get('recipe', 1)} "
                f"(now {RECIPE}); retrain it or delete the folder"
            )
            continue
        if not (run_dir / "best.pt").is_file():
            lines.append(f"{run_dir}: left out, no validated epoch (no best.pt)")
            continue
        result = evaluate_run(run_dir, data_dir, device=device)
        setting = (config["frontend"], config["seed"], config.get("label_fraction", 1.0))
        teachers |= {(config["dataset"], t, *setting) for t in _teachers(config)}
        lines.append(_line(run_dir, result))
    if probes:
        # A probe per teacher and per (seed, label fraction) a student of that teacher used.
        for name, teacher, frontend, seed, fraction in sorted(teachers):
            result = evaluate_probe(
                data_dir, name, teacher, frontend=frontend, seed=seed, label_fraction=fraction
            )
            folder = probe_folder(teacher, label_fraction=fraction, seed=seed)
            lines.append(_line(runs_path(Path(data_dir), name) / folder, result))
    return lines


def _teachers(config: dict[str, Any]) -> list[str]:
    teacher = config.get("teacher", "none")
    return [] if teacher in ("", "none") else teacher.split("+")


def _line(folder: Path, result: dict[str, Any] | None) -> str:
    if result is None:
        return f"{folder}: metrics up to date"
    s = result["summary"]
    return (
        f"{folder}: test mAP {s['map']:.4f}, ROC-AUC {s['roc_auc']:.4f}, "
        f"F1 {s['f1_macro']:.4f} (@{FIXED_THRESHOLD}: {s[f'f1_macro_at_{FIXED_THRESHOLD}']:.4f}) "
        f"on {result['clips']} clips"
    )
