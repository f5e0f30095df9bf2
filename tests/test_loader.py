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
from torch.utils.data import BatchSampler, DataLoader

from pipeline.data.manifest import make_manifest
from pipeline.stores import StoreError, open_store
from pipeline.train.augment import draw_mixup, mixup, spec_augment
from pipeline.train.device_data import (
    CachedLoader,
    DeviceCache,
    DevicePrefetcher,
    cache_bytes,
    compact_values,
    use_device_cache,
)
from pipeline.train.loader import ClipDataset, collate
from pipeline.train.samplers import MixupBatchSampler, ShardAwareSampler

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


def test_mean_embeddings_are_each_clips_time_mean(data):
    ds = _train(data)
    for k in range(2):
        want = np.stack([ds[i]["teachers"][k].mean(dim=0).numpy() for i in range(len(ds))])
        np.testing.assert_allclose(ds.mean_embeddings(k, chunk=2), want, rtol=1e-6)


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


def test_mixup_batches_carry_uniform_partners_from_the_whole_split():
    def batches(seed, epoch, rank):
        sampler = ShardAwareSampler(SHARDS, window=1, seed=seed, rank=rank, world_size=2)
        mixer = MixupBatchSampler(sampler, batch_size=3, n_items=len(SHARDS), seed=seed, rank=rank)
        mixer.set_epoch(epoch)
        assert sampler.epoch == epoch  # forwarded
        return sampler, mixer, list(mixer)

    counts = np.zeros(len(SHARDS), dtype=int)
    outside = 0
    for epoch in range(300):
        sampler, mixer, got = batches(7, epoch, 0)
        order = list(sampler)
        assert len(got) == len(mixer) == len(order) // 3
        for k, batch in enumerate(got):
            assert len(batch) == 6 and batch[:3] == order[3 * k : 3 * k + 3]  # whole batches
            partners = batch[3:]
            counts += np.bincount(partners, minlength=len(SHARDS))
            outside += sum(p not in order for p in partners)  # another rank's shards
    assert outside > 0
    # Uniform over all 27 items: every count within 25 % of the mean (about 890 each).
    assert counts.min() > 0.75 * counts.mean() and counts.max() < 1.25 * counts.mean()
    assert batches(7, 3, 0)[2] == batches(7, 3, 0)[2]  # fixed by (seed, epoch, rank)
    assert batches(7, 3, 0)[2] != batches(7, 4, 0)[2]
    assert [b[3:] for b in batches(7, 3, 0)[2]] != [b[3:] for b in batches(7, 3, 1)[2]]


def test_mixup_mixes_each_clip_with_its_partner_by_its_own_lambda(data):
    ds = _train(data)
    short = ds.clip_ids.index(SHORT)
    # As the loader reads it: 4 clips, then their partners (one short clip, one repeat).
    batch = ds.__getitems__([0, 1, 2, 4, short, 4, 0, 3])
    lam = draw_mixup(4, alpha=0.3, generator=torch.Generator().manual_seed(5))
    assert lam.shape == (4,) and len(set(lam.tolist())) == 4  # one λ per clip
    assert (lam >= 0.5).all() and (lam <= 1.0).all()
    out = mixup(batch, lam=lam)
    w = lam.view(4, 1, 1)
    torch.testing.assert_close(out["mel"], w * batch["mel"][:4] + (1 - w) * batch["mel"][4:])
    torch.testing.assert_close(
        out["labels"], lam[:, None] * batch["labels"][:4] + (1 - lam[:, None]) * batch["labels"][4:]
    )
    assert torch.equal(out["mask"], batch["mask"][:4] | batch["mask"][4:])  # OR-ed
    for got, x in zip(out["teachers"], batch["teachers"], strict=True):  # same λ, every teacher
        torch.testing.assert_close(got, w * x[:4] + (1 - w) * x[4:])
    assert out["index"].tolist() == [0, 1, 2, 4] and out["partner"].tolist() == [short, 4, 0, 3]
    assert torch.equal(out["mixup_lambda"], lam)
    # The short partner (2 of 3 frames of teacher A, 1 of 2 of teacher B) enters looped, never
    # as zero padding: each frame mixes stored content of both clips.
    loaded = {"a": lambda x: x, "b": lambda x: (x - B_SHIFT) / np.asarray(B_SCALE)}
    for name, got in zip(("a", "b"), out["teachers"], strict=True):
        frames = got.shape[1]
        partner = loaded[name](_wrap(data[name][SHORT], frames))
        first = loaded[name](_wrap(data[name][ds.clip_ids[0]], frames))
        expected = lam[0].item() * first + (1 - lam[0].item()) * partner
        np.testing.assert_allclose(got[0].numpy(), expected, rtol=1e-6)
    with pytest.raises(ValueError, match="2 × 3 clips"):
        mixup(batch, lam=lam[:3])


