"""Training data: clips from a manifest, log-mels and cached teacher embeddings from clip stores.

Data flow::

    manifest (clip_id, split, labels)  ─┐
    mel store    <mels>.zarr           ─┼─ by clip ID ─→ ClipDataset[i] ─→ collate ─→ batch
    teacher stores <teacher>.zarr ...  ─┘

:class:`ClipDataset` takes the clips of one split in manifest order and keeps those that every
store holds with at least one frame; the others are listed in ``skipped`` with the cause the
store recorded when the clip could not be produced. Stores are matched by clip ID, never by row
number, so stores made from different manifests (or with other shard sizes) combine freely. An
item is the clip's mel image (n_mels, T), its labels with the known-label mask, and one
(frames, D) array per teacher. Shorter clips are padded by repeating them from their start, longer
ones are cropped to their beginning, so every item of a split has the same shape.

Stores hold one clip per chunk and ``shard_size`` clips per shard file. Reading clips in random
order would touch a different shard file for nearly every clip; :class:`ShardAwareSampler`
instead shuffles whole shards, then shuffles the clips within a window of a few consecutive
shards. The reads of a window stay within those few shard files (whose index and pages stay in
the OS cache) while the order is still random at the scale of a batch. ``__getitems__`` reads the
clips of a batch in row order through :meth:`pipeline.stores.zarr_store.ClipStore.read_batch`.

Mixup partners come from the whole training split: :class:`MixupBatchSampler` appends to each
batch one uniformly drawn partner per clip, read in the same padded read as the batch;
:func:`spec_augment` (each clip its own masks, partners included) and then :func:`mixup` (one λ
per clip) work on the collated batch, on any device, drawing every random number from an
explicit :class:`torch.Generator` or ``(seed, epoch)``, so a run is reproducible.

Only the stores are read here: no teacher model, audio decoding or feature code is imported,
and :mod:`pipeline.stores.zarr_store` is the only module that touches Zarr.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset, Sampler

from pipeline.data.manifest import Manifest, listing
from pipeline.stores.zarr_store import ClipStore, read_store

__all__ = [
    "ClipDataset",
    "EvenShardSampler",
    "MixupBatchSampler",
    "ShardAwareSampler",
    "collate",
    "draw_mixup",
    "mixup",
    "spec_augment",
]


def fit_frames(array: np.ndarray, frames: int) -> np.ndarray:
    """(t, D) → (frames, D): the first ``frames`` rows, repeating from the start when t < frames."""
    return array[np.arange(frames) % len(array)]


def _load_normalisation(fingerprint: dict[str, Any], name: str) -> tuple[Any, Any]:
    shift, scale = fingerprint.get("load_shift"), fingerprint.get("load_scale")
    shift = None if shift is None else np.asarray(shift, dtype=np.float32)
    scale = None if scale is None else np.asarray(scale, dtype=np.float32)
    if scale is not None and not np.all(scale != 0):
        raise ValueError(f"{name}: load_scale contains 0")
    return shift, scale


class ClipDataset(Dataset):
    """The usable clips of one split, with mels, labels and teacher embeddings.

    Parameters
    ----------
    manifest, split :
        The clips are those of ``manifest`` whose split is ``split``, in manifest order.
    mel_store :
        Path of the complete store of (frames, n_mels) log-mels.
    teacher_stores :
        Paths of complete teacher stores; item ``"teachers"`` follows this order.
    mel_frames :
        Frames T of every mel item; default the mel store's ``max_frames``.

    A clip is usable when every store holds it with at least one frame. The others are listed in
    ``skipped`` (clip ID → cause). :class:`ValueError` if no clip is usable;
    :class:`pipeline.stores.zarr_store.StoreError` if a store is missing or incomplete.

    Stores are opened on first use in each process, and the pickled dataset holds only their
    paths, so it works with ``DataLoader(num_workers > 0)`` under fork and spawn.
    """

    def __init__(
        self,
        manifest: Manifest,
        split: str,
        mel_store: str | os.PathLike,
        teacher_stores: Sequence[str | os.PathLike] = (),
        *,
        mel_frames: int | None = None,
    ) -> None:
        if isinstance(teacher_stores, (str, os.PathLike)):
            raise TypeError("teacher_stores is a sequence of paths, not one path")
        self._paths = [str(mel_store), *(str(p) for p in teacher_stores)]
        stores = [read_store(p) for p in self._paths]
        names = [Path(p).name for p in self._paths]
        mel, teachers = stores[0], stores[1:]

        self.split = split
        self.classes: list[str] = list(manifest.classes)
        self.n_mels: int = mel.dim
        self.mel_frames: int = mel.max_frames if mel_frames is None else int(mel_frames)
        if self.mel_frames < 1:
            raise ValueError(f"mel_frames must be at least 1, got {mel_frames}")
        self.teacher_shapes: list[tuple[int, int]] = [(s.max_frames, s.dim) for s in teachers]
        self._teacher_norm = [
            _load_normalisation(s.fingerprint, n) for s, n in zip(teachers, names[1:], strict=True)
        ]

        part = manifest.split(split)
        failures = [s.failures() for s in stores]
        self.skipped: dict[str, str] = {}
        keep: list[int] = []
        rows: list[list[int]] = []
        for i, clip in enumerate(part.clip_ids):
            causes, clip_rows = [], []
            for store, name, failed in zip(stores, names, failures, strict=True):
                try:
                    row = store.row(clip)
                except KeyError:
                    causes.append(f"not in {name}")
                    continue
                if store.n_frames[row] <= 0:
                    causes.append(f"{name}: {failed.get(clip, 'no frames stored')}")
                clip_rows.append(row)
            if causes:
                self.skipped[clip] = "; ".join(causes)
            else:
                keep.append(i)
                rows.append(clip_rows)
        if not keep:
            causes = [f"{c} ({why})" for c, why in self.skipped.items()]
            raise ValueError(
                f"{manifest.name}: no usable clip in split {split!r} "
                f"({len(part)} clips in the manifest"
                + (f"; skipped: {listing(causes, 5)}" if causes else "")
                + ")"
            )

        self.clip_ids: list[str] = [part.clip_ids[i] for i in keep]
        self.labels: np.ndarray = part.labels()[keep]
        self.mask: np.ndarray = part.mask()[keep]
        # (n_stores, n) row of each item in each store; the mel store's rows give the shards.
        self._rows = np.asarray(rows, dtype=np.int64).T
        self.shard_ids: np.ndarray = self._rows[0] // mel.shard_size

        self._stores: list[ClipStore] | None = stores
        self._pid: int | None = os.getpid()

    # -- process-local store handles ----------------------------------------------------------
    def _open(self) -> list[ClipStore]:
        if self._stores is None or self._pid != os.getpid():
            self._stores = [read_store(p) for p in self._paths]
            self._pid = os.getpid()
        return self._stores

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_stores"] = None
        state["_pid"] = None
        return state

    # -- items --------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.clip_ids)

    def __getitem__(self, i: int) -> dict[str, Any]:
        """One item: mel (n_mels, T), labels/mask (C,), teachers [(T_k, D_k)], index."""
        i = int(i)
        if not -len(self) <= i < len(self):
            raise IndexError(f"index {i} out of range for {len(self)} clips")
        batch = self.__getitems__([i % len(self)])
        return {
            "mel": batch["mel"][0],
            "labels": batch["labels"][0],
            "mask": batch["mask"][0],
            "teachers": [t[0] for t in batch["teachers"]],
            "index": int(batch["index"][0]),
        }

    def mean_embeddings(self, k: int, *, chunk: int = 256) -> np.ndarray:
        """(N, D_k) float32: each clip's teacher-``k`` embeddings averaged over its frames."""
        parts = [
            self.__getitems__(range(start, min(start + chunk, len(self))))["teachers"][k]
            for start in range(0, len(self), chunk)
        ]
        return torch.cat([p.mean(dim=1) for p in parts]).numpy()

    def __getitems__(self, indices: Sequence[int]) -> dict[str, Any]:
        """A whole batch, already collated (see :func:`collate`).

        Each store is read once for the batch into one zero-padded block, and the batch is
        built with whole-array operations: per-item copies and a final stack would cost more
        than the reads themselves.
        """
        idx = np.asarray([int(i) for i in indices], dtype=np.int64)
        bad = idx[(idx < 0) | (idx >= len(self))]
        if len(bad):
            raise IndexError(f"index {int(bad[0])} out of range for {len(self)} clips")
        stores = self._open()
        clips = [self.clip_ids[i] for i in idx]
        block, n_frames = stores[0].read_padded(clips)
        mel = _fit_block(block, n_frames, self.mel_frames).transpose(0, 2, 1)
        teachers = []
        for store, (frames, _), (shift, scale) in zip(
            stores[1:], self.teacher_shapes, self._teacher_norm, strict=True
        ):
            block, n_frames = store.read_padded(clips)
            array = _fit_block(block, n_frames, frames).astype(np.float32)
            if shift is not None:
                array -= shift
            if scale is not None:
                array /= scale
            teachers.append(torch.from_numpy(array))
        return {
            "mel": torch.from_numpy(np.ascontiguousarray(mel, dtype=np.float32)),
            "labels": torch.from_numpy(self.labels[idx]),
            "mask": torch.from_numpy(self.mask[idx]),
            "teachers": teachers,
            "index": torch.from_numpy(idx),
        }


