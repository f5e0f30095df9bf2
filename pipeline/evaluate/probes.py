"""Linear probes of teacher stores, to pick a teacher before any student is trained.

For each named store under ``data/cache/<dataset>/`` (a teacher's, or one made with another
layer option such as ``panns-penultimate``) the paper's linear probe
(:func:`pipeline.train.probe.fit_probe`, learning rate and input standardisation chosen by
store name as for the KD probes) is fitted on the training split with several seeds, selected on
validation, and scored on the test split. Only the manifest and the teacher stores are read: no
mel store, no teacher model, no student.

A clip takes part when the store holds it with at least one frame; the others are left out and
listed with the cause the store recorded (as :class:`pipeline.train.loader.ClipDataset` does).

Each (store, seed) fit is kept in ``data/reports/<dataset>/probes/<store>/seed-<seed>/``
(``metrics.json`` and the test ``predictions.npz``), keyed by the store's fingerprint, its
frame counts, the manifest and this code: probing again with unchanged stores fits nothing,
and more seeds fit only the new ones. The ranking with its uncertainty is in
:mod:`pipeline.evaluate.probes_table`.
"""

from __future__ import annotations

import inspect
import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

import pipeline.evaluate.metrics
import pipeline.train.loader
import pipeline.train.probe
import pipeline.train.schedule
from pipeline.data.manifest import Manifest
from pipeline.evaluate.scoring import load_predictions, save_predictions, score_report
from pipeline.fileio import file_sha256, source_digest, write_json
from pipeline.paths import locate_store, manifest_path, mel_store_name, read_manifest
from pipeline.stores import COMPLETE_MARKER, ClipStoreReader, read_store
from pipeline.stores.status import content_version
from pipeline.train.config import TrainConfig
from pipeline.train.loader import mean_embeddings
from pipeline.train.presets import paper_probe_lr, probe_standardises
from pipeline.train.probe import fit_probe

SPLITS = ("train", "valid", "test")
# The probe recipe's step limit (:func:`pipeline.train.probe.fit_probe`).
PROBE_MAX_STEPS = int(inspect.signature(fit_probe).parameters["max_steps"].default)


@dataclass(frozen=True)
class StoreProbe:
    """The probes of one store: test predictions of every seed, and what they were made of.

    Attributes
    ----------
    store : store name
    fingerprint : the store's fingerprint (teacher and its options)
    dim : embedding dimensions D
    seeds : the probes' seeds, one per row of ``scores``
    clip_ids : (N,) the test clips scored, in manifest order
    scores : (S, N, C) float32 test probabilities, one matrix per seed
    labels : (N, C) test labels in {0, 1}
    mask : (N, C) bool, true where the label is known
    clips : usable clips per split (``train``, ``valid``, ``test``)
    skipped : clip ID → cause, for the manifest's clips the store holds no frame of
    fit_seconds : seconds the fits took, summed over seeds (when they were made)
    fitted : seeds fitted by this call (the others came from the cache)
    """

    store: str
    fingerprint: dict[str, Any]
    dim: int
    seeds: tuple[int, ...]
    clip_ids: np.ndarray
    scores: np.ndarray
    labels: np.ndarray
    mask: np.ndarray
    clips: dict[str, int]
    skipped: dict[str, str]
    fit_seconds: float
    fitted: tuple[int, ...]


def probes_path(data_dir: str | os.PathLike, dataset: str) -> Path:
    """The folder of a dataset's cached probe fits, ``<data_dir>/reports/<dataset>/probes``.

    Parameters
    ----------
    data_dir : the data folder
    dataset : dataset name

    Returns
    -------
    Path
    """
    return Path(data_dir) / "reports" / dataset / "probes"


def available_stores(data_dir: str | os.PathLike, dataset: str) -> list[str]:
    """Names of the dataset's complete teacher stores (Zarr or HDF5), sorted; no mel stores.

    Parameters
    ----------
    data_dir : the data folder
    dataset : dataset name

    Returns
    -------
    list[str]
    """
    cache = Path(data_dir) / "cache" / dataset
    names = {p.parent.parent.stem for p in cache.glob(f"*.zarr/{COMPLETE_MARKER}")}
    names |= {p.stem for p in cache.glob("*.h5")}
    return sorted(n for n in names if not n.startswith(mel_store_name("")))


