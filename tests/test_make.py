"""Make reruns exactly the stages whose inputs changed (parameter stamps, real targets)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]


def _make(data: Path, *args: str) -> set[str]:
    """Run a make target on a small demo and return the pipeline stages it ran."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAKE")}
    for var in (
        "DATASET",
        "TEACHER",
        "STORE",
        "TEACHER_OPTS",
        "LAMBDA",
        "KD",
        "SETTINGS",
        "PRECISION",
    ):
        env.pop(var, None)
    result = subprocess.run(
        [
            "make",
            "-C",
            str(REPO),
            "--no-print-directory",
            f"DATA={data}",
            "DATASET=demo",
            "CLIPS=24",
            "TEACHER=musicnn",
            "SETTINGS=max_epochs=1 workers=0",
            *args,
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=900,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    stages = set()
    for line in result.stdout.splitlines():
        words = line.split()
        if "-m" in words and "pipeline" in words and "--data-dir" in words:
            stages.add(words[words.index("--data-dir") + 2])
    return stages


def test_make_reruns_only_what_changed(tmp_path: Path) -> None:
    data = tmp_path / "data"
    assert _make(data, "train") == {"data", "extract", "train"}
    assert _make(data, "train") == set(), "touching nothing reruns nothing"

    assert _make(data, "train", "LAMBDA=0.3") == {"train"}, "a training parameter: training only"
    assert _make(data, "train", "LAMBDA=0.3") == set()

    # Another teacher setting: that teacher's store is extracted again, then training.
    changed = _make(data, "train", "LAMBDA=0.3", "TEACHER_OPTS=layer=penultimate")
    assert changed == {"extract", "train"}

    # Evaluation follows training; a second call has nothing to do.
    assert _make(data, "eval", "LAMBDA=0.3", "TEACHER_OPTS=layer=penultimate") == {"eval"}
    assert _make(data, "eval", "LAMBDA=0.3", "TEACHER_OPTS=layer=penultimate") == set()


def test_make_eval_without_dataset_evaluates_every_dataset(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAKE") and k != "DATASET"}

    def planned(*args: str) -> list[str]:
        command = ["make", "-C", str(REPO), "--no-print-directory", "-n", f"DATA={tmp_path}"]
        result = subprocess.run(
            [*command, *args], capture_output=True, text=True, env=env, timeout=120
        )
        assert result.returncode == 0, result.stdout + result.stderr
        lines = [line for line in result.stdout.splitlines() if "--data-dir" in line]
        return [line.split("--data-dir", 1)[1].split()[1:] for line in lines]

    assert planned("eval") == [["eval"]]
    assert planned("eval", "DATASET=mine") == [["eval", "mine"]]
    assert planned("report", "DATASET=mine") == [["eval", "mine"], ["report", "mine"]]