def _fit_block(block: np.ndarray, n_frames: np.ndarray, frames: int) -> np.ndarray:
    """(B, T_max, D) zero-padded clips → (B, frames, D), each clip as :func:`fit_frames` fits it.

    Clips with at least ``frames`` frames are cut; shorter ones repeat from their start. When
    every clip is long enough the result is a view of ``block``.
    """
    if len(n_frames) and n_frames.min() >= frames:
        return block[:, :frames]
    out = np.empty((len(block), frames, block.shape[2]), dtype=block.dtype)
    keep = min(frames, block.shape[1])
    out[:, :keep] = block[:, :keep]
    for j in np.flatnonzero(n_frames < frames):
        out[j] = block[j, np.arange(frames) % max(int(n_frames[j]), 1)]
    return out


def collate(items: list[dict[str, Any]] | dict[str, Any]) -> dict[str, Any]:
    """Stack items: mel (N, n_mels, T), labels/mask (N, C), teachers [(N, T_k, D_k)], index (N,).

    A batch :meth:`ClipDataset.__getitems__` already built is returned as it is.
    """
    if isinstance(items, dict):
        return items
    if not items:
        raise ValueError("cannot collate an empty list of items")
    n_teachers = len(items[0]["teachers"])
    return {
        "mel": torch.stack([it["mel"] for it in items]),
        "labels": torch.stack([it["labels"] for it in items]),
        "mask": torch.stack([it["mask"] for it in items]),
        "teachers": [torch.stack([it["teachers"][k] for it in items]) for k in range(n_teachers)],
        "index": torch.tensor([it["index"] for it in items], dtype=torch.int64),
    }


