"""The Ray engine against the local one, on a Ray cluster started here on loopback (CPU only).

The teacher is musicnn with its real weights; the clips are rendered demo music plus broken
and short files, so failures and padding notes are compared too.
"""

import shutil
import subprocess
import sys

import numpy as np
import pytest

from pipeline.extract import extract
from pipeline.manifest import Manifest, make_manifest
from pipeline.store import read_store
from pipeline.teachers import create_teacher

ray = pytest.importorskip("ray")

from pipeline.extract_ray import extract_ray  # noqa: E402

SHARD, BATCH = 3, 2


@pytest.fixture(scope="module")
def cluster():
    ray.init(
        num_cpus=2,
        _node_ip_address="127.0.0.1",
        include_dashboard=False,
        log_to_driver=False,
    )
    yield ray.cluster_resources()
    ray.shutdown()


@pytest.fixture(scope="module")
def manifest(tmp_path_factory):
    data = tmp_path_factory.mktemp("data")
    subprocess.run(
        [sys.executable, "-m", "pipeline", "--data-dir", str(data), "data", "demo", "--clips", "7"],
        check=True,
        capture_output=True,
    )
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
    assert (summary.shards_written, summary.shards_skipped) == (0, 3)
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
    assert summary.shards_written == 3 and summary.shards_skipped == 0
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
    (out / "COMPLETE").unlink()
    (out / "progress" / "shard-000001.json").unlink()
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
    assert (summary.shards_written, summary.shards_skipped) == (1, 2)
    assert_same_store(local_store[0], out)