def test_mixup_lambda_is_folded_beta_and_deterministic():
    from scipy.stats import beta, kstest

    lam = draw_mixup(5000, alpha=0.3, generator=torch.Generator().manual_seed(0)).numpy()
    again = draw_mixup(5000, alpha=0.3, generator=torch.Generator().manual_seed(0)).numpy()
    assert np.array_equal(lam, again) and lam.min() >= 0.5 and lam.max() <= 1.0
    # max(λ, 1 − λ) of λ ~ Beta(α, α): CDF 2·F(x) − 1 on [0.5, 1].
    assert kstest(lam, lambda x: 2 * beta.cdf(x, 0.3, 0.3) - 1).pvalue > 0.01


def test_dataloader_reads_batch_and_partners_together(data):
    ds = _train(data)
    sampler = ShardAwareSampler(ds.shard_ids, window=1, seed=2)
    mixer = MixupBatchSampler(sampler, batch_size=2, n_items=len(ds), seed=2)
    loader = DataLoader(ds, batch_sampler=mixer, collate_fn=collate)
    got = list(loader)
    assert len(got) == len(ds) // 2
    for batch, indices in zip(got, list(mixer), strict=True):
        assert batch["mel"].shape == (4, N_MELS, MEL_FRAMES)
        assert batch["index"].tolist() == indices


# ------------------------------------------------------------------------------ device cache


def _same_batch(a: dict, b: dict) -> None:
    for key in ("mel", "labels", "mask", "index"):
        assert a[key].dtype == b[key].dtype, key
        assert torch.equal(a[key].cpu(), b[key].cpu()), key
    assert len(a["teachers"]) == len(b["teachers"])
    for x, y in zip(a["teachers"], b["teachers"], strict=True):
        assert x.dtype == y.dtype and torch.equal(x.cpu(), y.cpu())


@pytest.mark.parametrize("mixing", [False, True])
def test_device_cache_gives_the_streaming_batches_in_their_order(data, mixing):
    ds = _train(data)
    sampler = ShardAwareSampler(ds.shard_ids, window=2, seed=5)
    batches = (
        MixupBatchSampler(sampler, batch_size=2, n_items=len(ds), seed=5)
        if mixing
        else BatchSampler(sampler, 2, drop_last=True)
    )
    streaming = DataLoader(ds, batch_sampler=batches, collate_fn=collate)
    cached = CachedLoader(DeviceCache(ds, torch.device("cpu"), chunk=3), batches)
    assert len(cached) == len(streaming)
    for epoch in range(3):  # the orders differ by epoch; both loaders follow the sampler's
        (batches if mixing else sampler).set_epoch(epoch)
        got, want = list(cached), list(streaming)
        assert len(got) == len(want) > 0
        for a, b in zip(got, want, strict=True):
            _same_batch(a, b)