class ShardAwareSampler(Sampler[int]):
    """Item order that reads a few store shards at a time.

    With ``shuffle``, a generator seeded with ``(seed, epoch)`` permutes the distinct shard IDs;
    the permuted shards are taken ``window`` at a time and the items of each window are
    shuffled together. Every item comes once per epoch; the order is fixed by ``(seed, epoch)``
    (call :meth:`set_epoch` before each epoch). Without ``shuffle``, items come in index order.

    With ``world_size > 1``, whole shards are dealt to ranks: the j-th shard of the (permuted)
    shard order goes to rank ``j % world_size``, so the ranks partition the items. Shards differ
    in size, hence ranks may get different numbers of items, and with ``shuffle`` a rank's
    count can change from epoch to epoch; ``len()`` is this rank's count for the current epoch.
    """

    def __init__(
        self,
        shard_ids: Sequence[int],
        *,
        window: int = 4,
        shuffle: bool = True,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        if window < 1:
            raise ValueError(f"window must be at least 1, got {window}")
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"need 0 <= rank < world_size, got rank {rank}, size {world_size}")
        if seed < 0:
            raise ValueError(f"seed must be non-negative, got {seed}")
        ids = np.asarray(shard_ids, dtype=np.int64).reshape(-1)
        self.window, self.shuffle, self.seed = int(window), bool(shuffle), int(seed)
        self.rank, self.world_size = int(rank), int(world_size)
        self.epoch = 0
        self._shards, inverse = np.unique(ids, return_inverse=True)
        by_shard = np.argsort(inverse, kind="stable")
        bounds = np.cumsum(np.bincount(inverse, minlength=len(self._shards)))[:-1]
        self._members = np.split(by_shard, bounds) if len(ids) else []  # item indices, ascending

    def set_epoch(self, epoch: int) -> None:
        if epoch < 0:
            raise ValueError(f"epoch must be non-negative, got {epoch}")
        self.epoch = int(epoch)

    def _rank_shards(self, rng: np.random.Generator | None) -> np.ndarray:
        """Positions (into the sorted distinct shards) of this rank's shards, in visiting order."""
        order = np.arange(len(self._shards))
        if rng is not None:
            order = rng.permutation(order)
        return order[self.rank :: self.world_size]

    def order(self) -> np.ndarray:
        """This rank's item indices for the current epoch."""
        if not self._members:
            return np.zeros(0, dtype=np.int64)
        if not self.shuffle:
            mine = self._rank_shards(None)
            return np.sort(np.concatenate([self._members[s] for s in mine]))
        rng = np.random.default_rng([self.seed, self.epoch])
        mine = self._rank_shards(rng)
        pieces = [
            rng.permutation(np.concatenate([self._members[s] for s in mine[k : k + self.window]]))
            for k in range(0, len(mine), self.window)
        ]
        return np.concatenate(pieces) if pieces else np.zeros(0, dtype=np.int64)

    def __iter__(self) -> Iterator[int]:
        return iter(self.order().tolist())

    def __len__(self) -> int:
        if not self._members:
            return 0
        rng = np.random.default_rng([self.seed, self.epoch]) if self.shuffle else None
        return int(sum(len(self._members[s]) for s in self._rank_shards(rng)))