def open_teacher_store(data_dir: str | os.PathLike, dataset: str, name: str) -> ClipStoreReader:
    """A complete teacher store of the dataset, or an error that says how to make it.

    Parameters
    ----------
    data_dir : the data folder
    dataset : dataset name
    name : store name (``musicnn``, ``panns-penultimate``, …)

    Returns
    -------
    ClipStoreReader

    Raises
    ------
    ValueError
        For a mel store, which holds no teacher embeddings.
    FileNotFoundError
        When there is no such store.
    pipeline.stores.StoreError
        When the store is incomplete.
    """
    if name.startswith(mel_store_name("")):
        raise ValueError(f"{name}: a mel store holds spectrograms, not teacher embeddings")
    path = locate_store(Path(data_dir), dataset, name)
    if not path.exists():
        raise FileNotFoundError(
            f"no store {name!r} for dataset {dataset!r} at {path}: extract it first, "
            f"`make extract DATASET={dataset} TEACHER={name}` (another layer option: "
            f"`make extract DATASET={dataset} TEACHER=<teacher> STORE={name} "
            "TEACHER_OPTS=layer=<layer>`)"
        )
    return read_store(path)


def usable_clips(store: ClipStoreReader, clip_ids: Sequence[str]) -> tuple[list[int], dict]:
    """Which of ``clip_ids`` the store holds with at least one frame.

    Parameters
    ----------
    store : a complete store
    clip_ids : clips in manifest order

    Returns
    -------
    keep : list[int] -- positions in ``clip_ids`` of the usable clips
    skipped : dict[str, str] -- clip ID → cause for the others (the store's recorded failure,
        ``no frames stored``, or ``not in <store>``)
    """
    failures = store.failures()
    keep, skipped = [], {}
    for i, clip in enumerate(clip_ids):
        try:
            row = store.row(clip)
        except KeyError:
            skipped[clip] = f"not in {Path(store.path).name}"
            continue
        if store.n_frames[row] <= 0:
            skipped[clip] = failures.get(clip, "no frames stored")
        else:
            keep.append(i)
    return keep, skipped


def _code_digest() -> str:
    """This module's code and the probe recipe's: a change fits the probes again."""
    modules = (pipeline.train.probe, pipeline.train.schedule, pipeline.train.loader)
    return source_digest((sys.modules[__name__], pipeline.evaluate.metrics, *modules))


def _split_data(
    manifest: Manifest, store: ClipStoreReader
) -> tuple[dict[str, tuple], dict[str, str]]:
    """Per split (clip IDs, (N, D) clip means, labels, mask) of the usable clips, and the rest."""
    data, skipped = {}, {}
    for split in SPLITS:
        part = manifest.split(split)
        keep, left_out = usable_clips(store, part.clip_ids)
        skipped.update(left_out)
        if not keep:
            raise ValueError(
                f"{Path(store.path).name}: no usable clip in split {split!r} "
                f"({len(part)} clips in the manifest, {len(left_out)} without frames)"
            )
        ids = [part.clip_ids[i] for i in keep]
        data[split] = (ids, mean_embeddings(store, ids), part.labels()[keep], part.mask()[keep])
    return data, skipped


def _fit_one(
    data: dict[str, tuple], *, dataset: str, store: str, seed: int, max_steps: int
) -> tuple[dict[str, Any], np.ndarray]:
    """Fit one probe; its metrics (``summary``, ``fit``, ``fit_seconds``) and test scores."""
    (_, x, y, m), (_, vx, vy, vm) = data["train"], data["valid"]
    started = time.perf_counter()
    probe, info = fit_probe(
        x,
        y,
        m,
        vx,
        vy,
        vm,
        lr=paper_probe_lr(dataset, store),
        standardise=probe_standardises(store),
        seed=seed,
        max_steps=max_steps,
    )
    seconds = time.perf_counter() - started
    with torch.no_grad():
        scores = {
            s: torch.sigmoid(probe(torch.as_tensor(data[s][1]))).numpy() for s in ("valid", "test")
        }
    summary, _ = score_report((scores["valid"], vy, vm), (scores["test"], *data["test"][2:]))
    return {"summary": summary, "fit": info, "fit_seconds": seconds}, scores["test"]


