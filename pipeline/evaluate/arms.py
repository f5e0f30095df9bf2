"""Runs grouped into arms, arms compared with their uncertainty.

An *arm* is a set of evaluated runs whose configurations differ only in the seed: the student
without a teacher, EAsT with a teacher at some λ, EAsT-KD, a teacher's linear probe. Arms that
share everything but their teacher settings form a *context* (a label fraction, a student, a
front end, ...), and within a context each arm is compared with the arm without a teacher,
seed by seed and clip by clip (:mod:`pipeline.evaluate.stats`).

``compare_runs(data/runs/<dataset>)`` reads ``config.json`` and ``predictions.npz`` (written by
evaluation) of every run folder and returns one :class:`Context` per context.
"""

from __future__ import annotations

import json
import warnings
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.evaluate.scoring import PREDICTIONS, load_predictions
from pipeline.evaluate.stats import (
    ArmResult,
    ArmScores,
    arm_result,
    bootstrap_counts,
    paired_difference,
)
from pipeline.train.config import of_current_recipe

# Bootstrap resamples of the test clips, and their seed (the same resamples for every arm).
DRAWS = 1000
BOOTSTRAP_SEED = 2023

# Config entries that are not part of what an arm is: the seed, and bookkeeping.
NOT_ARM = frozenset(
    {
        "seed",
        "run",
        "workers",
        "device",
        "cache_on_device",
        "pipeline_version",
        "labelled_train_clips",
        "recipe",
    }
)
# Config entries that make one arm of a context differ from another: the teacher settings.
TEACHER_FIELDS = frozenset(
    {
        "teacher",
        "lam",
        "kd",
        "kd_weight",
        "loss",
        "align",
        "teacher_weights",
        "time_factors",
        "probe_lr",
        "probe_lrs",
        "probe_max_steps",
        "kind",
        "parameters",
        "train_seconds",
    }
    | {"probe_valid_map", "probe_steps", "probe_best_step", "probe_stopped_early"}
)


@dataclass
class Arm:
    """Runs of one configuration, by seed."""

    label: str
    kind: str  # "baseline" | "teacher" | "probe"
    teacher: str
    lam: float | None
    kd: bool
    label_fraction: float
    context: dict[str, Any]
    folders: dict[int, Path] = field(default_factory=dict)

    @property
    def seeds(self) -> tuple[int, ...]:
        """The seeds of the arm's runs, ascending."""
        return tuple(sorted(self.folders))

    def scores(self) -> ArmScores:
        """Test predictions of every seed, on the same clips (checked).

        Returns
        -------
        ArmScores -- scores (S, N, C) in the order of :attr:`seeds`, labels and mask (N, C)

        Raises
        ------
        ValueError
            When two seeds were tested on different clips.
        """
        loaded = [load_predictions(self.folders[s]) for s in self.seeds]
        first = loaded[0]
        for seed, other in zip(self.seeds[1:], loaded[1:], strict=True):
            if not np.array_equal(first["clip_ids"], other["clip_ids"]):
                raise ValueError(f"{self.label}: seed {seed} was tested on other clips")
        return ArmScores(
            self.seeds, np.stack([p["scores"] for p in loaded]), first["labels"], first["mask"]
        )


@dataclass
class Row:
    """One arm of a context with its mAP estimate and, except for the baseline, its difference
    to the baseline."""

    arm: Arm
    result: ArmResult
    difference: ArmResult | None


@dataclass
class Context:
    """Arms that differ only in their teacher settings, compared with the baseline arm."""

    settings: dict[str, Any]
    rows: list[Row]
    classes: list[str]
    clips: int
    note: str = ""

    @property
    def label_fraction(self) -> float:
        """Fraction of the training clips whose labels the runs used."""
        return float(self.settings.get("label_fraction", 1.0))


def _student_arm(config: dict[str, Any]) -> tuple[str, Arm]:
    # Runs from before the precision setting were float32 runs.
    config = {"precision": "fp32", **config}
    teacher = config.get("teacher", "none")
    baseline = teacher in ("", "none")
    kd = bool(config.get("kd", False))
    lam = None if baseline else float(config["lam"])
    loss = " (cosine)" if config.get("loss") == "cosine" else ""
    method = "EAsT-KD" if kd else "EAsT"
    label = "no teacher" if baseline else f"{method} {teacher}{loss} λ={lam:g}"
    context = {k: v for k, v in config.items() if k not in NOT_ARM | TEACHER_FIELDS}
    arm = Arm(
        label=label,
        kind="baseline" if baseline else "teacher",
        teacher=teacher,
        lam=lam,
        kd=kd,
        label_fraction=float(context["label_fraction"]),
        context=context,
    )
    key = json.dumps({k: v for k, v in config.items() if k not in NOT_ARM}, sort_keys=True)
    return key, arm


