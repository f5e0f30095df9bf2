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

``__getitems__`` reads the clips of a batch in row order, one padded read per store, in the
order :mod:`pipeline.train.samplers` gives (a few store shards at a time, and with mixup
partners appended, see :mod:`pipeline.train.augment`).

Only the stores are read here: no teacher model, audio decoding or feature code is imported,
and :mod:`pipeline.stores.zarr_store` is the only module that touches Zarr.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from pipeline.data.manifest import Manifest, listing
from pipeline.stores import ClipStore, ClipStoreReader, read_store

__all__ = ["ClipDataset", "collate", "fit_frames", "mean_embeddings"]


def fit_frames(array: np.ndarray, frames: int) -> np.ndarray:
    """(t, D) → (frames, D): the first ``frames`` rows, repeating from the start when t < frames.

    Parameters
    ----------
    array : np.ndarray, shape (t, D)
        A clip's frames; t ≥ 1.
    frames : int
        Frames to return.

    Returns
    -------
    np.ndarray, shape (frames, D)
    """
    return array[np.arange(frames) % len(array)]


def _load_normalisation(fingerprint: dict[str, Any], name: str) -> tuple[Any, Any]:
    shift, scale = fingerprint.get("load_shift"), fingerprint.get("load_scale")
    shift = None if shift is None else np.asarray(shift, dtype=np.float32)
    scale = None if scale is None else np.asarray(scale, dtype=np.float32)
    if scale is not None and not np.all(scale != 0):
        raise ValueError(f"{name}: load_scale contains 0")
    return shift, scale


def mean_embeddings(
    store: ClipStoreReader,
    clip_ids: Sequence[str],
    *,
    frames: int | None = None,
    chunk: int = 256,
) -> np.ndarray:
    """(N, D) float32: each clip's embeddings in ``store`` averaged over its frames.

    What a linear probe sees (:mod:`pipeline.train.probe`): each clip fitted to ``frames``
    frames as :func:`fit_frames` fits it (a shorter clip repeats from its start), the store's
    load normalisation applied (``load_shift``, ``load_scale`` of its fingerprint), then the
    mean over time. Needs no other store, so teacher stores can be probed on their own.

    Parameters
    ----------
    store : ClipStoreReader
        A complete teacher store.
    clip_ids : sequence of str, length N
        Clips the store holds with at least one frame.
    frames : int, optional
        Frames each clip is fitted to; default the store's ``max_frames``.
    chunk : int
        Clips read at a time.

    Returns
    -------
    np.ndarray, shape (N, D), float32
    """
    frames = store.max_frames if frames is None else int(frames)
    shift, scale = _load_normalisation(store.fingerprint, Path(store.path).name)
    parts = []
    for start in range(0, len(clip_ids), chunk):
        block, n_frames = store.read_padded(list(clip_ids[start : start + chunk]))
        array = _fit_block(block, n_frames, frames).astype(np.float32)
        if shift is not None:
            array -= shift
        if scale is not None:
            array /= scale
        parts.append(torch.from_numpy(array).mean(dim=1))
    if not parts:
        return np.zeros((0, store.dim), dtype=np.float32)
    return torch.cat(parts).numpy()


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
    :class:`pipeline.stores.StoreError` if a store is missing or incomplete.

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
        """(N, D_k) float32: each clip's teacher-``k`` embeddings averaged over its frames.

        Parameters
        ----------
        k : int
            Teacher position in ``teacher_stores``.
        chunk : int
            Clips read at a time.
        """
        frames = self.teacher_shapes[k][0]
        return mean_embeddings(self._open()[k + 1], self.clip_ids, frames=frames, chunk=chunk)

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

    Parameters
    ----------
    items : list of dict, or dict
        Items of :class:`ClipDataset`, or a batch :meth:`ClipDataset.__getitems__` already
        built (returned as it is).

    Returns
    -------
    dict
        The batch.

    Raises
    ------
    ValueError
        For an empty list.
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
