"""``make probes``: teacher stores ranked by their linear probes' test mAP, with uncertainty.

The stores' probes (:mod:`pipeline.evaluate.probes`) are compared on the test clips every store
holds, with the machinery of the student comparisons (:mod:`pipeline.evaluate.stats`): each
store's mAP is the mean over seeds with a 95 % interval over seeds and a bootstrap of the test
clips, and each store is compared with the best one by a difference paired by seed and by
clip. A store whose difference interval covers 0 is *within noise* of the best: the test set
cannot tell them apart.

:func:`probes_stage` writes ``data/reports/<dataset>/probes.md`` (the section ``make report``
includes, :func:`probes_section`) and ``probes.csv``, and returns the table to print.
"""

from __future__ import annotations

import csv
import io
import math
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.evaluate.arms import BOOTSTRAP_SEED, DRAWS
from pipeline.evaluate.metrics import label_frequency_map, nanmean, roc_auc
from pipeline.evaluate.probes import (
    PROBE_MAX_STEPS,
    StoreProbe,
    available_stores,
    open_teacher_store,
    probe_seeds,
    probe_store,
)
from pipeline.evaluate.stats import (
    ArmScores,
    Estimate,
    arm_result,
    bootstrap_counts,
    paired_difference,
)
from pipeline.fileio import write_text
from pipeline.paths import read_manifest

PROBES_MD = "probes.md"
PROBES_CSV = "probes.csv"
# Fingerprint entries that are bookkeeping, not a choice a user makes: left out of the options.
_NOT_OPTIONS = frozenset(
    {"teacher", "sample_rate_hz", "dim", "output_version", "mel_version", "load_shift"}
    | {"load_scale", "code", "pipeline_version", "mel_code"}
)
CSV_COLUMNS = (
    "rank",
    "store",
    "teacher",
    "dim",
    "seeds",
    "map_mean",
    "map_sd",
    "map_low",
    "map_high",
    "diff_to_best",
    "diff_low",
    "diff_high",
    "vs_best",
    "roc_auc",
    "chance_map",
    "train_clips",
    "valid_clips",
    "test_clips",
    "compared_clips",
    "failed_clips",
    "fit_seconds",
)
_VERSION = re.compile(r"^\d+(\.\d+)+\S*$")


@dataclass(frozen=True)
class Row:
    """One store's line of the leaderboard.

    Attributes
    ----------
    probe : the store's probes
    map : test mAP over seeds and test clips (mean, sd over seeds, 95 % interval)
    to_best : this store's mAP minus the best store's, paired by seed and clip (None: the best)
    roc_auc : mean over seeds of the macro ROC-AUC
    """

    probe: StoreProbe
    map: Estimate
    to_best: Estimate | None
    roc_auc: float

    @property
    def verdict(self) -> str:
        """``best``, ``within noise`` (the difference's interval covers 0) or ``worse``."""
        if self.to_best is None:
            return "best"
        return "worse" if self.to_best.excludes_zero else "within noise"


@dataclass(frozen=True)
class Leaderboard:
    """Stores ranked by mean test mAP, and the test clips they were compared on.

    Attributes
    ----------
    dataset : dataset name
    rows : best first
    clips : number of test clips every store holds (the ones compared)
    chance_map : label-frequency mAP on those clips (what knowing nothing scores)
    draws : bootstrap resamples of the test clips
    """

    dataset: str
    rows: tuple[Row, ...]
    clips: int
    chance_map: float
    draws: int


def teacher_label(fingerprint: dict[str, Any]) -> str:
    """The teacher and the options that made a store, e.g. ``panns (layer=penultimate)``.

    Weights hashes, package versions and fixed properties are left out.

    Parameters
    ----------
    fingerprint : a teacher store's fingerprint

    Returns
    -------
    str
    """
    options = [
        f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
        for k, v in sorted(fingerprint.items())
        if k not in _NOT_OPTIONS
        and not k.endswith("sha256")
        and not (isinstance(v, str) and _VERSION.match(v))
    ]
    teacher = str(fingerprint.get("teacher", "?"))
    return f"{teacher} ({', '.join(options)})" if options else teacher


