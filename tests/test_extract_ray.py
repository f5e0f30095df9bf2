"""The Ray engine against the local one, on a Ray cluster started on this machine (CPU only).

The teacher is musicnn with its real weights; the clips are rendered demo music plus broken
and short files, so failures and padding notes are compared too.
"""

import os
import shutil
import signal
import subprocess
import time

import numpy as np
import pytest
from command_line import pipeline_command, run_cli

from pipeline.data.manifest import Manifest, make_manifest
from pipeline.extract.local import extract
from pipeline.stores import markers, read_store
from pipeline.teachers import create_teacher

ray = pytest.importorskip("ray")

from pipeline.extract.ray_engine import extract_ray  # noqa: E402

SHARD, BATCH = 3, 2


@pytest.fixture(scope="module")
def cluster():
    # A one-machine cluster: Ray gives it this machine's own address (never 127.0.0.1, which
    # it replaces), and the extraction subprocesses join it by that address.
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray.cluster_resources()
    ray.shutdown()


@pytest.fixture(scope="module")
def manifest(tmp_path_factory):
    data = tmp_path_factory.mktemp("data")
    run_cli(data, "data", "demo", "--clips", "10")
    demo = Manifest.read(data / "manifests" / "demo.parquet")
    broken = data / "broken.mp3"
    broken.write_bytes(b"ID3 but nothing after it")
    short = data / "short.wav"
    import soundfile as sf

    sf.write(short, np.random.default_rng(0).uniform(-0.3, 0.3, 8000).astype(np.float32), 16000)
    ids = [*demo.clip_ids[:4], "broken/../clip", "short", *demo.clip_ids[4:]]
    paths = [*demo.clips["path"][:4], broken, short, *demo.clips["path"][4:]]
    return make_manifest(
        "mixed",
        clip_ids=ids,
        paths=paths,
        splits=["train"] * len(ids),
        classes=["x"],
        labels=np.zeros((len(ids), 1)),
    )


@pytest.fixture(scope="module")
def local_store(manifest, tmp_path_factory):
    out = tmp_path_factory.mktemp("local") / "musicnn.zarr"
    summary = extract(
        manifest,
        create_teacher("musicnn"),
        out,
        shard_size=SHARD,
        batch_size=BATCH,
        jobs=1,
        progress=False,
        max_failed_fraction=0.5,
    )
    return out, summary


def assert_same_store(path_a, path_b):
    a, b = read_store(path_a), read_store(path_b)
    assert a.fingerprint == b.fingerprint
    assert a.clip_ids == b.clip_ids
    np.testing.assert_array_equal(a.n_frames, b.n_frames)
    assert a.failures() == b.failures()
    for clip in a.clip_ids:
        x, y = a.read(clip), b.read(clip)
        assert x.shape == y.shape and x.dtype == y.dtype, clip
        np.testing.assert_array_equal(x, y, err_msg=clip)


# Before the cluster fixture first runs: these must not start Ray.
def test_a_finished_store_needs_no_cluster(manifest, local_store, tmp_path):
    out = tmp_path / "musicnn.zarr"
    shutil.copytree(local_store[0], out)
    summary = extract_ray(
        manifest,
        "musicnn",
        out,
        shard_size=SHARD,
        batch_size=BATCH,
        progress=False,
        max_failed_fraction=0.5,
    )
    assert (summary.shards_written, summary.shards_skipped) == (0, 4)
    assert not ray.is_initialized()


def test_missing_weights_are_reported_before_any_worker_starts(manifest, tmp_path):
    from pipeline.teachers import MissingWeightsError

    with pytest.raises(MissingWeightsError, match="vggish"):
        extract_ray(
            manifest,
            "vggish",
            tmp_path / "v.zarr",
            progress=False,
            teacher_options={"weights": tmp_path / "none.pth"},
        )
    assert not (tmp_path / "v.zarr").exists() and not ray.is_initialized()


def test_ray_store_is_identical_to_the_local_engines(cluster, manifest, local_store, tmp_path):
    out = tmp_path / "musicnn.zarr"
    summary = extract_ray(
        manifest,
        "musicnn",
        out,
        shard_size=SHARD,
        batch_size=BATCH,
        progress=False,
        max_failed_fraction=0.5,
    )
    local_path, local_summary = local_store
    assert_same_store(local_path, out)
    assert summary.shards_written == 4 and summary.shards_skipped == 0
    assert summary.failed == local_summary.failed
    assert set(summary.failed) == {"broken/../clip", "short"}
    assert summary.padded == local_summary.padded
    assert summary.embedded == local_summary.embedded == len(manifest) - 2
    assert read_store(out).is_complete
    # The clip ID is a key only: nothing was written beside the store.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["musicnn.zarr"]


