import numpy as np
import pytest

from pipeline.cli import main
from pipeline.stores import StoreError, export_h5, open_store, read_store
from pipeline.stores.inspect import inspect_store

DIM, MAX_FRAMES, SHARD = 4, 10, 2
IDS = [f"clip{i}" for i in range(6)]


def _arrays(seed=0):
    rng = np.random.default_rng(seed)
    return {c: rng.normal(1.0, 2.0, (3 + i, DIM)).astype(np.float32) for i, c in enumerate(IDS)}


def _write(path, arrays, failures=None, *, done=True, shards=None, summary=None):
    """A store of IDS; ``shards`` limits the shards written, ``done`` marks it complete."""
    failures = failures or {}
    store = open_store(
        path,
        fingerprint={"teacher": "toy", "dim": DIM},
        clip_ids=IDS,
        dim=DIM,
        max_frames=MAX_FRAMES,
        shard_size=SHARD,
    )
    for plan in store.shards()[:shards]:
        ids = IDS[plan.start : plan.stop]
        store.write_shard(
            plan.index, [arrays.get(c) for c in ids], {c: failures[c] for c in ids if c in failures}
        )
    if done:
        store.mark_complete(summary if summary is not None else {"padded": {}})
    return path


def test_healthy_store_exits_0_and_its_statistics_are_right(tmp_path, capsys):
    path = _write(tmp_path / "toy.zarr", _arrays(), summary={"padded": {"clip0": "zero-padded"}})
    report = inspect_store(path)
    assert report.healthy and report.exit_status == 0 and report.problems == []
    assert report.clips == 6 and list(report.frames) == [3, 4, 5, 6, 7, 8]
    assert report.padded == {"clip0": "zero-padded"}
    store = read_store(path)
    values = np.concatenate([store.read(c) for c in IDS]).astype(np.float64)
    np.testing.assert_allclose(report.mean, values.mean(axis=0), rtol=1e-12)
    np.testing.assert_allclose(report.std, values.std(axis=0), rtol=1e-12)
    # One clip per chunk: the merged moments are the same.
    small = inspect_store(path, chunk_bytes=1)
    np.testing.assert_allclose(small.mean, report.mean, rtol=1e-12)
    np.testing.assert_allclose(small.std, report.std, rtol=1e-12)

    assert main(["inspect", str(path)]) == 0
    out = capsys.readouterr().out
    assert "6 clips" in out and "frames per clip: min 3  median 5.5  max 8" in out
    assert "padded clip0: zero-padded" in out and '  teacher: "toy"' in out
    assert out.rstrip().endswith("healthy")

    h5 = export_h5(path, tmp_path / "toy.h5", progress=False)
    exported = inspect_store(h5)
    assert exported.healthy and exported.kind == "hdf5" and exported.padded == report.padded
    np.testing.assert_allclose(exported.std, report.std, rtol=1e-12)


def test_non_finite_values(tmp_path, capsys):
    arrays = _arrays()
    arrays["clip2"][1, 3] = np.nan
    arrays["clip4"][0, 0] = np.inf
    path = _write(tmp_path / "nan.zarr", arrays)
    report = inspect_store(path)
    assert report.nonfinite_values == 2 and report.nonfinite_clips == ["clip2", "clip4"]
    assert np.isfinite(report.std).all()  # the statistics skip them
    assert main(["inspect", str(path)]) == 1
    assert "2 non-finite values (NaN or inf) in 2 clips" in capsys.readouterr().out


def test_constant_dimension(tmp_path, capsys):
    arrays = _arrays()
    for array in arrays.values():
        array[:, 2] = 0.5
    path = _write(tmp_path / "flat.zarr", arrays, summary={})
    report = inspect_store(path)
    assert report.collapsed.tolist() == [2] and report.padded is None
    assert main(["inspect", str(path)]) == 1
    out = capsys.readouterr().out
    assert "1 collapsed dimensions (std <= 1e-06): 2" in out and "padded clips: not recorded" in out


def test_failed_clips(tmp_path, capsys):
    arrays = _arrays()
    del arrays["clip1"], arrays["clip5"]
    failures = {"clip1": "cannot decode: bad header", "clip5": "file not found"}
    path = _write(tmp_path / "failed.zarr", arrays, failures)
    report = inspect_store(path)
    assert report.failures == failures and len(report.frames) == 4 and report.empty == []
    assert main(["inspect", str(path)]) == 1
    out = capsys.readouterr().out
    assert "failed clip1: cannot decode: bad header" in out and "2 clips failed" in out


def test_incomplete_store(tmp_path, capsys):
    path = _write(tmp_path / "half.zarr", _arrays(), done=False, shards=2)
    report = inspect_store(path)
    assert not report.complete and report.missing_shards == [2] and report.not_written == 2
    assert len(report.frames) == 4
    assert main(["inspect", str(path)]) == 1
    assert "incomplete: 1 shards not done (2 clips not written)" in capsys.readouterr().out


def test_missing_store_is_an_error(tmp_path, capsys):
    with pytest.raises(StoreError):
        inspect_store(tmp_path / "absent.zarr")
    assert main(["inspect", str(tmp_path / "absent.zarr")]) == 2
    assert capsys.readouterr().err.startswith("error: no clip store at")
