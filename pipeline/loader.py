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
clips of a batch in row order through :meth:`pipeline.store.ClipStore.read_batch`.

:func:`mixup` and :func:`spec_augment` work on collated batches (on any device) and draw every
random number from an explicit :class:`torch.Generator`, so a run is reproducible.

Only the stores are read here: no teacher model, audio decoding or feature code is imported,
and :mod:`pipeline.store` is the only module that touches Zarr.
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

from pipeline.manifest import Manifest, listing
from pipeline.store import ClipStore, read_store

__all__ = [
    "ClipDataset",
    "ShardAwareSampler",
    "collate",
    "draw_mixup",
    "mixup",
    "spec_augment",
]


def _fit_frames(array: np.ndarray, frames: int) -> np.ndarray:
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
    :class:`pipeline.store.StoreError` if a store is missing or incomplete.

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
    """(B, T_max, D) zero-padded clips → (B, frames, D), each clip as :func:`_fit_frames` fits it.

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


def draw_mixup(n: int, *, alpha: float, generator: torch.Generator) -> tuple[float, Tensor]:
    """λ and the partner permutation that :func:`mixup` uses for a batch of ``n``.

    A 63-bit seed is drawn from ``generator`` (``torch.randint``) and λ ~ Beta(α, α) is drawn
    by numpy's ``default_rng(seed).beta``; λ is then folded to ``max(λ, 1 − λ)`` so the first
    partner dominates. The permutation is ``torch.randperm(n, generator=generator)`` (on the
    generator's device, normally the CPU). Same generator state → same λ and permutation.
    """
    seed = int(torch.randint(0, 2**63 - 1, (1,), generator=generator).item())
    lam = float(np.random.default_rng(seed).beta(alpha, alpha))
    lam = max(lam, 1.0 - lam)
    perm = torch.randperm(n, generator=generator, device=generator.device)
    return lam, perm


def mixup(batch: dict[str, Any], *, alpha: float, generator: torch.Generator) -> dict[str, Any]:
    """Mix each example with a partner from the same batch (one λ per batch).

    ``mel``, ``labels`` and every teacher tensor become ``λ·x + (1 − λ)·x[perm]``; ``mask``
    becomes ``mask | mask[perm]``. Unknown labels are 0 in ``labels``, so a label known for only
    one partner enters with that partner's weight. λ and ``perm`` come from :func:`draw_mixup`
    and are returned as ``"mixup_lambda"`` (float) and ``"mixup_perm"`` (int64 tensor);
    ``"index"`` is the first partner's. Returns a new dict, the input is not modified.
    ``alpha <= 0`` returns ``batch`` itself.
    """
    if alpha <= 0:
        return batch
    lam, perm = draw_mixup(batch["mel"].shape[0], alpha=alpha, generator=generator)

    def mix(x: Tensor) -> Tensor:
        p = perm.to(x.device)
        return lam * x + (1.0 - lam) * x[p]

    out = dict(batch)
    out["mel"] = mix(batch["mel"])
    out["labels"] = mix(batch["labels"])
    out["mask"] = batch["mask"] | batch["mask"][perm.to(batch["mask"].device)]
    out["teachers"] = [mix(t) for t in batch.get("teachers", [])]
    out["mixup_lambda"] = lam
    out["mixup_perm"] = perm
    return out


def _band(n: int, size: int, max_width: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """Per example a band start and width: width in [0, min(max_width, size + 1)), inside size."""
    upper = min(max_width, size + 1)
    if upper <= 1:
        zeros = torch.zeros(n, dtype=torch.int64)
        return zeros, zeros
    width = torch.randint(0, upper, (n,), generator=generator, device=generator.device).cpu()
    u = torch.rand(n, generator=generator, device=generator.device, dtype=torch.float64).cpu()
    start = torch.minimum((u * (size - width + 1)).floor().to(torch.int64), size - width)
    return start, width


def spec_augment(
    mel: Tensor, *, freq_mask: int, time_mask: int, generator: torch.Generator
) -> Tensor:
    """One frequency band and one time band masked per example.

    ``mel`` is (N, ..., F, T) — e.g. (N, n_mels, T) — or a single (F, T) image. Per example, a
    band of mel bins of width uniform in ``[0, freq_mask)`` and a band of frames of width
    uniform in ``[0, time_mask)`` (widths capped at F and T) start at uniform positions that
    keep them inside the image. Masked values are set to the example's mean over all its
    values (computed before masking): the stored log-mels are not assumed to be normalised to
    zero mean, and the mean is a neutral level whatever their offset, where 0 could be louder
    or quieter than anything in the clip. Random numbers come from ``generator``; the masks are
    moved to ``mel``'s device. Returns a new tensor; with both widths 0 a copy of ``mel``.
    """
    if mel.ndim < 2:
        raise ValueError(f"spec_augment needs (..., F, T), got shape {tuple(mel.shape)}")
    single = mel.ndim == 2
    x = mel.unsqueeze(0) if single else mel
    n, f, t = x.shape[0], x.shape[-2], x.shape[-1]
    if max(freq_mask, time_mask) <= 0 or x.numel() == 0:
        return mel.clone()
    f_start, f_width = _band(n, f, freq_mask, generator)
    t_start, t_width = _band(n, t, time_mask, generator)
    bins, frames = torch.arange(f), torch.arange(t)
    f_hit = (bins >= f_start[:, None]) & (bins < (f_start + f_width)[:, None])  # (N, F)
    t_hit = (frames >= t_start[:, None]) & (frames < (t_start + t_width)[:, None])  # (N, T)
    lead = (1,) * (x.ndim - 3)
    hit = f_hit.view(n, *lead, f, 1) | t_hit.view(n, *lead, 1, t)
    hit = hit.to(x.device)
    level = x.mean(dim=tuple(range(1, x.ndim)), keepdim=True)
    out = torch.where(hit, level, x)
    return out[0] if single else out
