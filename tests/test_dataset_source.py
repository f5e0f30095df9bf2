"""A manifest remembers how it was made: later commands need only the dataset's name."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import numpy as np
import soundfile as sf

from pipeline.cli import main
from pipeline.data.source import read_source
from pipeline.paths import source_record_path
from pipeline.stamps import stamps_for

REPO = Path(__file__).resolve().parents[1]


def write_clips(folder: Path, n: int = 6, *, tag: str = "a") -> Path:
    """A CSV of ``n`` one-second clips (two per split) under ``folder``; returns the CSV."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    rows = ["clip_id,path,split,piano,voice"]
    for i in range(n):
        sf.write(folder / f"c{i}.wav", 0.1 * rng.standard_normal(16000), 16000)
        rows.append(f"{tag}{i},c{i}.wav,{('train', 'valid', 'test')[i % 3]},{i % 2},{(i + 1) % 2}")
    csv = folder / "clips.csv"
    csv.write_text("\n".join(rows) + "\n")
    return csv


def data_stamp(data: Path, **variables: str) -> str:
    env = {"DATA": str(data), "DATASET": "mine", **variables}
    return stamps_for(env)["data-mine"]


def test_data_records_its_source_and_rebuilds_from_it(tmp_path: Path, capsys) -> None:
    data, csv = tmp_path / "data", write_clips(tmp_path / "audio")
    assert main(["--data-dir", str(data), "data", "mine", "--csv", str(csv)]) == 0
    record = read_source(data, "mine")
    assert record is not None
    assert record["source"] == "csv" and record["csv"] == str(csv.resolve())
    assert json.loads(source_record_path(data, "mine").read_text()) == record

    # No source option: the recorded one, said, and the same manifest.
    manifest = data / "manifests" / "mine.parquet"
    before = manifest.read_bytes()
    capsys.readouterr()
    assert main(["--data-dir", str(data), "data", "mine"]) == 0
    out = capsys.readouterr().out
    assert f"building from its recorded source, csv (csv={csv.resolve()})" in out
    assert manifest.read_bytes() == before

    # Another source replaces the record.
    other = write_clips(tmp_path / "other", n=9, tag="b")
    assert main(["--data-dir", str(data), "data", "mine", "--csv", str(other)]) == 0
    assert read_source(data, "mine")["csv"] == str(other.resolve())


def test_unknown_dataset_without_record_is_still_an_error(tmp_path: Path, capsys) -> None:
    assert main(["--data-dir", str(tmp_path), "data", "mine"]) == 2
    assert "unknown dataset 'mine'" in capsys.readouterr().err
    assert read_source(tmp_path, "mine") is None


def test_the_data_stamp_follows_the_recorded_source(tmp_path: Path, monkeypatch) -> None:
    data, csv = tmp_path / "data", write_clips(tmp_path / "audio")
    assert main(["--data-dir", str(data), "data", "mine", "--csv", str(csv)]) == 0
    given = data_stamp(data, CSV=str(csv))
    written = (data / "stamps" / "data-mine.params").read_text()
    assert written == given + "\n", "data leaves the stamp the next make computes"

    assert data_stamp(data) == given, "no source given: the recorded one stands in"
    monkeypatch.chdir(tmp_path)
    assert data_stamp(data, CSV="audio/clips.csv") == given, "a relative path is the same file"

    other = write_clips(tmp_path / "other", tag="b")
    assert data_stamp(data, CSV=str(other)) != given, "another source rebuilds"

    # The audio files the manifest lists: replaced, or gone.
    (csv.parent / "c1.wav").write_bytes((csv.parent / "c0.wav").read_bytes()[:-2])
    assert data_stamp(data) != given
    assert main(["--data-dir", str(data), "data", "mine"]) == 0
    given = data_stamp(data)
    (csv.parent / "c1.wav").unlink()
    assert data_stamp(data) != given

    # Editing the table rebuilds too (its size or modification time changes).
    csv.write_text(csv.read_text() + "\n")
    os.utime(csv, ns=(1, 1))
    assert data_stamp(data) != given


def test_make_needs_only_the_dataset_name_after_data(tmp_path: Path) -> None:
    """The reported bug: ``make extract DATASET=mine`` after ``make data DATASET=mine CSV=...``
    ran the data stage again without the CSV and failed with "unknown dataset"."""
    data, csv = tmp_path / "data", write_clips(tmp_path / "audio")
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAKE")}
    for var in ("DATASET", "TEACHER", "CSV", "ROOT", "SPLITS", "CLIPS", "STORE", "TEACHER_OPTS"):
        env.pop(var, None)

    def make(*args: str) -> str:
        command = ["make", "-C", str(REPO), "--no-print-directory", f"DATA={data}", *args]
        result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
        assert result.returncode == 0, result.stdout + result.stderr
        return result.stdout

    built = make("data", "DATASET=mine", f"CSV={csv}")
    assert " data mine" in built and f"--csv {csv}" in built
    planned = make("-n", "extract", "DATASET=mine", "TEACHER=musicnn")
    assert " data mine" not in planned, planned
    assert " extract mine musicnn" in planned
    assert "Nothing to be done" in make("data", "DATASET=mine")

    # Audio replaced in place (same CSV): the manifest is rebuilt (its durations), once.
    sf.write(csv.parent / "c2.wav", np.zeros(24000), 16000)
    planned = make("-n", "extract", "DATASET=mine", "TEACHER=musicnn")
    assert " data mine" in planned and " extract mine musicnn" in planned
    assert "building from its recorded source" in make("data", "DATASET=mine")
    assert "Nothing to be done" in make("data", "DATASET=mine")
