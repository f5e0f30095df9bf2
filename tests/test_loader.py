"""Loader: dataset over small stores written here, sampler order, mixup and SpecAugment."""

from __future__ import annotations

import multiprocessing
import pickle
import subprocess
import sys
import textwrap
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from pipeline.loader import (
    ClipDataset,
    ShardAwareSampler,
    collate,
    draw_mixup,
    mixup,
    spec_augment,
)
from pipeline.manifest import make_manifest
from pipeline.store import StoreError, open_store

CLASSES = ["guitar", "piano", "voice"]
IDS = [f"song/{i:03d}" for i in range(10)]
SPLITS = ["train"] * 7 + ["valid"] * 2 + ["test"]
N_MELS, MEL_FRAMES = 8, 6
SHORT = "song/003"  # fewer frames than the stores' maximum
A_FAILED = "song/005"  # teacher A could not produce it
B_ABSENT = "song/006"  # not in teacher B's store at all
MEL_FAILED = "song/009"  # the only test clip; the mel store could not produce it
A_SHAPE, B_SHAPE = (3, 5), (2, 2)
B_SHIFT, B_SCALE = [1.0, -2.0], [2.0, 4.0]


def _values(rng: np.random.Generator, shape: tuple[int, int]) -> np.ndarray:
    """Eighths in [-8, 8): exact in float16, so stored values compare exactly."""
    return (rng.integers(-64, 64, size=shape) / 8).astype(np.float32)


def _write_store(path, ids, dim, max_frames, shard_size, arrays, failures, *, fp=None, done=True):
    store = open_store(
        path,
        fingerprint=fp or {"name": path.name},
        clip_ids=ids,
        dim=dim,
        max_frames=max_frames,
        shard_size=shard_size,
    )
    for plan in store.shards():
        shard_ids = ids[plan.start : plan.stop]
        store.write_shard(
            plan.index,
            [arrays.get(c) for c in shard_ids],
            {c: failures[c] for c in shard_ids if c in failures},
        )
    if done:
        store.mark_complete({})
    return path


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("loader")
    rng = np.random.default_rng(0)
    mel = {c: _values(rng, (4 if c == SHORT else MEL_FRAMES, N_MELS)) for c in IDS}
    a = {c: _values(rng, (2 if c == SHORT else A_SHAPE[0], A_SHAPE[1])) for c in IDS}
    b = {c: _values(rng, (1 if c == SHORT else B_SHAPE[0], B_SHAPE[1])) for c in IDS}
    del mel[MEL_FAILED], a[A_FAILED], b[B_ABSENT]
    b_ids = [c for c in IDS if c != B_ABSENT]
    paths = {
        "mel": _write_store(
            root / "mel-student.zarr", IDS, N_MELS, MEL_FRAMES, 4, mel,
            {MEL_FAILED: "file not found"},
        ),
        "a": _write_store(
            root / "teacher-a.zarr", IDS, A_SHAPE[1], A_SHAPE[0], 4, a,
            {A_FAILED: "cannot decode"},
        ),
        "b": _write_store(
            root / "teacher-b.zarr", b_ids, B_SHAPE[1], B_SHAPE[0], 3, b, {},
            fp={"name": "b", "load_shift": B_SHIFT, "load_scale": B_SCALE},
        ),
    }  # fmt: skip
    labels = rng.integers(0, 2, size=(len(IDS), len(CLASSES)))
    known = rng.random(labels.shape) < 0.6
    known[0] = [True, False, True]
    labels[0] = [1, 1, 0]  # the unknown 1 must come out as 0
    manifest = make_manifest(
        "toy",
        clip_ids=IDS,
        paths=[f"/nowhere/{i}.wav" for i in range(len(IDS))],
        splits=SPLITS,
        classes=CLASSES,
        labels=labels,
        mask=known,
        durations_s=[1.0] * len(IDS),
        check_paths=False,
    )
    return {
        "root": root,
        "paths": paths,
        "manifest": manifest,
        "mel": mel,
        "a": a,
        "b": b,
        "labels": labels,
        "known": known,
    }


def _train(data, **kw) -> ClipDataset:
    p = data["paths"]
    return ClipDataset(data["manifest"], "train", p["mel"], [p["a"], p["b"]], **kw)


