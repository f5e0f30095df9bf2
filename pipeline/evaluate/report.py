"""A results report for the runs of one dataset: a markdown table and two figures.

``write_report(data/runs/<dataset>, out_dir)`` reads every run folder (students from
:mod:`pipeline.train.loop`, test metrics from evaluation, ``probe-<teacher>`` linear probes) and
writes ``report.md``, ``curves.png`` (validation mAP and training BCE per epoch) and
``per_class_ap.png`` (test AP per class and run); each run keeps its colour (by position in
the run list) in both figures. Nothing in the output depends on the date or on the order
folders are listed in, so the same runs always give the same files.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pandas as pd
from matplotlib.figure import Figure

from pipeline.evaluate.arms import compare_runs
from pipeline.evaluate.comparison_report import write_comparison
from pipeline.evaluate.figures import COLOURS, save_figure
from pipeline.evaluate.leaderboard import probes_section
from pipeline.fileio import write_text
from pipeline.train.config import of_current_recipe

DASH = "–"
HEADER = (
    "run | student | teacher | loss | λ | KD | params | test mAP | ROC-AUC "
    "| F1 (threshold tuned on validation) | F1 @ 0.4 | train time"
)


@dataclass(frozen=True)
class RunSummary:
    """What the report needs from one run folder; ``test`` is None for an unevaluated run."""

    name: str
    kind: str
    student: str
    teacher: str
    loss: str | None
    lam: float | None
    kd: bool
    parameters: int | None
    train_seconds: float | None
    best_epoch: int | None
    epochs: int | None
    test: dict[str, Any] | None
    per_class: dict[str, list[Any]] | None
    classes: list[str]
    path: Path

    @property
    def is_probe(self) -> bool:
        """Whether this is a teacher's linear probe."""
        return self.kind == "probe"

    @property
    def is_baseline(self) -> bool:
        """Whether this is a student trained without a teacher."""
        return not self.is_probe and self.teacher in ("", "none")

    @property
    def label(self) -> str:
        """Short legend label: ``none``, ``musicnn λ=0.9``, ``musicnn KD``, ``probe musicnn``."""
        if self.is_probe:
            return f"probe {self.teacher}"
        if self.is_baseline:
            return "none"
        loss = " cos" if self.loss == "cosine" else ""
        return f"{self.teacher}{loss} KD" if self.kd else f"{self.teacher}{loss} λ={self.lam:g}"


def _read_json(path: Path) -> dict[str, Any] | None:
    return json.loads(path.read_text()) if path.is_file() else None


def read_run(folder: Path) -> RunSummary:
    """Parse one run folder.

    Parameters
    ----------
    folder : a run or probe folder with ``config.json`` (``train.json`` and ``metrics.json``
        are read when present)

    Returns
    -------
    RunSummary
    """
    config = json.loads((folder / "config.json").read_text())
    train = _read_json(folder / "train.json") or {}
    metrics = _read_json(folder / "metrics.json")
    kind = config.get("kind", "student")
    probe = kind == "probe"
    return RunSummary(
        name=folder.name,
        kind=kind,
        student="linear probe" if probe else config.get("student", "?"),
        teacher=config.get("teacher", "none"),
        loss=None if probe else config.get("loss"),
        lam=None if probe else config.get("lam"),
        kd=bool(config.get("kd", False)),
        parameters=train.get("parameters", config.get("parameters")),
        train_seconds=train.get("train_seconds", config.get("train_seconds")),
        best_epoch=train.get("best_epoch"),
        epochs=train.get("epochs"),
        test=metrics["summary"] if metrics else None,
        per_class=metrics["per_class"] if metrics else None,
        classes=list((metrics or config).get("classes", [])),
        path=folder,
    )


def collect_runs(runs_dir: Path) -> list[RunSummary]:
    """Every run under ``runs_dir`` of the current recipe (older ones are left out).

    Parameters
    ----------
    runs_dir : a dataset's run folder, ``data/runs/<dataset>``

    Returns
    -------
    list[RunSummary] -- probes, then the baseline, then by teacher, KD, name
    """
    runs = [
        read_run(d)
        for d in Path(runs_dir).iterdir()
        if (d / "config.json").is_file()
        and of_current_recipe(json.loads((d / "config.json").read_text()))
    ]
    return sorted(runs, key=lambda r: (_group(r), r.teacher, r.kd, r.name))


def _group(run: RunSummary) -> int:
    return 0 if run.is_probe else 1 if run.is_baseline else 2


