"""Batch reads built on a backend's row reader, shared by the Zarr and HDF5 stores.

A backend supplies ``read_rows(rows) -> (len(rows), max_frames, D)`` for distinct ascending rows;
:func:`rows_as_list` and :func:`gather_padded` turn that into ``read_batch`` and ``read_padded``
for clips in any order, reading only the rows that hold frames, each once; :class:`BatchReads`
gives a backend the clip lookups and reads that build on them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from functools import cached_property
from pathlib import Path

import numpy as np

from pipeline.stores.base import ShardPlan, plan_shards

RowReader = Callable[[Sequence[int]], np.ndarray]


def runs(rows: Sequence[int]) -> list[tuple[int, int]]:
    """Ranges of consecutive values of ascending ``rows``.

    Parameters
    ----------
    rows : sequence of int
        Ascending, distinct row indices.

    Returns
    -------
    list of (int, int)
        ``(start, stop)`` ranges (``stop`` excluded) that together cover exactly ``rows``.
    """
    out: list[tuple[int, int]] = []
    for row in rows:
        if out and out[-1][1] == row:
            out[-1] = (out[-1][0], row + 1)
        else:
            out.append((int(row), int(row) + 1))
    return out


def stored_rows(rows: Iterable[int], n_frames: np.ndarray) -> list[int]:
    """The distinct rows with at least one frame, ascending (the only ones worth reading).

    Parameters
    ----------
    rows : iterable of int
        Row indices, any order, duplicates allowed.
    n_frames : np.ndarray
        (N,) valid frames per row of the store.

    Returns
    -------
    list of int
        The rows of ``rows`` whose ``n_frames`` is positive, sorted, each once.
    """
    return sorted({int(r) for r in rows if n_frames[r] > 0})


def rows_as_list(
    read_rows: RowReader, rows: Sequence[int], n_frames: np.ndarray
) -> list[np.ndarray]:
    """``read_batch`` of either store kind, given its row reader.

    Parameters
    ----------
    read_rows : callable
        Reads distinct ascending rows as a (len(rows), max_frames, D) array.
    rows : sequence of int
        Rows wanted, in the order wanted (duplicates allowed).
    n_frames : np.ndarray
        (N,) valid frames per row of the store.

    Returns
    -------
    list of np.ndarray
        One (n_frames[row], D) view per entry of ``rows``; (0, D) for a row without frames.
        Duplicate rows are the same array.
    """
    wanted = stored_rows(rows, n_frames)
    block = read_rows(wanted)
    by_row = {r: block[k, : n_frames[r]] for k, r in enumerate(wanted)}
    empty = block[:0, 0]  # (0, D)
    return [by_row.get(r, empty) for r in rows]


def frame_counts(n_frames: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """Valid frames of each of ``rows``.

    Parameters
    ----------
    n_frames : np.ndarray
        (N,) valid frames per row of the store.
    rows : np.ndarray
        (B,) int64 row indices.

    Returns
    -------
    np.ndarray
        (B,) int32 ``n_frames[rows]`` (empty for no rows).
    """
    return n_frames[rows].astype(np.int32) if len(rows) else np.zeros(0, np.int32)


def gather_padded(
    read_rows: RowReader, rows: np.ndarray, n_frames: np.ndarray, row_shape: tuple[int, int]
) -> tuple[np.ndarray, np.ndarray]:
    """``read_padded`` of either store kind, given its row reader.

    Parameters
    ----------
    read_rows : callable
        Reads distinct ascending rows as a (len(rows), max_frames, D) array.
    rows : np.ndarray
        (B,) int64 rows wanted, in the order wanted (duplicates allowed).
    n_frames : np.ndarray
        (N,) valid frames per row of the store.
    row_shape : (int, int)
        ``(max_frames, D)``.

    Returns
    -------
    block : np.ndarray
        (B, max_frames, D) array; entry ``j`` is row ``rows[j]``, all zeros for a row without
        frames.
    counts : np.ndarray
        (B,) int32 valid frames per entry.
    """
    wanted = stored_rows(rows.tolist(), n_frames)
    block = read_rows(wanted)
    counts = frame_counts(n_frames, rows)
    if len(wanted) == len(rows) and np.all(np.diff(rows) > 0):
        return block, counts  # already in order, nothing to rearrange
    out = np.zeros((len(rows), *row_shape), dtype=block.dtype)
    held = counts > 0
    if held.any():
        out[held] = block[np.searchsorted(wanted, rows[held])]
    return out, counts


class BatchReads:
    """Clip lookups and batch reads that both store backends build on their row reader.

    A subclass provides ``path``, ``clip_ids`` (N clip IDs in row order), ``n_frames`` ((N,)
    valid frames per row), ``shard_size``, ``max_frames``, ``dim``, ``len()`` and
    ``_read_rows(rows)``, which reads distinct ascending rows as a (len(rows), max_frames, D)
    array.
    """

    path: Path
    clip_ids: list[str]
    n_frames: np.ndarray
    shard_size: int
    max_frames: int
    dim: int

    def __len__(self) -> int:
        raise NotImplementedError

    def _read_rows(self, rows: Sequence[int]) -> np.ndarray:
        raise NotImplementedError

    @cached_property
    def _rows(self) -> dict[str, int]:
        return {clip: row for row, clip in enumerate(self.clip_ids)}

    def shards(self) -> list[ShardPlan]:
        """The store's shards in row order (see :func:`pipeline.stores.base.plan_shards`)."""
        return plan_shards(len(self), self.shard_size)

    def row(self, clip_id: str) -> int:
        """Row of ``clip_id``; KeyError if the store does not hold it."""
        try:
            return self._rows[clip_id]
        except KeyError:
            raise KeyError(f"clip {clip_id!r} is not in store {self.path}") from None

    def read(self, clip_id: str) -> np.ndarray:
        """The clip's (n_frames, D) array; (0, D) for a failed clip."""
        return self.read_batch([clip_id])[0]

    def read_batch(self, clip_ids: Iterable[str]) -> list[np.ndarray]:
        """Several clips, in the given order; rows are read in sorted order, each distinct row
        once.

        Parameters
        ----------
        clip_ids : iterable of str
            Clip IDs of the store (duplicates allowed).

        Returns
        -------
        list of np.ndarray
            One (n_frames, D) array per clip ID ((0, D) for a failed clip); duplicates are the
            same array.
        """
        rows = [self.row(c) for c in clip_ids]
        return rows_as_list(self._read_rows, rows, self.n_frames)

    def read_padded(self, clip_ids: Iterable[str]) -> tuple[np.ndarray, np.ndarray]:
        """Several clips as one array, in the given order (duplicates allowed).

        Parameters
        ----------
        clip_ids : iterable of str
            ``B`` clip IDs of the store.

        Returns
        -------
        block : np.ndarray
            (B, max_frames, D) array; clip ``j`` is ``block[j, :n_frames[j]]``, zeros after it
            (and all zeros for a failed clip).
        n_frames : np.ndarray
            (B,) int32 valid frames per clip.
        """
        rows = np.asarray([self.row(c) for c in clip_ids], dtype=np.int64)
        return self._read_padded_rows(rows)

    def _read_padded_rows(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`read_padded` of (B,) int64 ``rows``, through :func:`gather_padded` (a backend
        that reads rows in any order straight into place overrides this)."""
        return gather_padded(self._read_rows, rows, self.n_frames, (self.max_frames, self.dim))
