"""The decode pool of stage one: its default size, and waveforms handed over through files in
shared memory that change nothing in what comes out (values, order, failures) and leave no file
behind, whether the consumer reads all, stops early or is killed."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from pipeline.extract.decode import decode_ahead, decode_clips, default_decode_jobs, usable_cores

SR_HZ = 16_000


def test_default_jobs_follow_the_cores_this_process_may_use(monkeypatch):
    if hasattr(os, "sched_getaffinity"):
        assert usable_cores() == len(os.sched_getaffinity(0))
        monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 3, 5, 6, 9, 12}, raising=False)
        assert (usable_cores(), default_decode_jobs()) == (6, 5)
        monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {4}, raising=False)
        assert (usable_cores(), default_decode_jobs()) == (1, 1)
    monkeypatch.delattr(os, "sched_getaffinity", raising=False)  # e.g. macOS, Windows
    monkeypatch.setattr(os, "cpu_count", lambda: 8)
    assert (usable_cores(), default_decode_jobs()) == (8, 7)
    monkeypatch.setattr(os, "cpu_count", lambda: None)
    assert (usable_cores(), default_decode_jobs()) == (1, 1)


def _clips(folder: Path) -> dict[str, str]:
    """Clip ID → path: good clips of several rates and lengths, and three that fail."""
    rng = np.random.default_rng(0)
    paths = {}
    for i, (rate, seconds, channels) in enumerate(
        [(22_050, 1.0, 1), (44_100, 0.5, 2), (16_000, 2.0, 1), (8_000, 0.3, 1), (48_000, 1.2, 2)]
    ):
        paths[f"ok{i}"] = folder / f"ok{i}.wav"
        audio = rng.uniform(-0.5, 0.5, (int(rate * seconds), channels)).astype(np.float32)
        sf.write(paths[f"ok{i}"], audio, rate, subtype="FLOAT")
    paths["short"] = folder / "short.wav"
    sf.write(paths["short"], np.zeros(400, np.float32), SR_HZ)  # 0.025 s
    paths["garbage"] = folder / "garbage.wav"
    paths["garbage"].write_bytes(b"not audio at all" * 64)
    paths["missing"] = folder / "missing.wav"
    return {clip: str(path) for clip, path in paths.items()}


def _tasks(paths: dict[str, str]) -> list[tuple]:
    batches = [
        ["ok0", "garbage", "ok1", "short"],
        ["missing", "short"],  # nothing to hand over: every clip failed
        ["ok2"],
        ["ok3", "ok4", "ok0", "missing", "ok1"],
        ["ok4", "ok4"],
        ["garbage", "ok2", "ok3"],
        ["ok1"],
    ]
    return [([(c, paths[c]) for c in batch], SR_HZ, 0.1, None) for batch in batches]


def _assert_same(got: list, want: list) -> None:
    assert len(got) == len(want)
    for g, w in zip(got, want, strict=True):
        if isinstance(w, str):
            assert g == w
        else:
            assert g.dtype == np.float32 and g.shape == w.shape
            assert g.flags.c_contiguous and g.flags.writeable
            np.testing.assert_array_equal(g, w)


def test_the_pool_gives_what_decoding_here_gives_in_the_same_order(tmp_path):
    tasks = _tasks(_clips(tmp_path))
    want = [decode_clips(*task) for task in tasks]
    spill = tmp_path / "spill"
    spill.mkdir()
    got = list(decode_ahead(iter(tasks), jobs=2, ahead=3, spill_dir=str(spill)))
    assert len(got) == len(tasks)
    for g, w in zip(got, want, strict=True):
        _assert_same(g, w)
    # One line per failed clip, naming the cause (the clip is named by its place in the task).
    assert "file not found" in got[1][0] and "needs at least 0.1 s" in got[1][1]
    assert "cannot decode" in got[0][1]
    assert list(spill.iterdir()) == []


def test_a_consumer_stopping_early_leaves_no_files_and_a_usable_pool(tmp_path):
    tasks = _tasks(_clips(tmp_path)) * 3
    spill = tmp_path / "spill"
    spill.mkdir()
    results = decode_ahead(iter(tasks), jobs=2, ahead=4, spill_dir=str(spill))
    _assert_same(next(results), decode_clips(*tasks[0]))
    results.close()
    assert list(spill.iterdir()) == []
    again = list(decode_ahead(iter(tasks[:3]), jobs=2, ahead=2, spill_dir=str(spill)))
    _assert_same(again[2], decode_clips(*tasks[2]))


_KILLED = """
import sys, time
from pipeline.extract.decode import decode_ahead
spill, path = sys.argv[1], sys.argv[2]
tasks = (([("c", path)] * 4, 16_000, 0.0, None) for _ in range(10_000))
results = decode_ahead(tasks, jobs=2, ahead=4, spill_dir=spill)
next(results)
print("decoding", flush=True)
time.sleep(600)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="workers die with parent: Linux")
def test_a_killed_extraction_leaves_no_workers_and_no_files(tmp_path):
    paths = _clips(tmp_path)
    spill = tmp_path / "spill"
    spill.mkdir()
    child = subprocess.Popen(
        [sys.executable, "-c", _KILLED, str(spill), paths["ok1"]],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        cwd=Path(__file__).parents[1],
    )
    try:
        assert child.stdout.readline().strip() == b"decoding"
        deadline = time.monotonic() + 30
        while not any(spill.glob("*/*.f32")) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert any(spill.glob("*/*.f32")), "the workers wrote no waveforms"
    finally:
        os.kill(child.pid, signal.SIGKILL)
        child.wait()
    # The tracker deletes the folder once every process holding it (the workers too) is gone.
    deadline = time.monotonic() + 60
    while list(spill.iterdir()) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert list(spill.iterdir()) == []