def _labels(runs: list[RunSummary]) -> list[str]:
    """Legend labels, with the run name's hash added where two would read the same."""
    labels = [r.label for r in runs]
    return [
        f"{lab} ({r.name.rsplit('-', 1)[-1]})" if labels.count(lab) > 1 else lab
        for lab, r in zip(labels, runs, strict=True)
    ]


def _num(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return DASH
    return f"{value:.3f}"


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return DASH
    if seconds < 60:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.1f} min" if seconds < 7200 else f"{seconds / 3600:.1f} h"


def _link(run: RunSummary, base: Path) -> str:
    target = Path(os.path.relpath(run.path, base)).as_posix()
    return f"[{run.name}]({quote(target)}/)"


def comparison_table(runs: list[RunSummary], base: Path | None = None) -> str:
    """Markdown table of test figures, one row per run, and the label-frequency mAP.

    Parameters
    ----------
    runs : from :func:`collect_runs`
    base : folder the links to run folders are relative to (default: the working folder)

    Returns
    -------
    str -- markdown
    """
    base = Path(base) if base is not None else Path.cwd()
    lines = [f"| {HEADER} |", "|" + "---|" * 3 + ":-:|" * 3 + "--:|" * 6]
    for r in runs:
        test = r.test or {}
        row = [
            _link(r, base) + ("" if r.test else " (not evaluated)"),
            f"linear probe on {r.teacher}" if r.is_probe else r.student,
            r.teacher,
            DASH if r.is_probe or r.is_baseline else (r.loss or DASH),
            DASH if r.is_probe or r.is_baseline or r.lam is None else f"{r.lam:g}",
            DASH if r.is_probe else ("yes" if r.kd else "no"),
            DASH if r.parameters is None else f"{r.parameters:,}",
            *(_num(test.get(k)) for k in ("map", "roc_auc", "f1_macro", "f1_macro_at_0.4")),
            _duration(r.train_seconds),
        ]
        lines.append("| " + " | ".join(row) + " |")
    chance = sorted({_num(r.test.get("label_frequency_map")) for r in runs if r.test} - {DASH})
    lines += ["", f"Label-frequency (chance) test mAP: {', '.join(chance) or DASH}."]
    return "\n".join(lines)


