"""Orders of the training clips: shard-aware, cut even across processes, with mixup partners.

Stores hold one clip per chunk and ``shard_size`` clips per shard file. Reading clips in random
order would touch a different shard file for nearly every clip; :class:`ShardAwareSampler`
instead shuffles whole shards, then shuffles the clips within a window of a few consecutive
shards. The reads of a window stay within those few shard files (whose index and pages stay in
the OS cache) while the order is still random at the scale of a batch.
:meth:`pipeline.train.loader.ClipDataset.__getitems__` then reads the clips of a batch in row
order.

With several processes, :class:`EvenShardSampler` gives each its own whole shards, cut so that
every process takes the same number of steps. :class:`MixupBatchSampler` appends to each batch
one mixup partner per clip, drawn from the whole training split (see
:func:`pipeline.train.augment.mixup`). Every order derives from ``(seed, epoch)`` (and the
rank); :func:`epoch_seed` and :func:`rank_seed` give the seeds of an epoch's other draws.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
from torch.utils.data import Sampler

__all__ = [
    "EvenShardSampler",
    "MixupBatchSampler",
    "ShardAwareSampler",
    "epoch_seed",
    "rank_seed",
]

_PARTNER_STREAM = 0x6D6978  # keeps the partner draws apart from other (seed, epoch) streams


def epoch_seed(seed: int, epoch: int) -> int:
    """Seed of an epoch's draws in a lone process.

    Parameters
    ----------
    seed : int
        The run's seed.
    epoch : int
        0-based epoch.

    Returns
    -------
    int
        ``seed · 100003 + epoch``.
    """
    return seed * 100_003 + epoch


def rank_seed(seed: int, epoch: int, rank: int) -> int:
    """Seed of an epoch's augmentation and dropout draws in one process.

    Rank 0 (and a lone process) keeps the single-process seed; the other ranks get streams of
    their own, so the processes do not draw the same masks for different clips.

    Parameters
    ----------
    seed : int
        The run's seed.
    epoch : int
        0-based epoch.
    rank : int
        This process's rank (0 for a lone process).

    Returns
    -------
    int
        :func:`epoch_seed` on rank 0; on the others a 32-bit seed drawn from
        ``SeedSequence([epoch_seed, rank])``.
    """
    base = epoch_seed(seed, epoch)
    return base if rank == 0 else int(np.random.SeedSequence([base, rank]).generate_state(1)[0])


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

    Parameters
    ----------
    shard_ids : sequence of int, shape (n_items,)
        Store shard of each item (:attr:`pipeline.train.loader.ClipDataset.shard_ids`).
    window : int
        Shards whose items are shuffled together.
    shuffle : bool
        Shuffle shards and items; ``False`` = index order.
    seed : int
        Non-negative seed; with the epoch it fixes the order.
    rank, world_size : int
        This process's rank and the number of processes.
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
        """Make the next iteration the order of ``epoch`` (0-based)."""
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

    Parameters
    ----------
    shard_ids : sequence of int, shape (n_items,)
        Store shard of each item.
    batch_size : int
        Items per step in each process; ``len()`` is a multiple of it.
    window, seed :
        As :class:`ShardAwareSampler`'s.
    rank, world_size : int
        This process's rank and the number of processes.

    Raises
    ------
    ValueError
        When the items span fewer shards than there are processes.
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
        """Make the next iteration the order of ``epoch`` (0-based)."""
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
    ``j`` of a batch is mixed with item ``batch_size + j`` (see
    :func:`pipeline.train.augment.mixup`). The dataset's ``__getitems__`` reads the
    2 × ``batch_size`` clips of a batch in one padded read per store. Partners are drawn from
    ``(seed, epoch, rank)``: call :meth:`set_epoch` (which also sets ``sampler``'s epoch) before
    each epoch.

    Parameters
    ----------
    sampler : Sampler[int]
        The order of this process's items (e.g. :class:`EvenShardSampler`).
    batch_size : int
        Items per batch, partners not counted (each yielded list has 2 × ``batch_size``).
    n_items : int
        Items in the dataset; partners are drawn from ``range(n_items)``.
    seed, rank : int
        The run's seed and this process's rank.
    """

    def __init__(
        self, sampler: Sampler[int], *, batch_size: int, n_items: int, seed: int, rank: int = 0
    ) -> None:
        if batch_size < 1 or n_items < 1:
            raise ValueError(f"need batch_size ≥ 1 and n_items ≥ 1, got {batch_size}, {n_items}")
        self.sampler, self.batch_size, self.n_items = sampler, int(batch_size), int(n_items)
        self.seed, self.rank, self.epoch = int(seed), int(rank), 0

    def set_epoch(self, epoch: int) -> None:
        """Make the next iteration the order of ``epoch`` (0-based)."""
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