class EvenShardSampler(Sampler[int]):
    """This process's share of the shard-aware order, cut so that every process steps alike.

    Every optimiser step all-reduces gradients, so all processes must take the same number of
    steps. The shard-dealing :class:`ShardAwareSampler` gives ranks piles of different sizes;
    each epoch, every process therefore keeps the first ``min over ranks`` items of its pile,
    rounded down to whole batches of ``batch_size``. All ranks compute this from the same
    (seed, epoch), with no communication. At most about one shard of clips per rank is left
    out per epoch, and a different one each epoch. With one process the items and batches are
    those of the plain sampler with ``drop_last``.
    """

    def __init__(
        self,
        shard_ids: Sequence[int],
        *,
        batch_size: int,
        window: int,
        seed: int,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        if len(np.unique(np.asarray(shard_ids))) < world_size:
            raise ValueError(
                f"the training split spans {len(np.unique(np.asarray(shard_ids)))} store "
                f"shard(s), fewer than the {world_size} processes: each process reads whole "
                "shards, so use fewer processes"
            )
        self.rank, self.batch_size = rank, batch_size
        self._ranks = [
            ShardAwareSampler(shard_ids, window=window, seed=seed, rank=r, world_size=world_size)
            for r in range(world_size)
        ]

    def set_epoch(self, epoch: int) -> None:
        for sampler in self._ranks:
            sampler.set_epoch(epoch)

    def __len__(self) -> int:
        shortest = min(len(sampler) for sampler in self._ranks)
        return shortest - shortest % self.batch_size

    def __iter__(self) -> Iterator[int]:
        return iter(self._ranks[self.rank].order()[: len(self)].tolist())


class MixupBatchSampler(Sampler[list[int]]):
    """Whole batches of ``sampler``'s order, each followed by one mixup partner per clip.

    Every batch of ``batch_size`` items (a last incomplete one is dropped) comes with
    ``batch_size`` more indices drawn uniformly, with replacement, from all ``n_items`` items of
    the dataset — the whole training split, not the batch, not this process's shards — so item
    ``j`` of a batch is mixed with item ``batch_size + j`` (see :func:`mixup`). The dataset's
    ``__getitems__`` reads the 2 × ``batch_size`` clips of a batch in one padded read per
    store. Partners are drawn from ``(seed, epoch, rank)``: call :meth:`set_epoch` (which also
    sets ``sampler``'s epoch) before each epoch.
    """

    def __init__(
        self, sampler: Sampler[int], *, batch_size: int, n_items: int, seed: int, rank: int = 0
    ) -> None:
        if batch_size < 1 or n_items < 1:
            raise ValueError(f"need batch_size ≥ 1 and n_items ≥ 1, got {batch_size}, {n_items}")
        self.sampler, self.batch_size, self.n_items = sampler, int(batch_size), int(n_items)
        self.seed, self.rank, self.epoch = int(seed), int(rank), 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)
        if hasattr(self.sampler, "set_epoch"):
            self.sampler.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.sampler) // self.batch_size  # type: ignore[arg-type]

    def __iter__(self) -> Iterator[list[int]]:
        rng = np.random.default_rng([self.seed, self.epoch, self.rank, _PARTNER_STREAM])
        order = list(self.sampler)
        for k in range(len(self)):
            batch = order[k * self.batch_size : (k + 1) * self.batch_size]
            yield batch + rng.integers(0, self.n_items, size=self.batch_size).tolist()


