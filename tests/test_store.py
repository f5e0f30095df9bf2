import json
import multiprocessing
import os
import pickle
import warnings
from pathlib import Path

import numpy as np
import pytest
import zarr

from pipeline.stores import COMPLETE_MARKER, StoreError, open_store, read_store
from pipeline.stores.fingerprint import fingerprint_diff

FP = {"teacher": "toy", "dim": 3, "weights_sha256": "abc"}
LEGACY = Path(__file__).parent / "data" / "legacy"


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
    store.write_shard(0, [np.ones((1, 3))] * 4, {"clip/001": "too short"})
    group = zarr.open_group(tmp_path / "s.zarr" / "progress" / "shard-000000", mode="r")
    assert group.attrs.asdict() == {"rows": [0, 4], "failures": {"clip/001": "too short"}}
    store.mark_complete({"seconds": 1.5})
    assert read_store(tmp_path / "s.zarr").summary == {"seconds": 1.5}
    assert (tmp_path / "s.zarr" / COMPLETE_MARKER).is_file()  # what Make depends on


def _read_everything_with_zarr(path):
    """Open ``path`` as plain Zarr, walk the hierarchy, read every array: warnings fail."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        group = zarr.open_group(path, mode="r")
        members = dict(group.members(max_depth=None))
        group.tree()
        for array in members.values():
            if isinstance(array, zarr.Array):
                array[...]
    return members


def test_stores_are_clean_zarr_while_written_and_once_complete(tmp_path):
    path = tmp_path / "s.zarr"
    store = _make(path, n=6, shard_size=4)
    assert {"data", "n_frames", "clip_id", "progress"} <= set(_read_everything_with_zarr(path))
    store.write_shard(1, [np.ones((2, 3))] * 2, {})
    assert "progress/shard-000001" in _read_everything_with_zarr(path)
    # A writer killed before renaming its marker into place leaves an empty folder: resuming
    # removes it, and it never counted as a marker.
    (path / "progress" / "shard-000000").mkdir()
    (path / "COMPLETE").mkdir()
    assert _make(path, n=6, shard_size=4).done_shards() == {1}
    assert not (path / "COMPLETE").exists()
    store.write_shard(0, [np.ones((2, 3))] * 4, {"clip/002": "silent"})
    store.mark_complete({"seconds": 2.0})
    members = _read_everything_with_zarr(path)
    assert members["COMPLETE"].attrs["seconds"] == 2.0
    assert read_store(path).failures() == {"clip/002": "silent"}


def test_stores_of_the_legacy_layout_read_and_resume(tmp_path):
    path = tmp_path / "s.zarr"
    store = _make(path, n=6, shard_size=4)
    store.write_shard(0, [np.ones((2, 3))] * 4, {"clip/001": "silent"})
    # The layout before the markers were Zarr groups: a JSON file per shard and COMPLETE.
    marker = path / "progress" / "shard-000000"
    legacy = json.loads((marker / "zarr.json").read_text())["attributes"]
    (path / "progress" / "shard-000000.json").write_text(json.dumps(legacy))
    (marker / "zarr.json").unlink()
    marker.rmdir()
    (path / "progress" / "zarr.json").unlink()
    assert read_store(path, require_complete=False).done_shards() == {0}
    resumed = _make(path, n=6, shard_size=4)
    resumed.write_shard(1, [np.ones((2, 3))] * 2, {})
    assert resumed.done_shards() == {0, 1}
    assert resumed.failures() == {"clip/001": "silent"}
    (path / "COMPLETE").write_text(json.dumps({"seconds": 3.0}))
    assert read_store(path).summary == {"seconds": 3.0}
    resumed.mark_complete({"seconds": 4.0})  # a finished rerun replaces the legacy marker
    assert (path / COMPLETE_MARKER).is_file() and read_store(path).summary == {"seconds": 4.0}


@pytest.mark.parametrize("name", ["musicnn.zarr", "mel-cp_resnet.zarr"])
def test_the_legacy_stores_of_the_tests_stay_readable(name):
    store = read_store(LEGACY / name)
    assert store.is_complete and store.done_shards() == {0} and "seconds" in store.summary


# ---------------------------------------------------------------------- direct (zarr-free) reads
N_DIRECT, SHARD, FRAMES, DIM = 11, 4, 6, 3


def _direct_arrays(n: int = N_DIRECT) -> list[np.ndarray | None]:
    """Clips of varying length, a failed one (row 5) and an all-zero one (row 2): zarr stores
    no chunk for the latter, so its rows read as the fill value."""
    rng = np.random.default_rng(7)
    arrays = [
        (rng.integers(-64, 64, (1 + r % FRAMES, DIM)) / 8).astype(np.float32) for r in range(n)
    ]
    arrays[2] = np.zeros((4, DIM), np.float32)
    arrays[5] = None
    return arrays


def _write(path, shards=None, arrays=None, compression="zstd"):
    store = _make(path, n=N_DIRECT, shard_size=SHARD, max_frames=FRAMES, compression=compression)
    arrays = _direct_arrays() if arrays is None else arrays
    for plan in store.shards():
        if shards is None or plan.index in shards:
            part = arrays[plan.start : plan.stop]
            failed = {
                store.clip_ids[plan.start + i]: "broken" for i, a in enumerate(part) if a is None
            }
            store.write_shard(plan.index, part, failed)
    if shards is None:
        store.mark_complete({})
    return store


def _assert_same(got: list[np.ndarray], want: list[np.ndarray]) -> None:
    assert len(got) == len(want)
    for a, b in zip(got, want, strict=True):
        assert a.dtype == b.dtype and a.shape == b.shape
        np.testing.assert_array_equal(a, b)


def _batches(n: int, seed: int = 0) -> list[list[str]]:
    rng = np.random.default_rng(seed)
    ids = _ids(n)
    rows = rng.integers(0, n, size=40)  # random order, with duplicates
    return [[ids[r] for r in rows[k : k + 8]] for k in range(0, len(rows), 8)] + [ids, ids[::-1]]


@pytest.fixture(params=["zstd", None], ids=["zstd", "raw"])
def written(tmp_path, request):
    _write(tmp_path / "s.zarr", compression=request.param)
    return tmp_path / "s.zarr"


def test_compression_is_part_of_the_layout(tmp_path):
    path = tmp_path / "s.zarr"
    _write(path, shards={0}, compression=None)
    codecs = json.loads((path / "data" / "zarr.json").read_text())["codecs"]
    assert [c["name"] for c in codecs[0]["configuration"]["codecs"]] == ["bytes"]
    with pytest.raises(StoreError, match="another layout"):
        _make(path, n=N_DIRECT, shard_size=SHARD, max_frames=FRAMES)  # zstd asked for
    with pytest.raises(ValueError, match="compression"):
        _make(tmp_path / "t.zarr", compression="lz4")


def test_stores_from_before_the_compression_choice_reopen_as_zstd(tmp_path):
    path = tmp_path / "s.zarr"
    _write(path, shards={0})
    attrs_path = path / "zarr.json"
    meta = json.loads(attrs_path.read_text())
    del meta["attributes"]["layout"]["compression"]
    attrs_path.write_text(json.dumps(meta))
    store = _make(path, n=N_DIRECT, shard_size=SHARD, max_frames=FRAMES)
    assert store.done_shards() == {0}


def test_direct_reads_equal_the_zarr_api(written):
    direct, ref = read_store(written), read_store(written, direct=False)
    assert direct.reads_directly and not ref.reads_directly
    arrays = _direct_arrays()
    for row, clip in enumerate(_ids(N_DIRECT)):
        got = direct.read(clip)
        _assert_same([got], [ref.read(clip)])
        expected = np.zeros((0, DIM)) if arrays[row] is None else arrays[row]
        np.testing.assert_array_equal(got, expected.astype(np.float16))
    for batch in _batches(N_DIRECT):
        _assert_same(direct.read_batch(batch), ref.read_batch(batch))
        block, n_frames = direct.read_padded(batch)
        ref_block, ref_n = ref.read_padded(batch)
        np.testing.assert_array_equal(block, ref_block)
        np.testing.assert_array_equal(n_frames, ref_n)
        assert block.shape == (len(batch), FRAMES, DIM) and n_frames.dtype == np.int32
        for j, clip in enumerate(batch):
            np.testing.assert_array_equal(block[j, : n_frames[j]], ref.read(clip))
            assert not block[j, n_frames[j] :].any()
    assert direct.read_batch([]) == []


def test_incomplete_store_reads_right_and_sees_later_shards(tmp_path):
    path = tmp_path / "s.zarr"
    writer = _write(path, shards={0, 2})
    direct = read_store(path, require_complete=False)
    ref = read_store(path, require_complete=False, direct=False)
    assert direct.reads_directly
    _assert_same(direct.read_batch(_ids(N_DIRECT)), ref.read_batch(_ids(N_DIRECT)))
    assert direct.read("clip/005").shape == (0, DIM)  # shard 1 absent: no frames yet
    arrays = _direct_arrays()
    writer.write_shard(1, arrays[4:8], {"clip/005": "broken"})
    after = read_store(path, require_complete=False)
    np.testing.assert_array_equal(after.read("clip/004"), arrays[4].astype(np.float16))
    # The writer's own reads see what it wrote.
    np.testing.assert_array_equal(writer.read("clip/006"), arrays[6].astype(np.float16))


def _edit_data_metadata(path, edit) -> None:
    meta_path = path / "data" / "zarr.json"
    meta = json.loads(meta_path.read_text())
    edit(meta)
    meta_path.write_text(json.dumps(meta))


def _gzip_inner(meta):
    meta["codecs"][0]["configuration"]["codecs"][1] = {
        "name": "gzip",
        "configuration": {"level": 1},
    }


def _unsharded(meta):
    meta["chunk_grid"]["configuration"]["chunk_shape"] = [1, FRAMES, DIM]
    meta["codecs"] = meta["codecs"][0]["configuration"]["codecs"]


def _crc_free_index(meta):
    meta["codecs"][0]["configuration"]["index_codecs"] = [
        {"name": "bytes", "configuration": {"endian": "little"}}
    ]


@pytest.mark.parametrize("edit", [_gzip_inner, _unsharded, _crc_free_index])
def test_other_layouts_are_read_through_zarr(tmp_path, edit):
    path = tmp_path / "s.zarr"
    _make(path, n=N_DIRECT, shard_size=SHARD, max_frames=FRAMES)
    _edit_data_metadata(path, edit)  # before any chunk is written: zarr writes this layout
    _write(path)
    store = read_store(path)
    assert not store.reads_directly
    arrays = _direct_arrays()
    for row, clip in enumerate(_ids(N_DIRECT)):
        expected = np.zeros((0, DIM)) if arrays[row] is None else arrays[row]
        np.testing.assert_array_equal(store.read(clip), expected.astype(np.float16))
    for batch in _batches(N_DIRECT, seed=1):
        _assert_same(store.read_batch(batch), [store.read(c) for c in batch])


def test_damaged_shard_index_is_an_error(written):
    shard = written / "data" / "c" / "1" / "0" / "0"
    raw = bytearray(shard.read_bytes())
    raw[-10] ^= 0xFF  # inside the index
    shard.write_bytes(bytes(raw))
    store = read_store(written)
    np.testing.assert_array_equal(store.read("clip/000"), _direct_arrays()[0].astype(np.float16))
    with pytest.raises(StoreError, match="checksum"):
        store.read("clip/004")


def test_open_shard_files_are_bounded_and_closed(written):
    store = read_store(written)
    store._reader.max_open = 2
    ref = read_store(written, direct=False)
    for _ in range(2):
        _assert_same(store.read_batch(_ids(N_DIRECT)), ref.read_batch(_ids(N_DIRECT)))
        assert len(store._reader._files) <= 2
    fds = list(store._reader._files.values())
    assert fds
    del store
    for fd in fds:  # closed when the store was collected
        with pytest.raises(OSError):
            os.fstat(fd)


def test_pickled_store_reads_the_same(written):
    store = read_store(written)
    first = store.read_batch(_ids(N_DIRECT))  # opens shard files
    clone = pickle.loads(pickle.dumps(store))
    assert clone.reads_directly and not clone._reader._files
    _assert_same(clone.read_batch(_ids(N_DIRECT)), first)


_FORKED = {}


def _read_in_child(batch):
    store = _FORKED["store"]
    return [a.copy() for a in store.read_batch(batch)], store._reader._pid == os.getpid()


@pytest.mark.skipif("fork" not in multiprocessing.get_all_start_methods(), reason="no fork")
def test_reads_after_fork(written):
    store = read_store(written)
    batch = [*_ids(N_DIRECT)[::-1], "clip/003", "clip/003"]
    want = store.read_batch(batch)  # the parent holds open shard files when forking
    _FORKED["store"] = store
    try:
        with multiprocessing.get_context("fork").Pool(1) as pool:
            got, own_files = pool.apply(_read_in_child, (batch,))
    finally:
        _FORKED.clear()
    assert own_files
    _assert_same(got, want)
    _assert_same(store.read_batch(batch), want)  # the parent's files still work