def test_a_rerun_writes_only_the_shards_not_done(cluster, manifest, local_store, tmp_path):
    out = tmp_path / "musicnn.zarr"
    shutil.copytree(local_store[0], out)
    shutil.rmtree(out / "COMPLETE")
    shutil.rmtree(markers.shard_marker(out, 1).parent)
    shutil.rmtree(out / "data" / "c" / "1")  # as if the writer died before its shard landed
    summary = extract_ray(
        manifest,
        "musicnn",
        out,
        shard_size=SHARD,
        batch_size=BATCH,
        progress=False,
        max_failed_fraction=0.5,
    )
    assert (summary.shards_written, summary.shards_skipped) == (1, 3)
    assert_same_store(local_store[0], out)


# -- R1 on Ray: the driver's whole job killed at random moments, then the same command again --
def _markers(store):
    return len(markers.done_shards(store))


def _ray_command(data_dir, address):
    return pipeline_command(
        data_dir,
        "extract", "mixed", "musicnn", "--engine", "ray", "--ray-address", address,
        "--name", "killed", "--shard-size", "1", "--batch-size", "1", "--quiet",
    )  # fmt: skip


def kill_and_resume(data_dir, address, kills, seed):
    """Run the Ray extraction, SIGKILL its process group at ``kills`` random moments (each
    while 1 or 2 more shards than before are done, plus 0–300 ms), then let it finish.
    Returns the kill moments as (shards done, delay) pairs."""
    rng = np.random.default_rng(seed)
    store = data_dir / "cache" / "mixed" / "killed.zarr"
    total = len(Manifest.read(data_dir / "manifests" / "mixed.parquet"))
    moments = []
    while len(moments) < kills:
        target = min(_markers(store) + int(rng.integers(1, 3)), total - 1)
        delay = float(rng.uniform(0.0, 0.3))
        proc = subprocess.Popen(
            _ray_command(data_dir, address),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        deadline = time.monotonic() + 300
        while proc.poll() is None and _markers(store) < target and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(delay)
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        assert not markers.is_complete(store), f"run finished before kill {len(moments) + 1}"
        moments.append((_markers(store), round(delay, 3)))
    print(f"seed {seed}: killed at (shards done, delay s) {moments}")
    return moments


@pytest.fixture(scope="module")
def killable(manifest, tmp_path_factory):
    """A data folder holding the mixed manifest, and the local engine's uninterrupted store with
    the settings of :func:`_ray_command`."""
    data = tmp_path_factory.mktemp("killable")
    manifest.write(data / "manifests" / "mixed.parquet")
    reference = data / "cache" / "mixed" / "reference.zarr"
    extract(
        manifest,
        create_teacher("musicnn"),
        reference,
        shard_size=1,
        batch_size=1,
        jobs=1,
        progress=False,
        max_failed_fraction=0.5,
    )
    return data, reference


def _check_killed_store(data, reference, moments):
    result = subprocess.run(
        _ray_command(data, ray.get_runtime_context().gcs_address),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 1, result.stdout + result.stderr  # complete, 2 of 12 clips failed
    store = data / "cache" / "mixed" / "killed.zarr"
    assert_same_store(reference, store)  # 0 clips lost or duplicated, same values
    assert _markers(store) == len(read_store(store))
    assert not [p for p in store.rglob("*") if p.name.endswith(".partial")]
    assert moments


def test_killed_ray_extraction_resumes_to_the_uninterrupted_store(cluster, killable):
    data, reference = killable
    moments = kill_and_resume(data, ray.get_runtime_context().gcs_address, kills=1, seed=1)
    _check_killed_store(data, reference, moments)


@pytest.mark.torture
def test_five_kills_of_the_ray_engine(cluster, killable):
    data, reference = killable
    shutil.rmtree(data / "cache" / "mixed" / "killed.zarr", ignore_errors=True)
    moments = kill_and_resume(data, ray.get_runtime_context().gcs_address, kills=5, seed=5)
    _check_killed_store(data, reference, moments)