_PARTNER_STREAM = 0x6D6978  # keeps the partner draws apart from other (seed, epoch) streams


def draw_mixup(n: int, *, alpha: float, generator: torch.Generator) -> Tensor:
    """One mixing weight per clip: λ ~ Beta(α, α), folded to ``max(λ, 1 − λ)``; (n,) float32.

    A 63-bit seed is drawn from ``generator`` (``torch.randint``) and the n draws come from
    numpy's ``default_rng(seed).beta``. Same generator state → same weights.
    """
    seed = int(torch.randint(0, 2**63 - 1, (1,), generator=generator).item())
    lam = np.random.default_rng(seed).beta(alpha, alpha, size=n)
    return torch.from_numpy(np.maximum(lam, 1.0 - lam).astype(np.float32))


def mixup(batch: dict[str, Any], *, lam: Tensor) -> dict[str, Any]:
    """Mix each of the first n clips of a batch with its partner among the n that follow.

    ``batch`` holds 2n clips (as :class:`MixupBatchSampler` yields them) and ``lam`` (n,) one
    weight per clip. ``mel``, ``labels`` and every teacher tensor become
    ``λ_j·x_j + (1 − λ_j)·x_{n+j}`` — the embeddings of every teacher with the clip's λ —
    and ``mask`` becomes ``mask_j | mask_{n+j}``. Unknown labels are 0 in ``labels``, so a
    label known for only one partner enters with that partner's weight. Every frame mixes
    content of both clips: the dataset loops clips shorter than the batch's frame count (mels
    and embeddings alike), never pads them with zeros, so a short partner contributes its loop,
    aligned across mel and teachers as in unmixed items. Returns a new dict with ``"index"``
    the first clips', ``"partner"`` the partners' indices and ``"mixup_lambda"`` = ``lam``.
    """
    n = len(lam)
    if batch["mel"].shape[0] != 2 * n:
        raise ValueError(f"mixup needs 2 × {n} clips, got {batch['mel'].shape[0]}")

    def mix(x: Tensor) -> Tensor:
        weight = lam.to(x.device, x.dtype).view(n, *([1] * (x.ndim - 1)))
        return weight * x[:n] + (1.0 - weight) * x[n:]

    out = dict(batch)
    out["mel"] = mix(batch["mel"])
    out["labels"] = mix(batch["labels"])
    out["mask"] = batch["mask"][:n] | batch["mask"][n:]
    out["teachers"] = [mix(t) for t in batch.get("teachers", [])]
    if "index" in batch:
        out["index"], out["partner"] = batch["index"][:n], batch["index"][n:]
    out["mixup_lambda"] = lam
    return out