def _probe_arm(config: dict[str, Any]) -> tuple[str, Arm]:
    teacher = config["teacher"]
    fraction = float(config.get("label_fraction", 1.0))
    arm = Arm(
        label=f"linear probe {teacher}",
        kind="probe",
        teacher=teacher,
        lam=None,
        kd=False,
        label_fraction=fraction,
        context={"label_fraction": fraction, "frontend": config.get("frontend")},
    )
    return json.dumps(["probe", teacher, fraction, config.get("frontend")]), arm


def collect_arms(runs_dir: str | Path) -> list[Arm]:
    """Every evaluated run folder of the current recipe, grouped into arms.

    Two runs of one arm with the same seed (trained on stores extracted at different times)
    keep the one evaluated last, with a warning.

    Parameters
    ----------
    runs_dir : a dataset's run folder, ``data/runs/<dataset>``

    Returns
    -------
    list[Arm] -- in the order of their first folder's name
    """
    arms: dict[str, Arm] = {}
    for folder in sorted(Path(runs_dir).iterdir()):
        config_path = folder / "config.json"
        if not (config_path.is_file() and (folder / PREDICTIONS).is_file()):
            continue
        config = {"label_fraction": 1.0, **json.loads(config_path.read_text())}
        if not of_current_recipe(config):
            continue
        probe = config.get("kind") == "probe"
        key, arm = _probe_arm(config) if probe else _student_arm(config)
        arm = arms.setdefault(key, arm)
        seed = int(config.get("seed", 0))
        if seed in arm.folders:
            older, newer = sorted(
                (arm.folders[seed], folder), key=lambda f: (f / PREDICTIONS).stat().st_mtime
            )
            warnings.warn(
                f"{arm.label}: seed {seed} in {older.name} and {newer.name}; using {newer.name}",
                stacklevel=2,
            )
            folder = newer
        arm.folders[seed] = folder
    return list(arms.values())


def _order(arm: Arm) -> tuple:
    rank = {"baseline": 0, "teacher": 1, "probe": 2}[arm.kind]
    return (rank, arm.teacher, arm.kd, arm.lam or 0.0, arm.label)


def compare_runs(runs_dir: str | Path, *, draws: int = DRAWS) -> list[Context]:
    """Arms of ``runs_dir`` grouped into contexts, each arm estimated and compared with the
    context's baseline; contexts sorted by label fraction.

    Probes join every context of their label fraction and front end. A context without a
    baseline arm gets no differences (``Context.note`` says so).

    Parameters
    ----------
    runs_dir : a dataset's run folder, ``data/runs/<dataset>``
    draws : bootstrap resamples of the test clips

    Returns
    -------
    list[Context]
    """
    arms = collect_arms(runs_dir)
    students: dict[str, list[Arm]] = defaultdict(list)
    for arm in arms:
        if arm.kind != "probe":
            students[json.dumps(arm.context, sort_keys=True, default=str)].append(arm)
    contexts = []
    for members in students.values():
        settings = members[0].context
        probes = [
            a
            for a in arms
            if a.kind == "probe"
            and a.label_fraction == float(settings["label_fraction"])
            and a.context["frontend"] == settings.get("frontend")
        ]
        contexts.append(_compare(settings, sorted(members + probes, key=_order), draws))
    return sorted(contexts, key=lambda c: (c.label_fraction, json.dumps(c.settings, default=str)))


def _compare(settings: dict[str, Any], arms: list[Arm], draws: int) -> Context:
    scores = {id(a): a.scores() for a in arms}
    first = next(iter(scores.values()))
    counts = bootstrap_counts(first.labels.shape[0], draws=draws, seed=BOOTSTRAP_SEED)
    baseline = next((a for a in arms if a.kind == "baseline"), None)
    rows, notes = [], []
    for arm in arms:
        mine = scores[id(arm)]
        if mine.labels.shape != first.labels.shape or not np.array_equal(mine.mask, first.mask):
            notes.append(f"{arm.label} left out: tested on other clips than the other arms")
            continue
        difference = None
        if baseline is not None and arm is not baseline:
            try:
                difference = paired_difference(mine, scores[id(baseline)], counts)
            except ValueError as err:
                notes.append(f"{arm.label}: no difference to the baseline ({err})")
        rows.append(Row(arm, arm_result(mine, counts), difference))
    if baseline is None:
        notes.append("no run without a teacher in this context: no differences to show")
    classes = settings.get("classes") or []
    return Context(settings, rows, list(classes), first.labels.shape[0], "; ".join(notes))


def context_title(context: Context, contexts: list[Context]) -> str:
    """What sets this context apart from the others.

    Parameters
    ----------
    context : one of ``contexts``
    contexts : every context shown together

    Returns
    -------
    str -- the settings that differ between contexts, with this context's values
    (``label fraction 0.25``), or ``all runs``
    """
    keys = sorted({k for c in contexts for k in c.settings} - {"classes"})
    differing = [
        k for k in keys if len({json.dumps(c.settings.get(k), default=str) for c in contexts}) > 1
    ]
    if not differing:
        return "all runs"
    parts = []
    for k in differing:
        value = context.settings.get(k)
        name = k.replace("_", " ")
        parts.append(f"{name} {value:g}" if isinstance(value, float) else f"{name} {value}")
    return ", ".join(parts)
