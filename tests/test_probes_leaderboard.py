"""Teacher probes leaderboard: stores ranked by linear-probe test mAP, from the stores only."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import average_precision_score

from pipeline.cli import main
from pipeline.data.manifest import make_manifest
from pipeline.evaluate.leaderboard import probe_leaderboard, probes_stage, teacher_label
from pipeline.evaluate.probes import probes_path
from pipeline.evaluate.report import write_report
from pipeline.evaluate.scoring import load_predictions
from pipeline.paths import manifest_path, store_path
from pipeline.stamps import stamps_for
from pipeline.stores import open_store

REPO = Path(__file__).resolve().parents[1]
DATASET = "toy"
CLASSES = ["guitar", "piano", "voice"]
SPLITS = ["train"] * 160 + ["valid"] * 60 + ["test"] * 120
IDS = [f"clip{i:03d}" for i in range(len(SPLITS))]
FAILED = "clip007"  # a training clip the noise store could not embed
STEPS = 120  # SGD steps per probe: enough for these stores, and quick


def _labels() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(1)
    labels = (rng.random((len(IDS), len(CLASSES))) < 0.35).astype(np.float32)
    known = rng.random(labels.shape) > 0.1
    return labels, known


def _write_store(data_dir: Path, name: str, arrays: dict, fingerprint: dict, failures=None):
    path = store_path(data_dir, DATASET, name)
    store = open_store(
        path,
        fingerprint=fingerprint,
        clip_ids=IDS,
        dim=next(iter(arrays.values())).shape[1],
        max_frames=4,
        shard_size=128,
        overwrite=True,
    )
    failures = failures or {}
    for plan in store.shards():
        ids = IDS[plan.start : plan.stop]
        store.write_shard(
            plan.index, [arrays.get(c) for c in ids], {c: failures[c] for c in ids if c in failures}
        )
    store.mark_complete({})


def _noise(seed: int, dim: int = 6) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {c: rng.standard_normal((3, dim)).astype(np.float32) for c in IDS}


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    """A dataset with an informative store (``good``: the labels plus noise) and a noise store."""
    data = tmp_path / "data"
    labels, known = _labels()
    make_manifest(
        DATASET,
        clip_ids=IDS,
        paths=[f"/nowhere/{c}.wav" for c in IDS],
        splits=SPLITS,
        classes=CLASSES,
        labels=labels,
        mask=known,
        durations_s=[1.0] * len(IDS),
        check_paths=False,
    ).write(manifest_path(data, DATASET))
    rng = np.random.default_rng(2)
    good = {
        c: np.concatenate([labels[i] + 0.6 * rng.standard_normal((2, 3)), rng.random((2, 2))], 1)
        for i, c in enumerate(IDS)
    }
    fingerprint = {"teacher": "panns", "layer": "penultimate", "weights_sha256": "ab", "dim": 5}
    _write_store(data, "good", good, fingerprint)
    noise = _noise(3)
    del noise[FAILED]
    failures = {FAILED: "decode error: broken file"}
    _write_store(data, "noise", noise, {"teacher": "musicnn", "output_version": 1}, failures)
    return data


def _sklearn_map(scores: np.ndarray, labels: np.ndarray, mask: np.ndarray) -> float:
    """Macro AP over the classes with a known positive and negative, computed independently."""
    aps = []
    for c in range(labels.shape[1]):
        known = mask[:, c].astype(bool)
        y = labels[known, c]
        if 0 < y.sum() < len(y):
            aps.append(average_precision_score(y, scores[known, c]))
    return float(np.mean(aps))


def test_informative_store_ranks_first_noise_near_chance(data_dir: Path) -> None:
    board = probe_leaderboard(data_dir, DATASET, ["noise", "good"], seeds=2, max_steps=STEPS)
    best, noise = board.rows
    assert best.probe.store == "good" and best.verdict == "best"
    assert best.map.mean > noise.map.mean + 0.3
    assert abs(noise.map.mean - board.chance_map) < 0.12
    assert noise.verdict == "worse" and noise.to_best.high < 0
    assert best.map.low <= best.map.mean <= best.map.high
    # The failed clip is left out of training, with the cause the store recorded.
    assert noise.probe.skipped == {FAILED: "decode error: broken file"}
    assert noise.probe.clips == {"train": 159, "valid": 60, "test": 120}
    assert best.probe.clips["train"] == 160 and board.clips == 120

    # Each seed's mAP, from the saved test predictions, computed independently.
    for row in board.rows:
        per_seed = []
        for seed in row.probe.seeds:
            saved = load_predictions(
                probes_path(data_dir, DATASET) / row.probe.store / f"seed-{seed}"
            )
            per_seed.append(_sklearn_map(saved["scores"], saved["labels"], saved["mask"]))
        assert row.map.mean == pytest.approx(np.mean(per_seed), abs=1e-9)


def test_rerun_is_cached_and_a_changed_store_refits(data_dir: Path) -> None:
    first = probe_leaderboard(data_dir, DATASET, ["good", "noise"], seeds=1, max_steps=STEPS)
    assert all(row.probe.fitted == (1223,) for row in first.rows)
    metrics = probes_path(data_dir, DATASET) / "good" / "seed-1223" / "metrics.json"
    stamp = metrics.stat().st_mtime_ns

    again = probe_leaderboard(data_dir, DATASET, ["good", "noise"], seeds=1, max_steps=STEPS)
    assert all(row.probe.fitted == () for row in again.rows)
    assert metrics.stat().st_mtime_ns == stamp
    assert [r.map.mean for r in again.rows] == [r.map.mean for r in first.rows]

    more = probe_leaderboard(data_dir, DATASET, ["good"], seeds=2, max_steps=STEPS)
    assert more.rows[0].probe.fitted == (1224,), "more seeds fit only the new one"

    _write_store(data_dir, "noise", _noise(4), {"teacher": "musicnn", "output_version": 2})
    changed = probe_leaderboard(data_dir, DATASET, ["good", "noise"], seeds=1, max_steps=STEPS)
    fitted = {row.probe.store: row.probe.fitted for row in changed.rows}
    assert fitted == {"good": (), "noise": (1223,)}
    assert metrics.stat().st_mtime_ns == stamp


@pytest.mark.filterwarnings("ignore:Attempting to set identical")  # no runs to plot
def test_files_report_section_and_default_stores(data_dir: Path) -> None:
    text = probes_stage(data_dir, DATASET, seeds=1, max_steps=STEPS)  # every store: good, noise
    reports = data_dir / "reports" / DATASET
    table = (reports / "probes.md").read_text()
    assert table.startswith("## Teacher probes") and table.strip() in text
    rows = [line for line in table.splitlines() if line.startswith("| ") and "store" not in line]
    assert [r.split(" | ")[1] for r in rows] == ["good", "noise"]
    assert "panns (layer=penultimate)" in rows[0] and "worse" in rows[1]
    assert "noise: 1 clip(s) without frames left out (decode error: broken file)" in table
    csv_lines = (reports / "probes.csv").read_text().splitlines()
    assert csv_lines[0].startswith("rank,store,teacher") and len(csv_lines) == 3

    runs = data_dir / "runs" / DATASET
    runs.mkdir(parents=True)
    report = write_report(runs, reports).read_text()
    assert "## Teacher probes" in report and "| 1 | good |" in report


def test_teacher_label_shows_options_not_bookkeeping() -> None:
    fingerprint = {
        "teacher": "panns",
        "layer": "penultimate",
        "weights_sha256": "0f",
        "panns_inference": "0.1.1",
        "sample_rate_hz": 32000,
        "output_version": 1,
    }
    assert teacher_label(fingerprint) == "panns (layer=penultimate)"
    assert teacher_label({"teacher": "vggish"}) == "vggish"


def test_missing_store_exits_2_naming_it(data_dir: Path, capsys) -> None:
    status = main(["--data-dir", str(data_dir), "probes", DATASET, "good", "panns-penultimate"])
    err = capsys.readouterr().err
    assert status == 2
    (line,) = err.splitlines()
    assert line.startswith("error: no store 'panns-penultimate'") and "make extract" in line
    assert not (probes_path(data_dir, DATASET) / "good").exists(), "nothing fitted before"


def test_make_probes_extracts_missing_teacher_stores_only(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAKE")}
    for var in ("DATASET", "TEACHER", "TEACHERS", "STORE", "TEACHER_OPTS", "SEEDS"):
        env.pop(var, None)
    teachers = "TEACHERS=musicnn panns panns-penultimate"
    result = subprocess.run(
        [
            "make",
            "-n",
            "-C",
            str(REPO),
            f"DATA={tmp_path / 'data'}",
            "probes",
            "DATASET=x",
            teachers,
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    # What each pipeline command runs: the words after ``--data-dir DATA``.
    ran = [
        " ".join(line.split("--data-dir ")[1].split()[1:])
        for line in result.stdout.splitlines()
        if "--data-dir" in line
    ]
    assert any(r.startswith("data x") for r in ran), ran
    extracted = {r.split()[2] for r in ran if r.startswith("extract x")}
    assert extracted == {"musicnn", "panns"}, "a store not named after a teacher is not extracted"
    assert "probes x musicnn panns panns-penultimate --seeds 3" in ran, ran


def test_stamps_cover_the_probed_stores_named_after_a_teacher() -> None:
    stamps = stamps_for({"DATASET": "x", "TEACHER": "none", "TEACHERS": "panns panns-penultimate"})
    assert "extract-x-panns" in stamps and "extract-x-panns-penultimate" not in stamps