def _band(n: int, size: int, max_width: int, generator: torch.Generator) -> Tensor:
    """(n, size) bool: per clip one band, drawn as torchaudio's ``mask_along_axis`` draws it.

    v = u₁·max_width and s = u₂·(size − v) with u₁, u₂ uniform in [0, 1) (float32); the band is
    ``[trunc(s), trunc(s) + floor(v))``: width uniform in {0, …, max_width − 1}, start uniform
    over the places that keep the band inside (clipped at the edges when max_width > size).
    ``max_width`` < 1 draws nothing (1 draws, but the width is always 0).
    """
    if max_width < 1:
        return torch.zeros(n, size, dtype=torch.bool)
    u = torch.rand(n, 2, generator=generator, device=generator.device).cpu()
    value = u[:, 0] * max_width
    start = (u[:, 1] * (size - value)).trunc().to(torch.int64)[:, None]
    stop = start + value.floor().to(torch.int64)[:, None]
    positions = torch.arange(size)
    return (positions >= start) & (positions < stop)


def spec_augment(
    mel: Tensor, *, freq_mask: int, time_mask: int, fill: float, generator: torch.Generator
) -> Tensor:
    """One frequency band and one time band masked per clip, as torchaudio's SpecAugment.

    ``mel`` is (N, ..., F, T) — e.g. (N, n_mels, T) — or a single (F, T) image. Each clip gets
    its own band of mel bins of width uniform in ``[0, freq_mask)`` and its own band of frames
    of width uniform in ``[0, time_mask)``, placed as ``torchaudio.transforms.FrequencyMasking``
    and ``TimeMasking`` (``iid_masks=False`` on one clip) place them (:func:`_band`). Masked
    values become ``fill``: the official featurizer masks with 0 in log-mel space before
    normalising, i.e. ``fill`` = where a log-mel of 0 lands after the front end's normalisation
    (``norm_shift / norm_scale``, 3.7 / 3.1 for the paper's front ends). Random numbers come from
    ``generator``; the masks are moved to ``mel``'s device. Returns a new tensor; with both
    widths 0 a copy of ``mel``.
    """
    if mel.ndim < 2:
        raise ValueError(f"spec_augment needs (..., F, T), got shape {tuple(mel.shape)}")
    single = mel.ndim == 2
    x = mel.unsqueeze(0) if single else mel
    n, f, t = x.shape[0], x.shape[-2], x.shape[-1]
    if max(freq_mask, time_mask) < 1 or x.numel() == 0:
        return mel.clone()
    f_hit = _band(n, f, freq_mask, generator)  # (N, F)
    t_hit = _band(n, t, time_mask, generator)  # (N, T)
    hit = f_hit[:, :, None] | t_hit[:, None, :]
    hit = hit.view(n, *(1,) * (x.ndim - 3), f, t).to(x.device)
    out = torch.where(hit, torch.as_tensor(fill, dtype=x.dtype, device=x.device), x)
    return out[0] if single else out
