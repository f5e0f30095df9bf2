"""HDF5 clip stores: export from Zarr, reading through the loader, locating, training on them."""

from __future__ import annotations

import json
import multiprocessing
import os
import pickle
import signal
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from pipeline import cli
from pipeline.data.manifest import make_manifest
from pipeline.paths import h5_store_path, locate_store, manifest_path, read_manifest, store_path
from pipeline.stores import ClipStore, H5ClipStore, StoreError, export_h5, open_store, read_store
from pipeline.stores.status import existing_store, is_stale
from pipeline.train.data import store_paths
from pipeline.train.loader import ClipDataset, collate
from pipeline.train.samplers import ShardAwareSampler

DATASET = "toy"
CLASSES = ["guitar", "piano", "voice"]
N_CLIPS = 18
IDS = [f"song/{i:03d}" for i in range(N_CLIPS)]  # slashes: IDs are keys, never paths
SPLITS = ["train"] * 10 + ["valid"] * 4 + ["test"] * 4
MEL_STORE, TEACHER = "mel-mobile_fcn", "musicnn"
N_MELS, MEL_FRAMES = 32, 32
TEACHER_FRAMES, TEACHER_DIM = 3, 5
FAILED = "song/004"  # the teacher could not produce it: 0 frames, a recorded cause
MEL_FAILED = "song/015"  # a test clip without mels


def _values(rng: np.random.Generator, shape: tuple[int, int]) -> np.ndarray:
    """Eighths in [-8, 8): exact in float16, so stored values compare exactly."""
    return (rng.integers(-64, 64, size=shape) / 8).astype(np.float32)


