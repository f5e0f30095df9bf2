"""The results report on fake run folders: parsing, ordering, the table, figures, determinism."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd
import pytest
from matplotlib.image import imread

from pipeline.evaluate.report import collect_runs, comparison_table, write_report
from pipeline.train.config import RECIPE

CLASSES = ["accordion", "banjo", "bass", "cello", "clarinet"]
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _metrics(name: str, kind: str, classes: list[str], level: float) -> dict:
    ap = [round(min(1.0, level + 0.03 * (k % 4) - 0.05), 4) for k in range(len(classes))]
    ap[-1] = None  # a class without positives in the test split
    return {
        "run": name,
        "kind": kind,
        "split": "test",
        "clips": 108,
        "classes": classes,
        "summary": {
            "map": level,
            "roc_auc": level + 0.05,
            "f1_macro": level - 0.1,
            "f1_macro_at_0.4": level - 0.12,
            "label_frequency_map": 0.1812,
        },
        "per_class": {
            "ap": ap,
            "roc_auc": [0.9] * len(classes),
            "f1": [0.7] * len(classes),
            "f1_at_0.4": [0.6] * len(classes),
            "threshold": [0.35] * len(classes),
            "positives": [10] * (len(classes) - 1) + [0],
            "known": [108] * len(classes),
        },
    }


def make_student(
    runs: Path,
    name: str,
    *,
    teacher: str,
    lam: float,
    kd: bool = False,
    level: float | None,
    classes: list[str] = CLASSES,
    epochs: int = 6,
    seconds: float = 258.0,
) -> Path:
    """A student run folder as training (and, when ``level`` is given, evaluation) leave it."""
    folder = runs / name
    folder.mkdir(parents=True)
    config = {"dataset": "demo", "student": "cp_resnet", "teacher": teacher, "loss": "dc"}
    config |= {"recipe": RECIPE}
    config |= {"lam": lam, "kd": kd, "frontend": "mobile_fcn", "classes": classes, "run": name}
    (folder / "config.json").write_text(json.dumps(config))
    train = {"run": name, "best_epoch": epochs - 1, "best_valid_map": 0.8, "epochs": epochs}
    train |= {"stopped_early": False, "label_frequency_valid_map": 0.18, "parameters": 359410}
    train |= {"train_seconds": seconds, "train_clips": 504, "valid_clips": 108}
    (folder / "train.json").write_text(json.dumps(train))
    start = 0.3 + lam / 5 + (0.05 if kd else 0.0)
    rows = [
        {
            "epoch": e + 1,
            "train_total": 0.5 * math.exp(-e / 4) * (1 - lam) + 0.1 * lam,
            "train_bce": 0.5 * math.exp(-e / (4 + 2 * lam)),
            **({"train_dc": 0.1, "train_reg": 0.1} if teacher != "none" else {}),
            "valid_loss": 0.45 - 0.01 * e,
            "valid_map": start + 0.45 * (1 - math.exp(-e / (2 + epochs / 5))),
            "lr": 1e-3,
            "seconds": 9.0,
            "clips_per_s": 55.0,
        }
        for e in range(epochs)
    ]
    pd.DataFrame(rows).to_csv(folder / "metrics.csv", index=False)
    if level is not None:
        (folder / "metrics.json").write_text(json.dumps(_metrics(name, "student", classes, level)))
    return folder


def make_probe(runs: Path, teacher: str, level: float, classes: list[str] = CLASSES) -> Path:
    folder = runs / f"probe-{teacher}"
    folder.mkdir(parents=True)
    config = {"kind": "probe", "teacher": teacher, "parameters": 3770, "train_seconds": 4.2}
    config |= {"recipe": RECIPE}
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "metrics.json").write_text(json.dumps(_metrics(folder.name, "probe", classes, level)))
    return folder


def make_runs(runs: Path, classes: list[str] = CLASSES) -> Path:
    """Baseline, a teacher run, an unevaluated KD run, a probe and a junk folder."""
    make_student(runs, "cp_resnet-none-c1e6eaf1", teacher="none", lam=0.0, level=0.81,
                 classes=classes)  # fmt: skip
    make_student(runs, "cp_resnet-musicnn-7efcc709", teacher="musicnn", lam=0.9, level=0.8612,
                 classes=classes)  # fmt: skip
    make_student(runs, "cp_resnet-musicnn-kd-0badcafe", teacher="musicnn", lam=0.9, kd=True,
                 level=None, classes=classes)  # fmt: skip
    make_probe(runs, "musicnn", level=0.88, classes=classes)
    (runs / "junk").mkdir()
    (runs / "junk" / "notes.txt").write_text("not a run")
    return runs


@pytest.fixture
def runs_dir(tmp_path: Path) -> Path:
    return make_runs(tmp_path / "runs" / "demo")


def test_collect_runs_orders_and_parses(runs_dir: Path) -> None:
    runs = collect_runs(runs_dir)
    assert [r.name for r in runs] == [
        "probe-musicnn",
        "cp_resnet-none-c1e6eaf1",
        "cp_resnet-musicnn-7efcc709",
        "cp_resnet-musicnn-kd-0badcafe",
    ]
    probe, base, teacher, kd = runs
    assert probe.kind == "probe" and probe.teacher == "musicnn" and probe.parameters == 3770
    assert probe.lam is None and probe.best_epoch is None and probe.classes == CLASSES
    assert base.teacher == "none" and base.label == "none"
    assert teacher.lam == 0.9 and teacher.loss == "dc" and not teacher.kd
    assert teacher.parameters == 359410 and teacher.best_epoch == 5 and teacher.epochs == 6
    assert teacher.test["map"] == pytest.approx(0.8612) and teacher.per_class["ap"][-1] is None
    assert teacher.label == "musicnn λ=0.9" and kd.label == "musicnn KD"
    assert kd.kd and kd.test is None and kd.per_class is None and kd.classes == CLASSES
    assert teacher.path == runs_dir / "cp_resnet-musicnn-7efcc709"


def test_runs_of_an_earlier_recipe_are_left_out(runs_dir: Path) -> None:
    old = make_student(runs_dir, "cp_resnet-none-0ld0ld00", teacher="none", lam=0.0, level=0.9)
    config = json.loads((old / "config.json").read_text())
    del config["recipe"]  # written before the recipe was recorded
    (old / "config.json").write_text(json.dumps(config))
    names = [r.name for r in collect_runs(runs_dir)]
    assert "cp_resnet-none-0ld0ld00" not in names and "cp_resnet-none-c1e6eaf1" in names


def test_comparison_table(runs_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    table = comparison_table(collect_runs(runs_dir), out)
    lines = table.splitlines()
    rows = {line.split("](")[0].lstrip("| ["): line for line in lines if line.startswith("| [")}
    assert len(rows) == 4
    teacher = rows["cp_resnet-musicnn-7efcc709"]
    assert "[cp_resnet-musicnn-7efcc709](../runs/demo/cp_resnet-musicnn-7efcc709/)" in teacher
    cells = [c.strip() for c in teacher.strip("|").split("|")]
    assert cells[1:] == ["cp_resnet", "musicnn", "dc", "0.9", "no", "359,410",
                         "0.861", "0.911", "0.761", "0.741", "4.3 min"]  # fmt: skip
    unevaluated = rows["cp_resnet-musicnn-kd-0badcafe"]
    assert "not evaluated" in unevaluated
    assert [c.strip() for c in unevaluated.strip("|").split("|")][7:11] == ["–"] * 4
    assert "| linear probe on musicnn |" in rows["probe-musicnn"]
    assert "| 0.880 |" in rows["probe-musicnn"]
    assert "Label-frequency (chance) test mAP: 0.181." in table
    assert lines[0].count("|") == lines[1].count("|") == 13


def test_write_report(runs_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "report"
    report = write_report(runs_dir, out, title="Demo results")
    assert report == out / "report.md"
    text = report.read_text()
    assert text.startswith("# Demo results\n")
    assert "](curves.png)" in text and "](per_class_ap.png)" in text
    assert "Not evaluated on the test split: cp_resnet-musicnn-kd-0badcafe." in text
    for name in ("curves.png", "per_class_ap.png"):
        png = out / name
        assert png.read_bytes()[:8] == PNG_SIGNATURE
        image = imread(png)
        assert image.ndim == 3 and image.shape[0] > 0 and image.shape[1] > 0

    per_class = text.split("## Test AP per class")[1]
    header = next(line for line in per_class.splitlines() if line.startswith("| class |"))
    assert header == "| class | probe musicnn | none | musicnn λ=0.9 |"
    class_rows = [line for line in per_class.splitlines() if line.startswith("| ")][1:]
    assert [row.split(" | ")[0].lstrip("| ") for row in class_rows] == CLASSES
    assert class_rows[-1].endswith("| – | – | – |")


def test_report_is_reproducible(runs_dir: Path, tmp_path: Path) -> None:
    names = ("report.md", "curves.png", "per_class_ap.png")
    write_report(runs_dir, tmp_path / "a")
    first = [(tmp_path / "a" / n).read_bytes() for n in names]
    write_report(runs_dir, tmp_path / "a")
    assert [(tmp_path / "a" / n).read_bytes() for n in names] == first
    write_report(runs_dir, tmp_path / "b")  # a fresh folder at the same depth
    assert [(tmp_path / "b" / n).read_bytes() for n in names] == first
