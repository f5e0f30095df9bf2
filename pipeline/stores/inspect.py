"""A health report of a clip store (teacher embeddings or log-mels), read in chunks.

    report = inspect_store("data/cache/openmic/musicnn.zarr")
    print(report.format())
    sys.exit(report.exit_status)  # 0 healthy, 1 something is wrong

The store (a Zarr folder or its HDF5 export, opened with :func:`pipeline.stores.read_store`,
complete or not) is read a few clips at a time, so that it may be larger than memory. The
report counts clips, failures and zero-padded clips (where the extraction recorded them),
summarises the clips' frame counts, counts non-finite values and computes each dimension's
mean and standard deviation over every stored frame of every clip (finite values only, merged
chunk by chunk with Chan's parallel update, in float64). A store is unhealthy when some clips
failed or hold no frames, a value is not finite, a dimension is constant (its standard
deviation at most ``collapse_tol``) or the store is incomplete.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.stores import ClipStoreReader, is_h5_path, read_store

__all__ = ["StoreHealth", "inspect_store"]

CHUNK_BYTES = 64_000_000  # float64 values held per chunk of clips, at most (about)
COLLAPSE_TOL = 1e-6  # a dimension whose standard deviation is at most this is constant
_HIST_BINS = 8
_BAR = 40  # characters of the longest histogram bar


@dataclass(frozen=True)
class StoreHealth:
    """What :func:`inspect_store` found in a store.

    Attributes
    ----------
    path, kind ("zarr" or "hdf5"), fingerprint : the store and its settings
    complete : whether the store is marked complete; ``missing_shards`` lists the shards not
        done, ``not_written`` counts their clips
    clips : rows of the store; ``dim`` values per frame, rows of at most ``max_frames`` frames
    frames : (stored,) int frame counts of the clips that hold frames
    failures : clip ID → cause, of the clips a finished shard could not produce
    empty : clips of finished shards with no frames and no recorded cause
    padded : clip ID → note, of the clips zero-padded at extraction; ``None`` when the store
        does not record it
    nonfinite_values : NaN or infinite values among the stored frames
    nonfinite_clips : IDs of the clips that hold some
    mean, std : (dim,) float64 per-dimension mean and standard deviation over the finite
        values of every stored frame
    collapse_tol : the standard deviation at or below which a dimension counts as constant
    """

    path: Path
    kind: str
    fingerprint: dict[str, Any]
    complete: bool
    missing_shards: list[int]
    not_written: int
    clips: int
    dim: int
    max_frames: int
    frames: np.ndarray
    failures: dict[str, str]
    empty: list[str]
    padded: dict[str, str] | None
    nonfinite_values: int
    nonfinite_clips: list[str]
    mean: np.ndarray
    std: np.ndarray
    collapse_tol: float = COLLAPSE_TOL

    @property
    def collapsed(self) -> np.ndarray:
        """Indices of the constant dimensions (standard deviation ≤ ``collapse_tol``, or no
        finite value), empty when no clip holds frames."""
        if not len(self.frames):
            return np.zeros(0, dtype=np.int64)
        return np.flatnonzero(~(self.std > self.collapse_tol))

    @property
    def problems(self) -> list[str]:
        """One line per thing that is wrong; empty for a healthy store."""
        out = []
        if not self.complete and self.missing_shards:
            out.append(
                f"incomplete: {len(self.missing_shards)} shards not done "
                f"({self.not_written} clips not written)"
            )
        elif not self.complete:
            out.append("incomplete: every shard is done but the store is not marked complete")
        if self.failures:
            out.append(f"{len(self.failures)} clips failed")
        if self.empty:
            out.append(f"{len(self.empty)} clips hold no frames and no recorded cause")
        if self.clips and not len(self.frames):
            out.append("no clip holds frames")
        if self.nonfinite_values:
            out.append(
                f"{self.nonfinite_values} non-finite values (NaN or inf) in "
                f"{len(self.nonfinite_clips)} clips"
            )
        if len(self.collapsed):
            out.append(
                f"{len(self.collapsed)} collapsed dimensions (std <= {self.collapse_tol:g}): "
                f"{_first(self.collapsed.tolist())}"
            )
        return out

    @property
    def healthy(self) -> bool:
        """Whether nothing is wrong."""
        return not self.problems

    @property
    def exit_status(self) -> int:
        """0 for a healthy store, 1 otherwise."""
        return 0 if self.healthy else 1

    def format(self, first: int = 5) -> str:
        """The report as text: layout, clips, frame counts, values, fingerprint, verdict.

        Parameters
        ----------
        first : failed, padded and non-finite clips named, at most

        Returns
        -------
        str -- lines without a trailing newline
        """
        lines = [
            f"{self.path} ({self.kind}): {self.clips} clips × ≤{self.max_frames} frames × "
            f"{self.dim} dims, {'complete' if self.complete else 'INCOMPLETE'}",
            f"clips: {len(self.frames)} with frames, {len(self.failures)} failed, "
            f"{len(self.empty)} empty, {self.not_written} not written",
        ]
        if not self.complete:
            lines.append(f"shards not done: {_first(self.missing_shards, first)}")
        for clip, cause in sorted(self.failures.items())[:first]:
            lines.append(f"  failed {clip}: {cause}")
        if self.empty:
            lines.append(f"  empty: {_first(self.empty, first)}")
        if self.padded is None:
            lines.append("padded clips: not recorded")
        else:
            lines.append(f"padded clips: {len(self.padded)}")
            lines += [f"  padded {c}: {n}" for c, n in sorted(self.padded.items())[:first]]
        lines += _frame_lines(self.frames, self.max_frames)
        lines.append(
            f"non-finite values: {self.nonfinite_values}"
            + (f" in clips {_first(self.nonfinite_clips, first)}" if self.nonfinite_clips else "")
        )
        if len(self.frames):
            lines.append(f"per-dimension mean: {_spread(self.mean)}")
            lines.append(f"per-dimension std:  {_spread(self.std)}")
            lines.append(f"collapsed dimensions: {len(self.collapsed)}")
        lines.append("fingerprint:")
        lines += [
            f"  {key}: {json.dumps(value, sort_keys=True, default=str)}"
            for key, value in sorted(self.fingerprint.items())
        ]
        problems = self.problems
        lines.append("healthy" if not problems else f"PROBLEMS ({len(problems)}):")
        lines += [f"  {p}" for p in problems]
        return "\n".join(lines)


def _first(items: list[Any], n: int = 5) -> str:
    """The first ``n`` items joined by commas, with how many more."""
    text = ", ".join(str(i) for i in items[:n])
    return text + (f", … ({len(items) - n} more)" if len(items) > n else "")


def _spread(values: np.ndarray) -> str:
    """min / median / max of per-dimension values (NaN for dimensions without finite values)."""
    if not np.isfinite(values).any():
        return "no finite value"
    lo, mid, hi = np.nanmin(values), np.nanmedian(values), np.nanmax(values)
    return f"min {lo:.4g}  median {mid:.4g}  max {hi:.4g} (over dimensions)"


def _frame_lines(frames: np.ndarray, max_frames: int) -> list[str]:
    """Frame counts: min / median / max, clips cut at ``max_frames``, a small text histogram."""
    if not len(frames):
        return ["frames per clip: no clip holds frames"]
    lines = [
        f"frames per clip: min {frames.min()}  median {np.median(frames):g}  max {frames.max()}"
        f"  ({int((frames == max_frames).sum())} clips at max_frames {max_frames})"
    ]
    bins = min(_HIST_BINS, int(frames.max() - frames.min()) + 1)
    counts, edges = np.histogram(frames, bins=bins)
    width = max(len(f"{int(edges[-1])}"), 1)
    # Bins are [lo, hi) but the last, [lo, hi]: as whole frame counts, ceil(lo) to ceil(hi) - 1.
    last = len(counts) - 1
    for k, (count, lo, hi) in enumerate(zip(counts, edges[:-1], edges[1:], strict=True)):
        top = int(hi) if k == last else int(np.ceil(hi)) - 1
        bar = "#" * int(_BAR * count / counts.max() + 0.5)
        lines.append(f"  {int(np.ceil(lo)):>{width}}-{top:<{width}} {count:>7}  {bar}")
    return lines


class _Moments:
    """Per-dimension count, mean and sum of squared deviations, merged chunk by chunk."""

    def __init__(self, dim: int) -> None:
        self.n = np.zeros(dim, dtype=np.float64)
        self.mean = np.zeros(dim, dtype=np.float64)
        self.m2 = np.zeros(dim, dtype=np.float64)

    def add(self, x: np.ndarray, finite: np.ndarray) -> None:
        """Merge (F, D) float64 frames; only the ``finite`` entries count."""
        n_b = finite.sum(axis=0).astype(np.float64)
        mean_b = np.where(finite, x, 0.0).sum(axis=0) / np.maximum(n_b, 1.0)
        m2_b = (np.where(finite, x - mean_b, 0.0) ** 2).sum(axis=0)
        n = self.n + n_b
        weight = np.divide(n_b, n, out=np.zeros_like(n), where=n > 0)
        delta = mean_b - self.mean
        self.mean += delta * weight
        self.m2 += m2_b + delta**2 * self.n * weight
        self.n = n

    def result(self) -> tuple[np.ndarray, np.ndarray]:
        """(D,) means and population standard deviations; NaN where no value counted."""
        empty = self.n == 0
        mean = np.where(empty, np.nan, self.mean)
        std = np.where(empty, np.nan, np.sqrt(self.m2 / np.maximum(self.n, 1.0)))
        return mean, std


def _padded(store: ClipStoreReader) -> dict[str, str] | None:
    """The zero-padded clips the extraction recorded in its summary, or None if it did not."""
    # Both backends offer the completion summary as ``summary``, once the store is complete.
    summary = getattr(store, "summary", None) if store.is_complete else None
    if not isinstance(summary, dict) or "padded" not in summary:
        return None
    return {str(k): str(v) for k, v in summary["padded"].items()}


def inspect_store(
    path: str | os.PathLike, *, chunk_bytes: int = CHUNK_BYTES, collapse_tol: float = COLLAPSE_TOL
) -> StoreHealth:
    """Read a store chunk by chunk and report its health.

    Parameters
    ----------
    path : a ``<name>.zarr`` folder or a ``<name>.h5`` / ``.hdf5`` export
    chunk_bytes : about how many bytes of float64 values to hold at once (at least one clip)
    collapse_tol : standard deviation at or below which a dimension counts as constant

    Returns
    -------
    StoreHealth

    Raises
    ------
    StoreError
        When there is no store at ``path``.
    """
    store = read_store(path, require_complete=False)
    try:
        ids = store.clip_ids
        n_frames = np.asarray(store.n_frames)
        done = store.done_shards()
        plans = store.shards()
        missing = [p.index for p in plans if p.index not in done]
        written = np.zeros(len(ids), dtype=bool)
        for plan in plans:
            written[plan.start : plan.stop] = plan.index in done
        failures = store.failures()
        stored = np.flatnonzero(written & (n_frames > 0))
        empty = [
            ids[r] for r in np.flatnonzero(written & (n_frames == 0)) if ids[r] not in failures
        ]

        moments = _Moments(store.dim)
        nonfinite_values, nonfinite_clips = 0, []
        per_chunk = max(1, chunk_bytes // max(1, store.max_frames * store.dim * 8))
        for start in range(0, len(stored), per_chunk):
            chunk = [ids[r] for r in stored[start : start + per_chunk]]
            block, counts = store.read_padded(chunk)  # (B, max_frames, D), (B,)
            valid = np.arange(block.shape[1])[None, :] < counts[:, None]
            x = block[valid].astype(np.float64)  # (frames, D)
            finite = np.isfinite(x)
            moments.add(x, finite)
            bad = (~np.isfinite(block) & valid[:, :, None]).sum(axis=(1, 2))
            nonfinite_values += int(bad.sum())
            nonfinite_clips += [c for c, b in zip(chunk, bad, strict=True) if b]
        mean, std = moments.result()
        return StoreHealth(
            path=Path(path),
            kind="hdf5" if is_h5_path(path) else "zarr",
            fingerprint=dict(store.fingerprint),
            complete=bool(store.is_complete),
            missing_shards=missing,
            not_written=int((~written).sum()),
            clips=len(ids),
            dim=int(store.dim),
            max_frames=int(store.max_frames),
            frames=n_frames[stored].astype(np.int64),
            failures=dict(failures),
            empty=empty,
            padded=_padded(store),
            nonfinite_values=nonfinite_values,
            nonfinite_clips=nonfinite_clips,
            mean=mean,
            std=std,
            collapse_tol=collapse_tol,
        )
    finally:
        store.close()