def rank_probes(dataset: str, probes: Sequence[StoreProbe], *, draws: int = DRAWS) -> Leaderboard:
    """Rank the stores by mean test mAP on the test clips they all hold.

    Parameters
    ----------
    dataset : dataset name
    probes : one per store, fitted with the same seeds
    draws : bootstrap resamples of the test clips

    Returns
    -------
    Leaderboard
    """
    shared = set(probes[0].clip_ids)
    for probe in probes[1:]:
        shared &= set(probe.clip_ids)
    if not shared:
        raise ValueError("the stores have no usable test clip in common")
    arms = [_arm(p, shared) for p in probes]
    counts = bootstrap_counts(len(shared), draws=draws, seed=BOOTSTRAP_SEED)
    maps = [arm_result(arm, counts).map for arm in arms]
    order = sorted(range(len(probes)), key=lambda i: _descending(maps[i].mean))
    best = arms[order[0]]
    rows = []
    for rank, i in enumerate(order):
        to_best = None if rank == 0 else paired_difference(arms[i], best, counts).map
        auc = [nanmean(roc_auc(s, arms[i].labels, arms[i].mask)) for s in arms[i].scores]
        rows.append(Row(probes[i], maps[i], to_best, float(np.mean(auc))))
    chance = label_frequency_map(best.labels, best.mask)
    return Leaderboard(dataset, tuple(rows), len(shared), chance, draws)


def _descending(value: float) -> float:
    """Sort key: larger first, NaN last."""
    return -value if math.isfinite(value) else math.inf


def _arm(probe: StoreProbe, clips: set[str]) -> ArmScores:
    """The probe's test predictions on ``clips`` only, in its own (manifest) order."""
    keep = np.flatnonzero([c in clips for c in probe.clip_ids])
    return ArmScores(
        seeds=probe.seeds,
        scores=probe.scores[:, keep],
        labels=probe.labels[keep],
        mask=probe.mask[keep].astype(bool),
    )


def _f(value: float, digits: int = 4) -> str:
    return "–" if value is None or not math.isfinite(value) else f"{value:.{digits}f}"


def _interval(e: Estimate) -> str:
    return f"[{_f(e.low)}, {_f(e.high)}]"


def leaderboard_markdown(board: Leaderboard) -> str:
    """The leaderboard as a markdown section (``## Teacher probes``), table and notes.

    Parameters
    ----------
    board : the ranked stores

    Returns
    -------
    str
    """
    seeds = board.rows[0].probe.seeds
    lines = [
        "| rank | store | teacher (options) | dim | test mAP ± sd | 95 % CI | Δ to best [95 % CI]"
        " | vs best | ROC-AUC | clips train/valid/test | failed | fit s (all seeds) |",
        "|---:|---|---|---:|---:|---|---|---|---:|---:|---:|---:|",
    ]
    for rank, row in enumerate(board.rows, 1):
        p, m, d = row.probe, row.map, row.to_best
        delta = "–" if d is None else f"{d.mean:+.4f} {_interval(d)}"
        clips = "/".join(str(p.clips[s]) for s in ("train", "valid", "test"))
        lines.append(
            f"| {rank} | {p.store} | {teacher_label(p.fingerprint)} | {p.dim} "
            f"| {_f(m.mean)} ± {_f(m.sd)} | {_interval(m)} | {delta} | {row.verdict} "
            f"| {_f(row.roc_auc)} | {clips} | {len(p.skipped)} | {p.fit_seconds:.1f} |"
        )
    notes = [
        f"Linear probes on each store's clip-mean embeddings, {len(seeds)} seed(s) "
        f"({', '.join(map(str, seeds))}), trained on the training split and selected on "
        f"validation; test mAP on the {board.clips} test clips every store holds. The 95 % "
        f"intervals combine the spread over seeds and a bootstrap of the test clips "
        f"({board.draws} resamples); Δ to best is paired by seed and clip, and *within noise* "
        "means its interval covers 0. Label-frequency (chance) mAP: "
        f"{_f(board.chance_map)}.",
    ]
    for row in board.rows:
        if row.probe.skipped:
            causes = sorted(set(row.probe.skipped.values()))
            shown = "; ".join(causes[:3]) + ("; …" if len(causes) > 3 else "")
            notes.append(
                f"{row.probe.store}: {len(row.probe.skipped)} clip(s) without frames left out "
                f"({shown})."
            )
    return "\n\n".join(["## Teacher probes", "\n".join(lines), *notes])