def _wrap(array: np.ndarray, frames: int) -> np.ndarray:
    """Independent reference for wrap padding / cropping, via np.tile."""
    reps = -(-frames // len(array))
    return np.tile(array, (reps, 1))[:frames]


# ------------------------------------------------------------------------------ dataset


def test_items_carry_stored_values_labels_and_mask(data):
    ds = _train(data)
    assert ds.clip_ids == ["song/000", "song/001", "song/002", "song/003", "song/004"]
    assert len(ds) == 5
    assert ds.classes == CLASSES and ds.n_mels == N_MELS and ds.mel_frames == MEL_FRAMES
    assert ds.teacher_shapes == [A_SHAPE, B_SHAPE]
    np.testing.assert_array_equal(ds.shard_ids, [0, 0, 0, 0, 1])
    assert ds.labels.dtype == np.float32 and ds.mask.dtype == bool
    assert ds.labels.shape == ds.mask.shape == (5, 3)
    for i, clip in enumerate(ds.clip_ids):
        row = IDS.index(clip)
        item = ds[i]
        assert item["index"] == i
        mel = item["mel"]
        assert mel.dtype == torch.float32 and mel.shape == (N_MELS, MEL_FRAMES)
        np.testing.assert_array_equal(mel.numpy(), _wrap(data["mel"][clip], MEL_FRAMES).T)
        teacher_a, teacher_b = item["teachers"]
        assert teacher_a.dtype == teacher_b.dtype == torch.float32
        np.testing.assert_array_equal(teacher_a.numpy(), _wrap(data["a"][clip], A_SHAPE[0]))
        expected_b = (_wrap(data["b"][clip], B_SHAPE[0]) - B_SHIFT) / B_SCALE
        np.testing.assert_allclose(teacher_b.numpy(), expected_b, rtol=1e-6)
        known = data["known"][row]
        assert item["mask"].dtype == torch.bool
        np.testing.assert_array_equal(item["mask"].numpy(), known)
        assert item["labels"].dtype == torch.float32
        np.testing.assert_array_equal(
            item["labels"].numpy(), np.where(known, data["labels"][row], 0)
        )
    first = ds[0]
    assert first["labels"].tolist() == [1.0, 0.0, 0.0]
    assert first["mask"].tolist() == [True, False, True]


def test_short_clip_wraps_and_mel_frames_crops_or_wraps(data):
    ds = _train(data)
    short = ds[ds.clip_ids.index(SHORT)]
    stored = data["mel"][SHORT]  # 4 frames, padded to 6 by repeating frames 0 and 1
    np.testing.assert_array_equal(short["mel"].numpy().T, stored[[0, 1, 2, 3, 0, 1]])
    np.testing.assert_array_equal(short["teachers"][0].numpy(), data["a"][SHORT][[0, 1, 0]])

    cropped = _train(data, mel_frames=4)
    assert cropped.mel_frames == 4
    np.testing.assert_array_equal(cropped[0]["mel"].numpy().T, data["mel"]["song/000"][:4])
    longer = _train(data, mel_frames=15)
    np.testing.assert_array_equal(
        longer[0]["mel"].numpy().T, data["mel"]["song/000"][np.arange(15) % MEL_FRAMES]
    )
    assert longer[0]["teachers"][0].shape == A_SHAPE  # teacher frames follow their store


def test_failed_and_absent_clips_are_skipped_with_their_cause(data):
    ds = _train(data)
    assert ds.skipped == {
        A_FAILED: "teacher-a.zarr: cannot decode",
        B_ABSENT: "not in teacher-b.zarr",
    }
    mel_only = ClipDataset(data["manifest"], "train", data["paths"]["mel"])
    assert mel_only.skipped == {} and len(mel_only) == 7
    assert mel_only[5]["teachers"] == []


def test_split_filtering_and_nothing_usable(data):
    p = data["paths"]
    valid = ClipDataset(data["manifest"], "valid", p["mel"], [p["a"], p["b"]])
    assert valid.clip_ids == ["song/007", "song/008"] and valid.skipped == {}
    np.testing.assert_array_equal(valid.shard_ids, [1, 2])
    with pytest.raises(ValueError, match="no usable clip in split 'test'.*file not found") as err:
        ClipDataset(data["manifest"], "test", p["mel"], [p["a"]])
    assert "mel-student.zarr" in str(err.value)
    with pytest.raises(ValueError, match="no usable clip in split 'nonsense'"):
        ClipDataset(data["manifest"], "nonsense", p["mel"])


def test_incomplete_or_missing_store_is_refused(data, tmp_path):
    mel = {c: np.ones((2, N_MELS), np.float32) for c in IDS}
    half = _write_store(tmp_path / "half.zarr", IDS, N_MELS, 2, 4, mel, {}, done=False)
    with pytest.raises(StoreError, match="incomplete"):
        ClipDataset(data["manifest"], "train", half)
    with pytest.raises(StoreError, match="incomplete"):
        ClipDataset(data["manifest"], "train", data["paths"]["mel"], [half])
    with pytest.raises(StoreError, match="no clip store"):
        ClipDataset(data["manifest"], "train", tmp_path / "absent.zarr")


def _assert_items_equal(got, want):
    assert got.keys() == want.keys()
    assert got["index"] == want["index"]
    for key in ("mel", "labels", "mask"):
        assert torch.equal(got[key], want[key])
    assert len(got["teachers"]) == len(want["teachers"])
    for x, y in zip(got["teachers"], want["teachers"], strict=True):
        assert torch.equal(x, y)


def test_getitems_equals_per_item_reads_and_pickle_drops_handles(data):
    ds = _train(data)
    order = [4, 0, 3, 0, 2, ds.clip_ids.index(SHORT)]  # a duplicate, a clip that wraps
    batch = ds.__getitems__(order)
    _assert_batches_equal([batch], [collate([ds[i] for i in order])])
    assert collate(batch) is batch  # an already built batch passes through
    clone = pickle.loads(pickle.dumps(ds))
    assert clone._stores is None
    _assert_items_equal(clone[3], ds[3])
    with pytest.raises(IndexError):
        ds.__getitems__([5])


def test_collate_shapes(data):
    ds = _train(data)
    batch = collate([ds[i] for i in (2, 0, 1)])
    assert batch["mel"].shape == (3, N_MELS, MEL_FRAMES) and batch["mel"].dtype == torch.float32
    assert batch["labels"].shape == (3, 3) and batch["labels"].dtype == torch.float32
    assert batch["mask"].shape == (3, 3) and batch["mask"].dtype == torch.bool
    assert [t.shape for t in batch["teachers"]] == [(3, *A_SHAPE), (3, *B_SHAPE)]
    assert batch["index"].tolist() == [2, 0, 1] and batch["index"].dtype == torch.int64
    no_teachers = collate([{**ds[0], "teachers": []}])
    assert no_teachers["teachers"] == []


def _batches(ds, sampler, **kw):
    loader = DataLoader(ds, batch_size=2, sampler=sampler, collate_fn=collate, **kw)
    return list(loader)


def _assert_batches_equal(got, want):
    assert len(got) == len(want)
    for x, y in zip(got, want, strict=True):
        for key in ("mel", "labels", "mask", "index"):
            assert torch.equal(x[key], y[key])
        for a, b in zip(x["teachers"], y["teachers"], strict=True):
            assert torch.equal(a, b)


def test_dataloader_workers_fork_give_the_same_batches(data):
    if "fork" not in multiprocessing.get_all_start_methods():
        pytest.skip("no fork on this platform")
    ds = _train(data)
    ds[0]  # handles opened in the parent must not be reused by the forked workers
    sampler = ShardAwareSampler(ds.shard_ids, window=1, seed=3)
    want = _batches(ds, sampler)
    got = _batches(
        ds, sampler, num_workers=2, multiprocessing_context=multiprocessing.get_context("fork")
    )
    _assert_batches_equal(got, want)
    assert sorted(torch.cat([b["index"] for b in got]).tolist()) == list(range(len(ds)))


def test_dataloader_worker_spawn(data):
    ds = _train(data)
    sampler = ShardAwareSampler(ds.shard_ids, window=2, seed=1)
    want = _batches(ds, sampler)
    got = _batches(
        ds, sampler, num_workers=1, multiprocessing_context=multiprocessing.get_context("spawn")
    )
    _assert_batches_equal(got, want)


# ------------------------------------------------------------------------------ sampler

SHARDS = np.repeat([0, 1, 2, 3, 4, 5, 6], [4, 4, 4, 4, 4, 4, 3])  # 27 items, like rows // 4
UNEVEN = np.array([5, 5, 0, 9, 9, 9, 2, 0, 5, 7, 7, 7, 7, 1, 9, 0, 3])  # unsorted, uneven shards


def _windows(order: list[int], shard_ids: np.ndarray, window: int) -> list[set[int]]:
    """Split a visiting order into windows of ``window`` whole shards (the last may hold fewer);
    fail if a window would mix more shards or a shard's items are spread over two windows."""
    size = Counter(shard_ids.tolist())
    windows: list[set[int]] = []
    current: set[int] = set()
    count = done = 0
    for i in order:
        shard = int(shard_ids[i])
        assert not any(shard in w for w in windows), f"shard {shard} came back later"
        current.add(shard)
        count, done = count + 1, done + 1
        assert len(current) <= window, f"window holds shards {sorted(current)}"
        whole = count == sum(size[s] for s in current)
        if whole and (len(current) == window or done == len(order)):
            windows.append(current)
            current, count = set(), 0
    assert not current, "the last window is incomplete"
    return windows


@pytest.mark.parametrize("shard_ids", [SHARDS, UNEVEN], ids=["contiguous", "uneven"])
@pytest.mark.parametrize("window", [1, 2, 3, 4, 10])
def test_sampler_yields_each_item_once_within_shard_windows(shard_ids, window):
    sampler = ShardAwareSampler(shard_ids, window=window, seed=7)
    for epoch in range(3):
        sampler.set_epoch(epoch)
        order = list(sampler)
        assert len(order) == len(sampler) == len(shard_ids)
        assert sorted(order) == list(range(len(shard_ids)))
        windows = _windows(order, shard_ids, window)
        n_shards = len(np.unique(shard_ids))
        assert len(windows) == -(-n_shards // window)


def test_sampler_is_deterministic_per_seed_and_epoch():
    a = ShardAwareSampler(SHARDS, window=2, seed=11)
    b = ShardAwareSampler(SHARDS, window=2, seed=11)
    assert list(a) == list(b)
    first = list(a)
    a.set_epoch(1)
    assert list(a) != first
    b.set_epoch(1)
    assert list(a) == list(b)
    assert list(ShardAwareSampler(SHARDS, window=2, seed=12)) != first
    in_order = ShardAwareSampler(UNEVEN, shuffle=False)
    in_order.set_epoch(5)
    assert list(in_order) == list(range(len(UNEVEN)))


@pytest.mark.parametrize("shuffle", [True, False])
@pytest.mark.parametrize("world_size", [2, 3])
def test_sampler_ranks_partition_whole_shards(shuffle, world_size):
    for epoch in range(3):
        per_rank = []
        for rank in range(world_size):
            sampler = ShardAwareSampler(
                UNEVEN, window=2, seed=4, shuffle=shuffle, rank=rank, world_size=world_size
            )
            sampler.set_epoch(epoch)
            order = list(sampler)
            assert len(order) == len(sampler)
            if not shuffle:
                assert order == sorted(order)
            per_rank.append(order)
        assert sorted(i for order in per_rank for i in order) == list(range(len(UNEVEN)))
        shard_sets = [{int(UNEVEN[i]) for i in order} for order in per_rank]
        for r in range(world_size):
            for q in range(r + 1, world_size):
                assert not shard_sets[r] & shard_sets[q]


def test_sampler_rejects_bad_arguments():
    with pytest.raises(ValueError):
        ShardAwareSampler(SHARDS, window=0)
    with pytest.raises(ValueError):
        ShardAwareSampler(SHARDS, rank=2, world_size=2)
    assert list(ShardAwareSampler([])) == [] and len(ShardAwareSampler([])) == 0


# ------------------------------------------------------------------------------ mixup


def _toy_batch(n=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {
        "mel": torch.randn(n, 4, 5, generator=g),
        "labels": (torch.rand(n, 3, generator=g) > 0.5).float(),
        "mask": torch.rand(n, 3, generator=g) > 0.4,
        "teachers": [torch.randn(n, 2, 3, generator=g), torch.randn(n, 4, generator=g)],
        "index": torch.arange(n),
    }


def test_mixup_matches_the_formula_for_every_tensor():
    batch = _toy_batch()
    batch["labels"] *= batch["mask"]  # unknown labels are 0, as the dataset gives them
    before = {k: v.clone() for k, v in batch.items() if k != "teachers"}
    out = mixup(batch, alpha=0.4, generator=torch.Generator().manual_seed(5))
    lam, perm = out["mixup_lambda"], out["mixup_perm"]
    same_lam, same_perm = draw_mixup(6, alpha=0.4, generator=torch.Generator().manual_seed(5))
    assert lam == same_lam and torch.equal(perm, same_perm)
    assert 0.5 <= lam <= 1.0
    assert sorted(perm.tolist()) == list(range(6))
    for key in ("mel", "labels"):
        torch.testing.assert_close(out[key], lam * batch[key] + (1 - lam) * batch[key][perm])
    for got, x in zip(out["teachers"], batch["teachers"], strict=True):
        torch.testing.assert_close(got, lam * x + (1 - lam) * x[perm])
    assert torch.equal(out["mask"], batch["mask"] | batch["mask"][perm])
    assert torch.equal(out["index"], batch["index"])
    for key, value in before.items():  # input untouched
        assert torch.equal(batch[key], value)


def test_mixup_lambda_at_least_half_deterministic_and_disabled_by_alpha_zero():
    batch = _toy_batch()
    lams = []
    for seed in range(30):
        a = mixup(batch, alpha=1.0, generator=torch.Generator().manual_seed(seed))
        b = mixup(batch, alpha=1.0, generator=torch.Generator().manual_seed(seed))
        assert a["mixup_lambda"] == b["mixup_lambda"]
        assert torch.equal(a["mixup_perm"], b["mixup_perm"]) and torch.equal(a["mel"], b["mel"])
        lams.append(a["mixup_lambda"])
    assert min(lams) >= 0.5 and len(set(lams)) == len(lams)
    assert mixup(batch, alpha=0.0, generator=torch.Generator()) is batch


# ------------------------------------------------------------------------------ SpecAugment


def _masked_bands(orig: torch.Tensor, out: torch.Tensor) -> tuple[list[int], list[int]]:
    changed = out != orig  # (F, T)
    rows = [f for f in range(orig.shape[0]) if changed[f].all()]
    cols = [t for t in range(orig.shape[1]) if changed[:, t].all()]
    return rows, cols


def test_spec_augment_masks_one_band_each_within_bounds():
    n, f, t, fm, tm = 64, 16, 40, 6, 9
    mel = torch.randn(n, f, t, generator=torch.Generator().manual_seed(0)) + 3.0
    original = mel.clone()
    out = spec_augment(mel, freq_mask=fm, time_mask=tm, generator=torch.Generator().manual_seed(1))
    assert out is not mel and out.shape == mel.shape
    assert torch.equal(mel, original)  # input untouched
    widths_f, widths_t = set(), set()
    for x, y in zip(mel, out, strict=True):
        rows, cols = _masked_bands(x, y)
        # one contiguous band each, narrower than the bound
        assert not rows or rows == list(range(rows[0], rows[0] + len(rows)))
        assert not cols or cols == list(range(cols[0], cols[0] + len(cols)))
        assert len(rows) < fm and len(cols) < tm
        widths_f.add(len(rows))
        widths_t.add(len(cols))
        hit = torch.zeros(f, t, dtype=torch.bool)
        hit[rows, :] = True
        hit[:, cols] = True
        assert torch.equal(y[~hit], x[~hit])  # the rest is unchanged
        assert torch.allclose(y[hit], x.mean().expand(int(hit.sum())))  # filled with the mean
    assert widths_f == set(range(fm)) and widths_t == set(range(tm))  # every width occurs

    again = spec_augment(
        mel, freq_mask=fm, time_mask=tm, generator=torch.Generator().manual_seed(1)
    )
    assert torch.equal(again, out)
    other = spec_augment(
        mel, freq_mask=fm, time_mask=tm, generator=torch.Generator().manual_seed(2)
    )
    assert not torch.equal(other, out)


def test_spec_augment_zero_widths_clamping_and_shapes():
    mel = torch.randn(3, 4, 5)
    copy = spec_augment(mel, freq_mask=0, time_mask=0, generator=torch.Generator())
    assert torch.equal(copy, mel) and copy.data_ptr() != mel.data_ptr()
    # widths larger than the image: bands are capped to the image and the call still works
    big = spec_augment(mel, freq_mask=50, time_mask=50, generator=torch.Generator().manual_seed(0))
    assert big.shape == mel.shape
    single = spec_augment(mel[0], freq_mask=3, time_mask=3, generator=torch.Generator())
    assert single.shape == (4, 5)
    channels = spec_augment(
        mel[:, None], freq_mask=3, time_mask=4, generator=torch.Generator().manual_seed(0)
    )
    flat = spec_augment(mel, freq_mask=3, time_mask=4, generator=torch.Generator().manual_seed(0))
    assert torch.equal(channels[:, 0], flat)


# ------------------------------------------------------------------------------ imports


def test_loader_imports_no_teacher_code():
    code = textwrap.dedent(
        """
        import sys
        import pipeline.loader
        banned = ("pipeline.teachers", "pipeline.extract", "pipeline.features", "musicnn",
                  "panns_inference", "_pipeline_panns_inference", "torchvggish")
        found = sorted(m for m in sys.modules if m.startswith(banned))
        assert not found, found
        """
    )
    root = Path(__file__).resolve().parents[1]
    subprocess.run([sys.executable, "-c", code], check=True, cwd=root, timeout=60)
