import json

import numpy as np
import pytest

from pipeline.store import StoreError, fingerprint_diff, open_store, read_store

FP = {"teacher": "toy", "dim": 3, "weights_sha256": "abc"}


def _ids(n):
    return [f"clip/{i:03d}" for i in range(n)]  # a slash: IDs are keys, never paths


def _make(path, n=10, shard_size=4, max_frames=5, **kw):
    return open_store(
        path,
        fingerprint=FP,
        clip_ids=_ids(n),
        dim=3,
        max_frames=max_frames,
        shard_size=shard_size,
        **kw,
    )


def _arrays(plan, rng):
    return [
        rng.normal(size=(1 + row % 5, 3)).astype(np.float32) for row in range(plan.start, plan.stop)
    ]


def test_write_read_by_clip_id(tmp_path):
    store = _make(tmp_path / "s.zarr")
    assert [(p.start, p.stop) for p in store.shards()] == [(0, 4), (4, 8), (8, 10)]
    rng = np.random.default_rng(0)
    written = {}
    for plan in store.shards():
        arrays = _arrays(plan, rng)
        store.write_shard(plan.index, arrays, {})
        written.update(zip(store.clip_ids[plan.start : plan.stop], arrays, strict=True))
    store.mark_complete({"ok": True})

    reader = read_store(tmp_path / "s.zarr")
    assert reader.clip_ids == _ids(10)
    assert reader.n_frames.tolist() == [1 + r % 5 for r in range(10)]
    for clip, array in written.items():
        got = reader.read(clip)
        assert got.dtype == np.float16 and got.shape == array.shape
        np.testing.assert_allclose(got, array, rtol=1e-3, atol=1e-3)
    batch = reader.read_batch(["clip/007", "clip/002", "clip/007"])
    np.testing.assert_array_equal(batch[0], reader.read("clip/007"))
    np.testing.assert_array_equal(batch[1], reader.read("clip/002"))
    with pytest.raises(KeyError, match="clip/999"):
        reader.read("clip/999")
    # Clip IDs with slashes created no folders of their own.
    assert not (tmp_path / "s.zarr" / "clip").exists()


def test_failures_and_truncation(tmp_path):
    store = _make(tmp_path / "s.zarr", n=4, shard_size=4, max_frames=2)
    arrays = [np.ones((3, 3), np.float32), None, np.ones((1, 3), np.float32), None]
    store.write_shard(0, arrays, {"clip/001": "cannot decode", "clip/003": "too short"})
    store.mark_complete({})
    reader = read_store(tmp_path / "s.zarr")
    assert reader.n_frames.tolist() == [2, 0, 1, 0]
    assert reader.read("clip/001").shape == (0, 3)
    assert reader.failures() == {"clip/001": "cannot decode", "clip/003": "too short"}


def test_wrong_width_names_the_clip(tmp_path):
    store = _make(tmp_path / "s.zarr", n=2, shard_size=2)
    with pytest.raises(ValueError, match="clip/001"):
        store.write_shard(0, [np.ones((1, 3)), np.ones((1, 4))], {})
    assert store.done_shards() == set()


def test_resume_reports_done_shards_and_cleans_orphans(tmp_path):
    path = tmp_path / "s.zarr"
    store = _make(path)
    rng = np.random.default_rng(1)
    plan = store.shards()[1]
    store.write_shard(1, _arrays(plan, rng), {})
    orphan = path / "data" / "c" / "0" / "0" / "0.deadbeef.partial"
    orphan.parent.mkdir(parents=True, exist_ok=True)
    orphan.write_bytes(b"half a shard")

    reopened = _make(path)
    assert reopened.done_shards() == {1}
    assert not orphan.exists()
    with pytest.raises(StoreError, match="shards \\[0, 2\\] are not done"):
        reopened.mark_complete({})
    with pytest.raises(StoreError, match="incomplete"):
        read_store(path)


def test_changed_fingerprint_is_refused_with_the_difference(tmp_path):
    path = tmp_path / "s.zarr"
    _make(path)
    other = {**FP, "weights_sha256": "def"}
    with pytest.raises(StoreError, match="weights_sha256: 'abc' → 'def'"):
        open_store(path, fingerprint=other, clip_ids=_ids(10), dim=3, max_frames=5, shard_size=4)
    with pytest.raises(StoreError, match="other clips"):
        open_store(path, fingerprint=FP, clip_ids=_ids(9), dim=3, max_frames=5, shard_size=4)
    fresh = open_store(
        path, fingerprint=other, clip_ids=_ids(9), dim=3, max_frames=5, shard_size=4, overwrite=True
    )
    assert fresh.fingerprint == other and len(fresh) == 9


def test_fingerprint_diff_lists_changed_keys_only():
    assert fingerprint_diff({"a": 1, "b": (1, 2)}, {"a": 1, "b": [1, 2]}) == []
    assert fingerprint_diff({"a": 1}, {"a": 2, "c": 3}) == ["a: 1 → 2", "c: '<absent>' → 3"]


def test_done_marker_records_rows_and_failures(tmp_path):
    store = _make(tmp_path / "s.zarr", n=4, shard_size=4)
    store.write_shard(0, [np.ones((1, 3))] * 4, {})
    marker = json.loads((tmp_path / "s.zarr" / "progress" / "shard-000000.json").read_text())
    assert marker == {"rows": [0, 4], "failures": {}}
