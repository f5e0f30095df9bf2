"""Stage one end to end through the command line: demo dataset → musicnn (real weights) → store."""

import os
import signal
import subprocess
import time

import numpy as np
import pytest
from command_line import pipeline_command, run_cli

from pipeline.data.manifest import Manifest
from pipeline.stores import markers, read_store

CLIPS = 12


def _extract_args(name):
    return [
        "extract",
        "demo",
        "musicnn",
        "--name",
        name,
        "--shard-size",
        "2",
        "--batch-size",
        "2",
        "--jobs",
        "1",
        "--quiet",
    ]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    data = tmp_path_factory.mktemp("data")
    run_cli(data, "data", "demo", "--clips", str(CLIPS))
    return data


@pytest.fixture(scope="module")
def reference(data_dir):
    out = run_cli(data_dir, *_extract_args("reference"))
    return read_store(data_dir / "cache" / "demo" / "reference.zarr"), out.stdout


def test_store_has_one_row_per_clip_in_manifest_order(data_dir, reference):
    store, stdout = reference
    manifest = Manifest.read(data_dir / "manifests" / "demo.parquet")
    assert store.clip_ids == manifest.clip_ids
    assert len(store) == CLIPS
    # musicnn embeds non-overlapping 3 s patches: a 10 s clip gives 3.
    assert store.n_frames.tolist() == [3] * CLIPS
    assert store.failures() == {}
    for clip in manifest.clip_ids[:3]:
        emb = store.read(clip)
        assert emb.shape == (3, store.dim) and np.isfinite(emb).all()
        assert emb.astype(np.float32).std() > 0
    assert f"{CLIPS}/{CLIPS} clips embedded, 0 failed" in stdout


def test_rerun_does_no_work(data_dir, reference):
    out = run_cli(data_dir, *_extract_args("reference"))
    assert "0 shards written, 6 already done" in out.stdout


def test_sigkill_then_rerun_gives_the_uninterrupted_values(data_dir, reference):
    store, _ = reference
    path = data_dir / "cache" / "demo" / "killed.zarr"
    proc = subprocess.Popen(
        pipeline_command(data_dir, *_extract_args("killed")),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None:
        if markers.done_shards(path):
            break
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    done_before = len(markers.done_shards(path))
    assert 1 <= done_before < 6, "the kill should land mid-run"
    assert not markers.is_complete(path)

    out = run_cli(data_dir, *_extract_args("killed"))
    assert f"{done_before} already done" in out.stdout
    resumed = read_store(path)
    assert resumed.n_frames.tolist() == store.n_frames.tolist()
    for clip in store.clip_ids:
        np.testing.assert_array_equal(resumed.read(clip), store.read(clip))
    assert not list(path.rglob("*.partial"))


def test_changed_teacher_settings_are_refused(data_dir, reference):
    out = run_cli(data_dir, *_extract_args("reference"), "-o", "layer=penultimate", expect=None)
    assert out.returncode == 2
    assert "made with other settings" in out.stderr and "layer" in out.stderr