def test_device_cache_holds_float16_only_where_exact(data):
    ds = _train(data)
    cache = DeviceCache(ds, torch.device("cpu"))
    assert cache.mel.dtype == torch.float16  # eighths: exact in float16
    rng = np.random.default_rng(1)
    cache.teachers[0] = torch.from_numpy(rng.standard_normal((len(ds), 3, 5)).astype(np.float32))
    assert compact_values(cache.teachers[0]).dtype == torch.float32
    assert compact_values(cache.teachers[0].half().float()).dtype == torch.float16


def test_device_prefetcher_passes_batches_through_on_the_cpu(data):
    ds = _train(data)
    loader = DataLoader(ds, batch_size=2, collate_fn=collate)
    prefetched = DevicePrefetcher(loader, torch.device("cpu"))
    assert len(prefetched) == len(loader) and prefetched.dataset is ds
    for a, b in zip(prefetched, loader, strict=True):
        _same_batch(a, b)


def test_device_cache_decision(data, monkeypatch):
    ds = _train(data)
    need = cache_bytes(ds)
    assert need == len(ds) * (2 * N_MELS * MEL_FRAMES + 4 * (15 + 4) + 5 * len(CLASSES))
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert use_device_cache("auto", [ds], cpu) == (False, "")
    assert use_device_cache("on", [ds], cpu)[0] and not use_device_cache("off", [ds], cuda)[0]
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device: (2 * need, 10 * need))
    fits, why = use_device_cache("auto", [ds], cuda)
    assert fits and "cached on cuda" in why
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device: (2 * need - 1, 10 * need))
    fits, why = use_device_cache("auto", [ds], cuda)
    assert not fits and "too large" in why
    with pytest.raises(ValueError, match="cache_on_device"):
        use_device_cache("maybe", [ds], cpu)


# ------------------------------------------------------------------------------ SpecAugment

FILL = 3.7 / 3.1  # a log-mel of 0 after the paper's normalisation (x + 3.7) / 3.1


def _masked_bands(orig: torch.Tensor, out: torch.Tensor) -> tuple[list[int], list[int]]:
    changed = out != orig  # (F, T)
    rows = [f for f in range(orig.shape[0]) if changed[f].all()]
    cols = [t for t in range(orig.shape[1]) if changed[:, t].all()]
    return rows, cols


def test_spec_augment_masks_one_band_each_within_bounds():
    n, f, t, fm, tm = 400, 16, 40, 6, 9
    mel = torch.randn(n, f, t, generator=torch.Generator().manual_seed(0)) - 3.0
    original = mel.clone()
    out = spec_augment(
        mel, freq_mask=fm, time_mask=tm, fill=FILL, generator=torch.Generator().manual_seed(1)
    )
    assert out is not mel and out.shape == mel.shape
    assert torch.equal(mel, original)  # input untouched
    widths_f, widths_t, starts_t = Counter(), Counter(), Counter()
    for x, y in zip(mel, out, strict=True):
        rows, cols = _masked_bands(x, y)
        # one contiguous band each, narrower than the bound
        assert not rows or rows == list(range(rows[0], rows[0] + len(rows)))
        assert not cols or cols == list(range(cols[0], cols[0] + len(cols)))
        assert len(rows) < fm and len(cols) < tm
        widths_f[len(rows)] += 1
        widths_t[len(cols)] += 1
        starts_t.update(cols)
        hit = torch.zeros(f, t, dtype=torch.bool)
        hit[rows, :] = True
        hit[:, cols] = True
        assert torch.equal(y[~hit], x[~hit])  # the rest is unchanged
        assert (y[hit] == torch.tensor(FILL)).all()  # filled with the given level
    # Widths uniform over {0, …, bound − 1}, each clip its own.
    assert set(widths_f) == set(range(fm)) and set(widths_t) == set(range(tm))
    assert min(widths_t.values()) > 0.6 * n / tm and max(widths_t.values()) < 1.4 * n / tm
    # torchaudio's placement: start < size − v with v in [width, width + 1), so the last frame
    # is never masked while the first is.
    assert starts_t[t - 1] == 0 and starts_t[0] > 0

    again = spec_augment(
        mel, freq_mask=fm, time_mask=tm, fill=FILL, generator=torch.Generator().manual_seed(1)
    )
    assert torch.equal(again, out)
    other = spec_augment(
        mel, freq_mask=fm, time_mask=tm, fill=FILL, generator=torch.Generator().manual_seed(2)
    )
    assert not torch.equal(other, out)