def probe_store(
    data_dir: str | os.PathLike,
    dataset: str,
    store: str,
    *,
    seeds: Sequence[int],
    max_steps: int = PROBE_MAX_STEPS,
    say: Callable[[str], None] | None = None,
) -> StoreProbe:
    """Linear probes of one store, one per seed, fitted where the cache lacks them.

    Parameters
    ----------
    data_dir : the data folder with the manifest and the store
    dataset : dataset name
    store : store name under ``data/cache/<dataset>/``
    seeds : the probes' seeds
    max_steps : at most this many SGD steps per probe (the recipe's limit by default)
    say : where to report each fit (default: nowhere)

    Returns
    -------
    StoreProbe
    """
    if not seeds:
        raise ValueError("no seed to fit a probe with")
    data_dir = Path(data_dir)
    reader = open_teacher_store(data_dir, dataset, store)
    manifest = read_manifest(data_dir, dataset)
    base = {
        "store_fingerprint": reader.fingerprint,
        "store_content": content_version(reader),
        "manifest_sha256": file_sha256(manifest_path(data_dir, dataset)),
        "code": _code_digest(),
    }
    folder = probes_path(data_dir, dataset) / store
    data: dict[str, tuple] | None = None
    skipped: dict[str, str] = {}
    rows, seconds, fitted = [], 0.0, []
    for seed in seeds:
        seed_dir = folder / f"seed-{seed}"
        source = {**base, "seed": int(seed), "max_steps": int(max_steps)}
        metrics = _cached(seed_dir, source)
        if metrics is None:
            if data is None:
                data, skipped = _split_data(manifest, reader)
            metrics, scores = _fit_one(
                data, dataset=dataset, store=store, seed=int(seed), max_steps=max_steps
            )
            metrics.update(
                store=store,
                seed=int(seed),
                clips={s: len(data[s][0]) for s in SPLITS},
                skipped=skipped,
                source=source,
            )
            seed_dir.mkdir(parents=True, exist_ok=True)
            save_predictions(seed_dir, data["test"][0], scores, *data["test"][2:])
            write_json(seed_dir / "metrics.json", metrics)
            fitted.append(int(seed))
            if say:
                say(f"{store} seed {seed}: test mAP {metrics['summary']['map']:.4f}")
        rows.append(load_predictions(seed_dir))
        seconds += metrics["fit_seconds"]
    first = rows[0]
    return StoreProbe(
        store=store,
        fingerprint=reader.fingerprint,
        dim=reader.dim,
        seeds=tuple(int(s) for s in seeds),
        clip_ids=first["clip_ids"],
        scores=np.stack([r["scores"] for r in rows]),
        labels=first["labels"],
        mask=first["mask"],
        clips=metrics["clips"],
        skipped=metrics["skipped"],
        fit_seconds=seconds,
        fitted=tuple(fitted),
    )


def _cached(folder: Path, source: dict[str, Any]) -> dict[str, Any] | None:
    """The fit's ``metrics.json`` if it was made from ``source``, else None."""
    path = folder / "metrics.json"
    if not (path.is_file() and (folder / "predictions.npz").is_file()):
        return None
    metrics = json.loads(path.read_text())
    return metrics if metrics.get("source") == json.loads(json.dumps(source)) else None


def probe_seeds(n: int) -> list[int]:
    """The seeds of ``n`` probes: the training seed and the next ones (as comparisons use).

    Parameters
    ----------
    n : number of seeds, at least 1

    Returns
    -------
    list[int]
    """
    if n < 1:
        raise ValueError(f"seeds must be at least 1, got {n}")
    return [TrainConfig.seed + i for i in range(n)]