def leaderboard_csv(board: Leaderboard) -> str:
    """The leaderboard as CSV text, one row per store, best first.

    Parameters
    ----------
    board : the ranked stores

    Returns
    -------
    str
    """
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=CSV_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for rank, row in enumerate(board.rows, 1):
        p, m, d = row.probe, row.map, row.to_best
        writer.writerow(
            {
                "rank": rank,
                "store": p.store,
                "teacher": teacher_label(p.fingerprint),
                "dim": p.dim,
                "seeds": len(p.seeds),
                "map_mean": m.mean,
                "map_sd": m.sd,
                "map_low": m.low,
                "map_high": m.high,
                "diff_to_best": "" if d is None else d.mean,
                "diff_low": "" if d is None else d.low,
                "diff_high": "" if d is None else d.high,
                "vs_best": row.verdict,
                "roc_auc": row.roc_auc,
                "chance_map": board.chance_map,
                **{f"{s}_clips": p.clips[s] for s in ("train", "valid", "test")},
                "compared_clips": board.clips,
                "failed_clips": len(p.skipped),
                "fit_seconds": round(p.fit_seconds, 3),
            }
        )
    return out.getvalue()


def probe_leaderboard(
    data_dir: str | os.PathLike,
    dataset: str,
    stores: Sequence[str] = (),
    *,
    seeds: int = 3,
    draws: int = DRAWS,
    max_steps: int = PROBE_MAX_STEPS,
    say: Callable[[str], None] | None = None,
) -> Leaderboard:
    """Probe each store (cached fits reused) and rank them.

    Parameters
    ----------
    data_dir : the data folder
    dataset : dataset name
    stores : store names; empty: every complete teacher store of the dataset
    seeds : probes per store, at least 1 (seeds: the training seed and the next ones)
    draws : bootstrap resamples of the test clips
    max_steps : at most this many SGD steps per probe (the recipe's limit by default)
    say : where to report each fit (default: nowhere)

    Returns
    -------
    Leaderboard

    Raises
    ------
    FileNotFoundError
        For a dataset without manifest, a missing store (before any fit), or no store at all.
    pipeline.stores.StoreError
        For an incomplete store.
    """
    data_dir = Path(data_dir)
    read_manifest(data_dir, dataset)  # an unknown dataset is named before any store
    stores = list(dict.fromkeys(stores)) or available_stores(data_dir, dataset)
    if not stores:
        raise FileNotFoundError(
            f"no teacher store for dataset {dataset!r} in {data_dir / 'cache' / dataset}: "
            f"extract one first (`make extract DATASET={dataset} TEACHER=<teacher>`)"
        )
    for store in stores:  # every store checked before the first fit
        open_teacher_store(data_dir, dataset, store)
    seed_list = probe_seeds(seeds)
    probes = [
        probe_store(data_dir, dataset, s, seeds=seed_list, max_steps=max_steps, say=say)
        for s in stores
    ]
    return rank_probes(dataset, probes, draws=draws)


def probes_stage(
    data_dir: str | os.PathLike,
    dataset: str,
    stores: Sequence[str] = (),
    *,
    seeds: int = 3,
    max_steps: int = PROBE_MAX_STEPS,
    say: Callable[[str], None] | None = None,
) -> str:
    """``make probes``: the leaderboard written to ``probes.md`` and ``probes.csv``.

    Parameters
    ----------
    data_dir : the data folder; the files go to ``reports/<dataset>/``
    dataset, stores, seeds, max_steps, say : as :func:`probe_leaderboard`

    Returns
    -------
    str -- the markdown section and the paths written, to print
    """
    board = probe_leaderboard(data_dir, dataset, stores, seeds=seeds, max_steps=max_steps, say=say)
    out = Path(data_dir) / "reports" / dataset
    text = leaderboard_markdown(board)
    md = write_text(out / PROBES_MD, text + "\n")
    table = write_text(out / PROBES_CSV, leaderboard_csv(board))
    return f"{text}\n\nleaderboard: {md} and {table}"


def probes_section(report_dir: str | os.PathLike) -> str | None:
    """The ``## Teacher probes`` section of ``make report``, if ``make probes`` wrote one.

    Parameters
    ----------
    report_dir : the dataset's report folder, ``data/reports/<dataset>``

    Returns
    -------
    str or None -- the text of ``probes.md``
    """
    path = Path(report_dir) / PROBES_MD
    return path.read_text(encoding="utf-8").strip() if path.is_file() else None