def _torchaudio_band(u_width: float, u_start: float, size: int, mask_param: int) -> set[int]:
    """torchaudio.functional.mask_along_axis for given uniforms: v = u·param,
    start = long(u'·(size − v)), end = start + long(v), masked [start, end)."""
    value = np.float32(u_width) * np.float32(mask_param)
    start = int(np.float32(u_start) * (np.float32(size) - value))  # int() truncates, as .long()
    return set(range(max(start, 0), min(start + int(value), size)))


def test_spec_augment_bands_follow_torchaudio_for_the_same_uniforms():
    n, f, t, fm, tm = 50, 12, 30, 7, 40  # time bound above the length: clipped at the edges
    out = spec_augment(
        torch.zeros(n, f, t), freq_mask=fm, time_mask=tm, fill=1.0,
        generator=torch.Generator().manual_seed(4),
    )  # fmt: skip
    # The draws: (n, 2) uniforms for the frequency bands, then (n, 2) for the time bands, each
    # row (width, start).
    g = torch.Generator().manual_seed(4)
    u_freq, u_time = torch.rand(n, 2, generator=g), torch.rand(n, 2, generator=g)
    for k in range(n):
        rows = _torchaudio_band(*u_freq[k].tolist(), f, fm)
        cols = _torchaudio_band(*u_time[k].tolist(), t, tm)
        expected = torch.zeros(f, t)
        expected[sorted(rows), :] = 1.0
        expected[:, sorted(cols)] = 1.0
        assert torch.equal(out[k], expected), k


def test_spec_augment_zero_widths_clamping_and_shapes():
    mel = torch.randn(3, 4, 5)
    copy = spec_augment(mel, freq_mask=0, time_mask=0, fill=FILL, generator=torch.Generator())
    assert torch.equal(copy, mel) and copy.data_ptr() != mel.data_ptr()
    ones = spec_augment(mel, freq_mask=1, time_mask=1, fill=9.0, generator=torch.Generator())
    assert torch.equal(ones, mel)  # widths drawn below 1: always 0
    # widths larger than the image: bands are capped to the image and the call still works
    big = spec_augment(
        mel, freq_mask=50, time_mask=50, fill=FILL, generator=torch.Generator().manual_seed(0)
    )
    assert big.shape == mel.shape
    single = spec_augment(mel[0], freq_mask=3, time_mask=3, fill=FILL, generator=torch.Generator())
    assert single.shape == (4, 5)
    channels = spec_augment(
        mel[:, None],
        freq_mask=3,
        time_mask=4,
        fill=FILL,
        generator=torch.Generator().manual_seed(0),
    )
    flat = spec_augment(
        mel, freq_mask=3, time_mask=4, fill=FILL, generator=torch.Generator().manual_seed(0)
    )
    assert torch.equal(channels[:, 0], flat)


# ------------------------------------------------------------------------------ imports


def test_loader_imports_no_teacher_code():
    code = textwrap.dedent(
        """
        import sys
        import pipeline.train.loader
        banned = ("pipeline.teachers", "pipeline.extract.local", "pipeline.extract.frontends",
                  "musicnn",
                  "panns_inference", "_pipeline_panns_inference", "torchvggish")
        found = sorted(m for m in sys.modules if m.startswith(banned))
        assert not found, found
        """
    )
    root = Path(__file__).resolve().parents[1]
    subprocess.run([sys.executable, "-c", code], check=True, cwd=root, timeout=60)
