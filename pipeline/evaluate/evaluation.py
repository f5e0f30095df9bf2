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

import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader

import pipeline.evaluate.scoring
import pipeline.train.probe
import pipeline.train.schedule
from pipeline.data.fractions import labelled_subset
from pipeline.data.manifest import Manifest
from pipeline.devices import resolve_device
from pipeline.evaluate.scoring import (
    FIXED_THRESHOLD,
    PREDICTIONS,
    save_predictions,
    score_report,
)
from pipeline.fileio import atomic_path, file_sha256, source_digest, write_json
from pipeline.paths import locate_store, manifest_path, mel_store_name, runs_path
from pipeline.stores import read_store
from pipeline.stores.status import content_version
from pipeline.students import create_student
from pipeline.train.config import RECIPE, TrainConfig, of_current_recipe
from pipeline.train.loader import ClipDataset, collate
from pipeline.train.presets import paper_probe_lr, probe_standardises
from pipeline.train.probe import fit_probe
from pipeline.train.steps import predict_logits


def _code_digest() -> str:
    """This module's code, the scoring's and the probe recipe's: a change evaluates again."""
    modules = (pipeline.evaluate.scoring, pipeline.train.probe, pipeline.train.schedule)
    return source_digest((sys.modules[__name__], *modules))


def _is_current(folder: Path, source: dict[str, Any]) -> bool:
    path = folder / "metrics.json"
    return (
        path.is_file()
        and (folder / PREDICTIONS).is_file()
        and json.loads(path.read_text()).get("source") == source
    )


def evaluate_run(
    run_dir: str | os.PathLike, data_dir: str | os.PathLike, *, device: str | None = None
) -> dict[str, Any] | None:
    """Evaluate a trained run's ``best.pt`` on the test split.

    Writes ``metrics.json`` and ``predictions.npz`` into the run folder.

    Parameters
    ----------
    run_dir : the run folder, holding ``best.pt``
    data_dir : the data folder with the dataset's manifest and mel store
    device : where the student runs (default: :func:`pipeline.devices.resolve_device`)

    Returns
    -------
    dict or None -- what ``metrics.json`` now holds (see the module doc); ``None`` when it was
    already up to date
    """
    run_dir, data_dir = Path(run_dir), Path(data_dir)
    checkpoint_path = run_dir / "best.pt"
    if not checkpoint_path.is_file():
        raise FileNotFoundError(f"{run_dir}: no best.pt (train the run first)")
    source = {"checkpoint_sha256": file_sha256(checkpoint_path), "code": _code_digest()}
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
    write_json(run_dir / "metrics.json", result)
    return result


def probe_folder(teacher: str, *, label_fraction: float = 1.0, seed: int = TrainConfig.seed) -> str:
    """Name of the folder of a teacher's linear probe.

    Parameters
    ----------
    teacher : teacher name
    label_fraction : fraction of the training clips whose labels the probe used
    seed : the probe's seed

    Returns
    -------
    str -- ``probe-<teacher>``, or ``probe-<teacher>-f<fraction>-s<seed>`` for other settings
    """
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
    validation like the KD probes; written to ``data/runs/<dataset>/<probe_folder(...)>/``
    (``probe.pt``, ``config.json``, ``metrics.json``, ``predictions.npz``).

    Parameters
    ----------
    data_dir : the data folder with the manifest, the teacher store and the mel store
    dataset : dataset name
    teacher : teacher name (its store's name)
    frontend : mel front end of the students this probe is compared with
    seed : seed of the probe and of the labelled subset
    label_fraction : fraction of the training clips whose labels are used, in (0, 1]

    Returns
    -------
    dict or None -- what ``metrics.json`` now holds; ``None`` when it was already up to date
    """
    data_dir = Path(data_dir)
    teacher_store = locate_store(data_dir, dataset, teacher)
    mel = locate_store(data_dir, dataset, mel_store_name(frontend))
    reader = read_store(teacher_store)
    source = {
        "teacher_fingerprint": reader.fingerprint,
        "store_content": content_version(reader),
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
    with atomic_path(folder / "probe.pt") as tmp:
        torch.save(probe.state_dict(), tmp)
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
    write_json(folder / "config.json", config)
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
    write_json(folder / "metrics.json", result)
    return result


def trained_runs(data_dir: str | os.PathLike, dataset: str | None = None) -> list[Path]:
    """Run folders whose training has finished (``train.json`` present), sorted.

    Parameters
    ----------
    data_dir : the data folder (runs are under ``runs/<dataset>/``)
    dataset : only this dataset's runs (default: every dataset's)

    Returns
    -------
    list[Path]
    """
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

    Parameters
    ----------
    data_dir : the data folder
    dataset : only this dataset's runs (default: every dataset's)
    device : where the students run (default: :func:`pipeline.devices.resolve_device`)
    probes : also fit and evaluate a linear probe per teacher, seed and label fraction the
        students used

    Returns
    -------
    list[str] -- one line per folder saying what happened
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