def per_class_table(runs: list[RunSummary]) -> str:
    """Markdown table of test AP: one row per class, one column per evaluated run.

    Parameters
    ----------
    runs : from :func:`collect_runs`

    Returns
    -------
    str -- markdown, or a line saying no run was evaluated
    """
    evaluated = [r for r in runs if r.per_class]
    if not evaluated:
        return "No evaluated runs."
    classes = evaluated[0].classes
    lines = [
        "| class | " + " | ".join(_labels(evaluated)) + " |",
        "|---|" + "--:|" * len(evaluated),
    ]
    for c in classes:
        cells = [_num(_class_ap(r, c)) for r in evaluated]
        lines.append(f"| {c} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _class_ap(run: RunSummary, cls: str) -> float | None:
    if not run.per_class or cls not in run.classes:
        return None
    value = run.per_class["ap"][run.classes.index(cls)]
    return None if value is None or math.isnan(value) else float(value)


def plot_curves(runs: list[RunSummary], path: Path) -> None:
    """Validation mAP and training BCE per epoch, one line per student run with a history.

    Parameters
    ----------
    runs : from :func:`collect_runs`
    path : the PNG file to write
    """
    fig = Figure(figsize=(11, 4.6), layout="constrained")
    ax_map, ax_loss = fig.subplots(1, 2)
    for i, (run, label) in enumerate(zip(runs, _labels(runs), strict=True)):
        csv = run.path / "metrics.csv"
        if run.is_probe or not csv.is_file():
            continue
        history = pd.read_csv(csv)
        loss = "train_bce" if "train_bce" in history else "train_total"
        colour = COLOURS[i % len(COLOURS)]
        ax_map.plot(history["epoch"], history["valid_map"], color=colour, label=label)
        ax_loss.plot(history["epoch"], history[loss], color=colour)
        best = history[history["epoch"] == run.best_epoch]
        ax_map.plot(best["epoch"], best["valid_map"], "o", color=colour, markersize=5)
    ax_map.set(title="Validation mAP (dot: best epoch)", xlabel="epoch", ylabel="mAP")
    ax_loss.set(
        title="Training BCE (classification part of the loss)", xlabel="epoch", ylabel="BCE"
    )
    for ax in (ax_map, ax_loss):
        ax.grid(alpha=0.3)
    handles, labels = ax_map.get_legend_handles_labels()
    if handles:
        ncol = len(handles) if len(handles) <= 5 else math.ceil(len(handles) / 2)
        fig.legend(handles, labels, loc="outside lower center", ncol=ncol)
    save_figure(fig, path)


def plot_per_class_ap(runs: list[RunSummary], path: Path) -> None:
    """Grouped horizontal bars of test AP: one group per class, one bar per evaluated run.

    Parameters
    ----------
    runs : from :func:`collect_runs`
    path : the PNG file to write
    """
    indexed = [(i, r, lab) for i, (r, lab) in enumerate(zip(runs, _labels(runs), strict=True))]
    evaluated = [item for item in indexed if item[1].per_class]
    classes = evaluated[0][1].classes if evaluated else []
    n = max(len(evaluated), 1)
    height = 1.6 + max(len(classes), 1) * (0.085 * n + 0.15)
    fig = Figure(figsize=(8, height), layout="constrained")
    ax = fig.subplots()
    bar = 0.8 / n
    undefined = {
        c
        for c, name in enumerate(classes)
        if all(_class_ap(r, name) is None for _, r, _ in evaluated)
    }
    for k, (i, run, label) in enumerate(evaluated):
        values = [_class_ap(run, c) for c in classes]
        ys = [c + (k - (n - 1) / 2) * bar for c in range(len(classes))]
        style = {"hatch": "//" if run.is_probe else None, "edgecolor": "white", "linewidth": 0.3}
        widths = [0.0 if v is None else v for v in values]
        ax.barh(ys, widths, height=bar, color=COLOURS[i % len(COLOURS)], label=label, **style)
        for c, (y, value) in enumerate(zip(ys, values, strict=True)):
            if value is None and c not in undefined:
                ax.text(0.005, y, "n/a", fontsize=6, va="center", color="0.4")
    for c in sorted(undefined):
        ax.text(0.01, c, "no AP in any run (no positives?)", fontsize=8, va="center", color="0.4")
    ax.set_yticks(range(len(classes)), classes)
    ax.set_ylim(len(classes) - 0.5, -0.5)
    ax.set(xlim=(0, 1.01), xlabel="test average precision", title="Test AP per class")
    ax.grid(axis="x", alpha=0.3)
    if evaluated:
        fig.legend(loc="outside upper center", ncol=min(n, 3))
    save_figure(fig, path)


HOW_TO_READ = """\
**How to read this.** Each row is one run on the test split. *test mAP* is the mean over \
classes of average precision (ranking quality, threshold-free); the label-frequency mAP is what a \
model that only knows class frequencies scores, so it is the floor to beat. *ROC-AUC* is also \
threshold-free. *F1 (threshold tuned on validation)* uses per-class thresholds chosen on the \
validation split; *F1 @ 0.4* uses one fixed threshold of 0.4. Linear-probe rows show how well \
each teacher's embeddings do on their own; the `none` row is the student without a teacher, so \
the effect of a teacher is the difference between its rows and that one. The training curves \
plot the BCE part of the loss, which is comparable across runs whatever the regulariser."""


def write_report(runs_dir: Path, out_dir: Path, *, title: str | None = None) -> Path:
    """Write ``report.md``, ``curves.png`` and ``per_class_ap.png`` into ``out_dir``, and the
    comparison of arms over seeds (:mod:`pipeline.evaluate.comparison_report`) where runs have test
    predictions, and the teacher probes' leaderboard where ``make probes`` wrote one
    (:mod:`pipeline.evaluate.leaderboard`).

    Parameters
    ----------
    runs_dir : a dataset's run folder, ``data/runs/<dataset>``
    out_dir : the report folder, created if missing
    title : the report's heading (default: ``Results: <dataset>``)

    Returns
    -------
    Path -- the written ``report.md``
    """
    runs_dir, out_dir = Path(runs_dir), Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    runs = collect_runs(runs_dir)
    plot_curves(runs, out_dir / "curves.png")
    plot_per_class_ap(runs, out_dir / "per_class_ap.png")
    missing = [r.name for r in runs if not r.test]
    comparison = write_comparison(compare_runs(runs_dir), out_dir)
    probes = probes_section(out_dir)  # ``make probes``' leaderboard, if it was made
    parts = [
        f"# {title or f'Results: {runs_dir.name}'}",
        *([comparison] if comparison else []),
        *([probes] if probes else []),
        "## Every run",
        comparison_table(runs, out_dir),
        *([f"Not evaluated on the test split: {', '.join(missing)}."] if missing else []),
        HOW_TO_READ,
        "## Training curves",
        "![Validation mAP and training BCE per epoch](curves.png)",
        "## Test AP per class",
        "![Test AP per class and run](per_class_ap.png)",
        per_class_table(runs),
    ]
    return write_text(out_dir / "report.md", "\n\n".join(parts) + "\n")
