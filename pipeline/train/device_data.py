"""Batches that are on the device when the step wants them.

Two ways, chosen by :func:`use_device_cache` from ``cache_on_device``:

* **Device cache** (:class:`DeviceCache`, :class:`CachedLoader`): a split's mels, labels and
  teacher embeddings are read once, in chunks, into tensors on the device, and every batch is
  an index into them. The batches are those of the streaming loader, bit for bit and in the same
  order: the sampler is the same, items come from the same
  :meth:`pipeline.train.loader.ClipDataset.__getitems__`, and values are held in float16 only
  where that is exact (the stores hold float16).
* **Prefetch** (:class:`DevicePrefetcher`): batches stream from the loader's workers into
  pinned memory, and each is copied to the device on a side CUDA stream while the step before it
  computes. On the CPU it passes batches through.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sized
from typing import Any

import torch
from torch.utils.data import DataLoader

from pipeline.train.config import CACHE_SETTINGS
from pipeline.train.loader import ClipDataset

#: ``"auto"`` caches when the splits take at most this fraction of the device's free memory.
FREE_FRACTION = 0.5


def cache_bytes(dataset: ClipDataset) -> int:
    """Device memory :class:`DeviceCache` takes for ``dataset`` at most (bytes).

    Mels count 2 bytes a value (float16, as the stores hold them), teacher embeddings 4
    (float32: normalised embeddings are not exact in float16), labels and masks 5 a class.

    Parameters
    ----------
    dataset : ClipDataset
        A split.

    Returns
    -------
    int
    """
    per_clip = 2 * dataset.n_mels * dataset.mel_frames
    per_clip += sum(4 * frames * dim for frames, dim in dataset.teacher_shapes)
    per_clip += 5 * len(dataset.classes)
    return per_clip * len(dataset)


def use_device_cache(
    setting: str, datasets: Iterable[ClipDataset], device: torch.device
) -> tuple[bool, str]:
    """Whether to hold ``datasets`` on ``device``, and why, in words.

    Parameters
    ----------
    setting : {"auto", "on", "off"}
        ``"auto"``: yes on a CUDA device whose free memory is at least the splits' size
        (:func:`cache_bytes`) ÷ :data:`FREE_FRACTION`; never on the CPU, where the loader's
        workers already read from memory-mapped stores.
    datasets : iterable of ClipDataset
        The splits to hold.
    device : torch.device
        The training device.

    Returns
    -------
    tuple of bool and str
        The decision, and a line telling it (empty for ``"auto"`` on the CPU).
    """
    if setting not in CACHE_SETTINGS:
        raise ValueError(f"cache_on_device must be one of {', '.join(CACHE_SETTINGS)}")
    need = sum(cache_bytes(d) for d in datasets)
    size = f"{need / 2**30:.2f} GiB"
    if setting != "auto":
        return setting == "on", f"cache_on_device={setting} ({size})"
    if device.type != "cuda":
        return False, ""
    free, _ = torch.cuda.mem_get_info(device)
    fits = need <= FREE_FRACTION * free
    verdict = "cached on" if fits else "too large to cache on"
    return fits, f"{size} of mels and embeddings {verdict} {device} ({free / 2**30:.1f} GiB free)"


def compact_values(values: torch.Tensor) -> torch.Tensor:
    """``values`` in float16 when that is exact (every value survives the round trip), else as
    they are."""
    half = values.half()
    return half if torch.equal(half.float(), values) else values


class DeviceCache:
    """One split held on a device; :meth:`batch` gives what the streaming loader would.

    Parameters
    ----------
    dataset : ClipDataset
        The split, read once in chunks of ``chunk`` clips.
    device : torch.device
        Where the tensors live.
    chunk : int
        Clips read at a time.
    """

    def __init__(self, dataset: ClipDataset, device: torch.device, *, chunk: int = 256) -> None:
        self.dataset = dataset
        self.device = device
        parts = [
            dataset.__getitems__(range(start, min(start + chunk, len(dataset))))
            for start in range(0, len(dataset), chunk)
        ]
        self.mel = torch.cat([compact_values(p["mel"]) for p in parts]).to(device)
        self.labels = torch.cat([p["labels"] for p in parts]).to(device)
        self.mask = torch.cat([p["mask"] for p in parts]).to(device)
        n_teachers = len(dataset.teacher_shapes)
        self.teachers = [
            torch.cat([compact_values(p["teachers"][k]) for p in parts]).to(device)
            for k in range(n_teachers)
        ]

    def __len__(self) -> int:
        return len(self.dataset)

    def batch(self, indices: torch.Tensor) -> dict[str, Any]:
        """The batch of ``indices`` (int64, on the cache's device), in the loader's layout.

        Returns
        -------
        dict
            ``mel`` (N, n_mels, T) float32, ``labels``/``mask`` (N, C), ``teachers``
            [(N, T_k, D_k) float32], ``index`` (N,), all on the device.
        """
        return {
            "mel": self.mel[indices].float(),
            "labels": self.labels[indices],
            "mask": self.mask[indices],
            "teachers": [t[indices].float() for t in self.teachers],
            "index": indices,
        }


class CachedLoader:
    """Batches from a :class:`DeviceCache` in the order of a batch sampler.

    Parameters
    ----------
    cache : DeviceCache
        The split on the device.
    batch_sampler : iterable of list of int
        The streaming loader's batch sampler (e.g. the mixup sampler, partners appended).
    """

    def __init__(self, cache: DeviceCache, batch_sampler: Iterable[list[int]]) -> None:
        self.cache = cache
        self.dataset = cache.dataset
        self.batch_sampler = batch_sampler

    def __len__(self) -> int:
        if not isinstance(self.batch_sampler, Sized):
            raise TypeError("the batch sampler has no length")
        return len(self.batch_sampler)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        for indices in self.batch_sampler:
            index = torch.as_tensor(indices, dtype=torch.int64)
            yield self.cache.batch(index.to(self.cache.device, non_blocking=True))


def to_device(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    """``batch`` with its tensors (and each teacher's) on ``device``; other entries as they are."""
    moved = {
        k: v.to(device, non_blocking=True) for k, v in batch.items() if isinstance(v, torch.Tensor)
    }
    moved["teachers"] = [t.to(device, non_blocking=True) for t in batch["teachers"]]
    return {**batch, **moved}


class DevicePrefetcher:
    """A loader whose batches arrive on ``device``, each copied while the previous computes.

    On CUDA the copy of batch k + 1 is issued on a side stream before batch k is handed out;
    the compute stream waits for that copy only when it takes batch k + 1. Elsewhere batches
    pass through unchanged (the step moves them).

    Parameters
    ----------
    loader : DataLoader
        A loader with pinned memory.
    device : torch.device
        The training device.
    """

    def __init__(self, loader: DataLoader, device: torch.device) -> None:
        self.loader = loader
        self.dataset = loader.dataset
        self.device = device

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        if self.device.type != "cuda":
            yield from self.loader
            return
        stream = torch.cuda.Stream(self.device)
        pending = None
        for batch in self.loader:
            with torch.cuda.stream(stream):
                ready = to_device(batch, self.device)
            if pending is not None:
                yield self._take(pending, stream)
            pending = ready
        if pending is not None:
            yield self._take(pending, stream)

    def _take(self, batch: dict[str, Any], stream: torch.cuda.Stream) -> dict[str, Any]:
        current = torch.cuda.current_stream(self.device)
        current.wait_stream(stream)
        for value in (*batch.values(), *batch["teachers"]):
            if isinstance(value, torch.Tensor) and value.device.type == "cuda":
                value.record_stream(current)
        return batch


#: What the training loop iterates: a streaming loader (prefetched) or a cached one.
Loader = DataLoader | DevicePrefetcher | CachedLoader