def _write_zarr(
    path: Path, dim: int, max_frames: int, arrays, failures, *, fp, precisions=()
) -> Path:
    store = open_store(
        path, fingerprint=fp, clip_ids=IDS, dim=dim, max_frames=max_frames, shard_size=4
    )
    for precision in precisions:
        store.record_precision(precision)
    for plan in store.shards():
        shard = IDS[plan.start : plan.stop]
        store.write_shard(
            plan.index,
            [arrays.get(c) for c in shard],
            {c: failures[c] for c in shard if c in failures},
        )
    store.mark_complete({"clips": len(IDS), "failed": len(failures)})
    return path


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    """A data folder with a manifest, a mel store and a teacher store (Zarr)."""
    data = tmp_path_factory.mktemp("data")
    rng = np.random.default_rng(0)
    # Frame counts vary (some clips shorter than the stores' maximum).
    mel = {c: _values(rng, (MEL_FRAMES - i % 5, N_MELS)) for i, c in enumerate(IDS)}
    teacher = {c: _values(rng, (1 + i % TEACHER_FRAMES, TEACHER_DIM)) for i, c in enumerate(IDS)}
    del mel[MEL_FAILED], teacher[FAILED]
    _write_zarr(
        store_path(data, DATASET, MEL_STORE), N_MELS, MEL_FRAMES, mel,
        {MEL_FAILED: "file not found"}, fp={"frontend": "mobile_fcn", "n_mels": N_MELS},
    )  # fmt: skip
    _write_zarr(
        store_path(data, DATASET, TEACHER), TEACHER_DIM, TEACHER_FRAMES, teacher,
        {FAILED: "cannot decode: é"},
        fp={"teacher": TEACHER, "load_shift": [0.5] * TEACHER_DIM, "load_scale": [2.0] * 5},
        precisions=("fp32", "bf16"),
    )  # fmt: skip
    labels = np.tile(np.eye(3, dtype=int), (N_CLIPS // 3, 1))  # every class in every split
    manifest = make_manifest(
        DATASET,
        clip_ids=IDS,
        paths=[f"/nowhere/{i}.wav" for i in range(N_CLIPS)],
        splits=SPLITS,
        classes=CLASSES,
        labels=labels,
        durations_s=[10.0] * N_CLIPS,
        check_paths=False,
    )
    manifest.write(manifest_path(data, DATASET))
    return data


@pytest.fixture(scope="module")
def exported(data_dir: Path, tmp_path_factory) -> dict[str, Path]:
    """The two stores exported to HDF5 in a folder of their own."""
    out = tmp_path_factory.mktemp("h5")
    return {
        name: export_h5(store_path(data_dir, DATASET, name), out / f"{name}.h5", progress=False)
        for name in (MEL_STORE, TEACHER)
    }


def _h5_only_dir(data_dir: Path, exported: dict[str, Path], root: Path) -> Path:
    """A data folder sharing the manifest, with only the HDF5 stores."""
    other = root / "data"
    (other / "cache" / DATASET).mkdir(parents=True)
    (other / "manifests").symlink_to(data_dir / "manifests")
    for name, path in exported.items():
        (other / "cache" / DATASET / f"{name}.h5").symlink_to(path)
    return other


# ------------------------------------------------------------------------------ export


@pytest.mark.parametrize("name", [MEL_STORE, TEACHER])
def test_export_holds_every_clip_and_attribute(data_dir, exported, name):
    zarr_store = read_store(store_path(data_dir, DATASET, name))
    h5_store = read_store(exported[name])
    assert isinstance(zarr_store, ClipStore) and isinstance(h5_store, H5ClipStore)
    assert h5_store.is_complete
    assert h5_store.clip_ids == zarr_store.clip_ids == IDS
    assert h5_store.fingerprint == zarr_store.fingerprint
    assert h5_store.precisions == zarr_store.precisions
    assert h5_store.precisions == (["bf16", "fp32"] if name == TEACHER else [])
    assert h5_store.failures() == zarr_store.failures() and len(h5_store.failures()) == 1
    np.testing.assert_array_equal(h5_store.n_frames, zarr_store.n_frames)
    assert 0 in h5_store.n_frames.tolist()  # the failed clip
    for attr in ("dim", "max_frames", "shard_size"):
        assert getattr(h5_store, attr) == getattr(zarr_store, attr)
    assert len(h5_store) == len(zarr_store) and h5_store.shards() == zarr_store.shards()
    for clip in IDS:
        got, want = h5_store.read(clip), zarr_store.read(clip)
        assert got.dtype == want.dtype == np.float16 and got.shape == want.shape
        np.testing.assert_array_equal(got, want)
    batch = ["song/009", "song/001", "song/009", FAILED]
    for got, want in zip(h5_store.read_batch(batch), zarr_store.read_batch(batch), strict=True):
        np.testing.assert_array_equal(got, want)
    assert h5_store.read(FAILED if name == TEACHER else MEL_FAILED).shape == (0, h5_store.dim)
    assert h5_store.summary == {"clips": N_CLIPS, "failed": 1}


def test_file_is_plain_hdf5_for_other_tools(data_dir, exported):
    zarr_store = read_store(store_path(data_dir, DATASET, TEACHER))
    with h5py.File(exported[TEACHER], "r") as f:
        data = f["data"]
        assert data.shape == (N_CLIPS, TEACHER_FRAMES, TEACHER_DIM) and data.dtype == np.float16
        assert data.chunks == (1, TEACHER_FRAMES, TEACHER_DIM) and data.compression is None
        assert f["clip_id"].asstr()[:].tolist() == IDS
        assert json.loads(f.attrs["fingerprint"]) == zarr_store.fingerprint
        assert json.loads(f.attrs["layout"])["shard_size"] == 4 and bool(f.attrs["complete"])
        assert f["failures/clip_id"].asstr()[:].tolist() == [FAILED]
        assert f["failures/cause"].asstr()[:].tolist() == ["cannot decode: é"]
        row = IDS.index("song/002")
        n = f["n_frames"][row]
        np.testing.assert_array_equal(data[row, :n], zarr_store.read("song/002"))
        assert not data[row, n:].any()  # padding is zeros, as in the Zarr store


def test_store_pickles_without_its_handle(exported):
    store = read_store(exported[MEL_STORE])
    first = store.read("song/000")  # opens the data handle
    clone = pickle.loads(pickle.dumps(store))
    assert clone._h5 is None
    np.testing.assert_array_equal(clone.read("song/000"), first)


def test_incomplete_store_is_refused(tmp_path):
    source = tmp_path / "half.zarr"
    store = open_store(source, fingerprint={}, clip_ids=IDS, dim=2, max_frames=2, shard_size=4)
    store.write_shard(0, [np.ones((1, 2))] * 4, {})  # 1 of 5 shards, as a killed extraction
    out = tmp_path / "half.h5"
    with pytest.raises(StoreError, match=r"incomplete \(4 of 5 shards not done\)"):
        export_h5(source, out)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["half.zarr"]
    with pytest.raises(StoreError, match="no clip store"):
        export_h5(tmp_path / "absent.zarr", out)


def test_h5_file_without_complete_flag_is_refused(exported, tmp_path):
    copy = tmp_path / "copy.h5"
    copy.write_bytes(exported[TEACHER].read_bytes())
    with h5py.File(copy, "r+") as f:
        f.attrs["complete"] = False
    with pytest.raises(StoreError, match="incomplete"):
        read_store(copy)
    assert not read_store(copy, require_complete=False).is_complete


def _fail_on_block(monkeypatch, block: int, action) -> None:
    """Make the ``block``-th read of the source (counting from 1) run ``action``."""
    calls = []
    original = ClipStore.read_batch

    def read_batch(self, clip_ids):
        calls.append(1)
        if len(calls) == block:
            action()
        return original(self, clip_ids)

    monkeypatch.setattr(ClipStore, "read_batch", read_batch)


def _raise() -> None:
    raise RuntimeError("disk full")


def test_interrupted_export_leaves_no_file(data_dir, tmp_path, monkeypatch):
    source = store_path(data_dir, DATASET, MEL_STORE)
    out = tmp_path / "mel.h5"
    _fail_on_block(monkeypatch, 3, _raise)
    with pytest.raises(RuntimeError, match="disk full"):
        export_h5(source, out, block_bytes=1)  # one clip per block
    assert list(tmp_path.iterdir()) == []  # no final file, and the partial one was removed


def _killed_export(source: Path, out: Path) -> None:
    """Runs in a forked child: export, killed by SIGKILL at the third block."""
    mp = pytest.MonkeyPatch()
    _fail_on_block(mp, 3, lambda: os.kill(os.getpid(), signal.SIGKILL))
    export_h5(source, out, block_bytes=1, progress=False)


@pytest.mark.skipif("fork" not in multiprocessing.get_all_start_methods(), reason="no fork")
def test_killed_export_is_redone_from_scratch(data_dir, exported, tmp_path):
    source = store_path(data_dir, DATASET, MEL_STORE)
    out = tmp_path / "mel.h5"
    child = multiprocessing.get_context("fork").Process(target=_killed_export, args=(source, out))
    child.start()
    child.join(60)
    assert child.exitcode == -signal.SIGKILL
    partial = tmp_path / "mel.h5.partial"
    assert partial.is_file() and not out.exists()
    with pytest.raises(StoreError, match="not an HDF5 clip store"):  # even if renamed by hand
        read_store(partial.rename(tmp_path / "renamed.h5"))
    (tmp_path / "renamed.h5").rename(partial)

    assert export_h5(source, out, progress=False) == out
    assert not partial.exists()
    again, reference = read_store(out), read_store(exported[MEL_STORE])
    np.testing.assert_array_equal(again.n_frames, reference.n_frames)
    for got, want in zip(again.read_batch(IDS), reference.read_batch(IDS), strict=True):
        np.testing.assert_array_equal(got, want)


# ------------------------------------------------------------------------------ loader


def _datasets(data_dir, exported, split):
    manifest = read_manifest(data_dir, DATASET)
    zarr_paths = [store_path(data_dir, DATASET, n) for n in (MEL_STORE, TEACHER)]
    h5_paths = [exported[n] for n in (MEL_STORE, TEACHER)]
    return tuple(
        ClipDataset(manifest, split, mel, [teacher]) for mel, teacher in (zarr_paths, h5_paths)
    )


def _assert_same_items(a: dict, b: dict) -> None:
    for key in ("mel", "labels", "mask", "index"):
        assert torch.equal(torch.as_tensor(a[key]), torch.as_tensor(b[key])), key
    assert len(a["teachers"]) == len(b["teachers"]) == 1
    assert torch.equal(a["teachers"][0], b["teachers"][0])


@pytest.mark.parametrize("split", ["train", "test"])
def test_dataset_over_h5_gives_the_same_items(data_dir, exported, split):
    from_zarr, from_h5 = _datasets(data_dir, exported, split)
    assert from_h5.clip_ids == from_zarr.clip_ids
    assert {c: w.replace(".h5", ".zarr") for c, w in from_h5.skipped.items()} == from_zarr.skipped
    assert from_h5.skipped  # the failed clip of each split is left out, with its cause
    np.testing.assert_array_equal(from_h5.shard_ids, from_zarr.shard_ids)
    assert from_h5.teacher_shapes == from_zarr.teacher_shapes
    for i in range(len(from_zarr)):
        _assert_same_items(from_h5[i], from_zarr[i])
    order = list(reversed(range(len(from_zarr))))
    _assert_same_items(from_h5.__getitems__(order), from_zarr.__getitems__(order))


@pytest.mark.skipif("fork" not in multiprocessing.get_all_start_methods(), reason="no fork")
def test_forked_workers_give_the_same_batches(data_dir, exported):
    from_zarr, from_h5 = _datasets(data_dir, exported, "train")
    from_h5[0]  # the parent's open handle must not be used by the workers
    batches = []
    for dataset in (from_zarr, from_h5):
        sampler = ShardAwareSampler(dataset.shard_ids, window=2, seed=3)
        loader = DataLoader(
            dataset,
            batch_size=3,
            sampler=sampler,
            collate_fn=collate,
            num_workers=2,
            multiprocessing_context=multiprocessing.get_context("fork"),
        )
        batches.append(list(loader))
    assert len(batches[0]) == len(batches[1]) == 3
    for a, b in zip(*batches, strict=True):
        for key in ("mel", "labels", "mask", "index"):
            assert torch.equal(a[key], b[key]), key
        assert torch.equal(a["teachers"][0], b["teachers"][0])
    assert from_h5[1]["index"] == 1  # the parent's handle still works after the workers


# ------------------------------------------------------------------------------ locating, CLI


def test_locate_store_prefers_zarr_then_h5(tmp_path):
    zarr_path = tmp_path / "cache" / DATASET / "hear-m.zarr"
    h5_path = zarr_path.with_suffix(".h5")
    assert locate_store(tmp_path, DATASET, "hear:m") == zarr_path  # neither: the usual place
    h5_path.parent.mkdir(parents=True)
    h5_path.write_bytes(b"")
    assert locate_store(tmp_path, DATASET, "hear:m") == h5_path
    assert h5_store_path(tmp_path, DATASET, "hear:m") == h5_path
    zarr_path.mkdir()
    assert locate_store(tmp_path, DATASET, "hear-m") == zarr_path
    with pytest.raises(ValueError, match="cannot name a store"):
        locate_store(tmp_path, DATASET, "../up")


def test_training_finds_h5_stores_when_there_is_no_zarr(data_dir, exported, tmp_path):
    from pipeline.train.config import train_config

    cfg = train_config(DATASET, frontend="mobile_fcn", teacher=TEACHER)
    assert store_paths(cfg, data_dir)[0].suffix == ".zarr"
    mel, teachers = store_paths(cfg, _h5_only_dir(data_dir, exported, tmp_path))
    assert (mel.name, [t.name for t in teachers]) == ("mel-mobile_fcn.h5", ["musicnn.h5"])


def test_cli_export_prints_path_and_sizes(data_dir, capsys):
    out = h5_store_path(data_dir, DATASET, TEACHER)
    assert cli.main(["--data-dir", str(data_dir), "export", DATASET, TEACHER, "-q"]) == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith(f"{out}: {N_CLIPS} clips, ") and line.count(" MB") == 2
    assert str(store_path(data_dir, DATASET, TEACHER)) in line
    assert read_store(out).fingerprint["teacher"] == TEACHER
    # Where a .zarr exists it is still the one training reads.
    assert locate_store(data_dir, DATASET, TEACHER).suffix == ".zarr"
    out.unlink()

    other = data_dir / "elsewhere" / "t.h5"
    args = ["--data-dir", str(data_dir), "export", DATASET, TEACHER, "--format", "h5"]
    assert cli.main([*args, "--out", str(other), "-q"]) == 0
    assert capsys.readouterr().out.startswith(f"{other}: ")
    assert cli.main(["--data-dir", str(data_dir), "export", DATASET, "panns"]) == 2
    assert "no clip store at" in capsys.readouterr().err


def test_train_and_evaluate_on_h5_only_stores(data_dir, exported, tmp_path):
    from pipeline.evaluate.evaluation import evaluate_all
    from pipeline.train.config import train_config
    from pipeline.train.loop import train

    h5_dir = _h5_only_dir(data_dir, exported, tmp_path)
    cfg = train_config(
        DATASET,
        student_options={"base_channels": 4},
        frontend="mobile_fcn",
        teacher=TEACHER,
        batch_size=4,
        max_epochs=1,
        workers=0,
        device="cpu",
    )
    result = train(cfg, h5_dir, progress=False)
    assert result.epochs == 1 and np.isfinite(result.best_valid_map)
    stores = json.loads((result.run_dir / "stores.json").read_text())
    assert sorted(Path(p).name for p in stores) == ["mel-mobile_fcn.h5", "musicnn.h5"]
    lines = evaluate_all(h5_dir, DATASET, device="cpu")
    assert len(lines) == 2 and all("test mAP" in line for line in lines)
    metrics = json.loads(
        (h5_dir / "runs" / DATASET / f"probe-{TEACHER}" / "metrics.json").read_text()
    )
    assert metrics["clips"] == 3  # 4 test clips, one without mels


def test_cli_sees_complete_and_stale_h5_stores(data_dir, exported, tmp_path):
    mel_h5 = exported[MEL_STORE]
    fingerprint = read_store(mel_h5).fingerprint
    assert existing_store(mel_h5).is_complete
    assert not is_stale(mel_h5, fingerprint)
    assert is_stale(mel_h5, {**fingerprint, "n_mels": N_MELS + 1})
    assert existing_store(tmp_path / "absent.h5") is None
    assert existing_store(tmp_path / "absent.zarr") is None
    h5_dir = _h5_only_dir(data_dir, exported, tmp_path)
    assert locate_store(h5_dir, DATASET, MEL_STORE).suffix == ".h5"


# ------------------------------------------------------------------------------ batch reads


def _random_batches(seed: int) -> list[list[str]]:
    rng = np.random.default_rng(seed)
    rows = rng.integers(0, N_CLIPS, size=48)  # random order, with duplicates and failed clips
    return [[IDS[r] for r in rows[k : k + 12]] for k in range(0, len(rows), 12)] + [IDS[::-1]]


@pytest.mark.parametrize("name", [MEL_STORE, TEACHER])
def test_batches_in_random_order_equal_the_zarr_store(data_dir, exported, name):
    h5_store, by_slices = read_store(exported[name]), read_store(exported[name], direct=False)
    zarr_store = read_store(store_path(data_dir, DATASET, name), direct=False)
    assert h5_store.reads_directly and not by_slices.reads_directly
    for batch in _random_batches(seed=3):
        want = zarr_store.read_batch(batch)
        for reader in (h5_store, by_slices):
            got = reader.read_batch(batch)
            assert len(got) == len(want)
            for a, b in zip(got, want, strict=True):
                assert a.dtype == b.dtype and a.shape == b.shape
                np.testing.assert_array_equal(a, b)
        block, n_frames = h5_store.read_padded(batch)
        zarr_block, zarr_n = zarr_store.read_padded(batch)
        np.testing.assert_array_equal(block, zarr_block)
        np.testing.assert_array_equal(n_frames, zarr_n)


def test_compressed_export_is_read_by_slices(data_dir, exported, tmp_path):
    source = store_path(data_dir, DATASET, MEL_STORE)
    lzf = read_store(export_h5(source, tmp_path / "lzf.h5", compression="lzf", progress=False))
    assert not lzf.reads_directly
    reference = read_store(exported[MEL_STORE])
    for batch in _random_batches(seed=4):
        for a, b in zip(lzf.read_batch(batch), reference.read_batch(batch), strict=True):
            assert a.shape == b.shape
            np.testing.assert_array_equal(a, b)
