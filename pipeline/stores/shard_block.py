"""A shard's clips as the one block that is written into a clip store's ``data`` array."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def shard_block(
    arrays: Sequence[np.ndarray | None],
    clip_ids: Sequence[str],
    *,
    max_frames: int,
    dim: int,
    dtype: np.dtype | str,
) -> tuple[np.ndarray, np.ndarray]:
    """Stack a shard's per-clip arrays into one zero-padded block.

    Parameters
    ----------
    arrays : sequence of np.ndarray or None
        Per clip its (frames, dim) array, or None for a clip that failed.
    clip_ids : sequence of str
        The clips, named in errors.
    max_frames : int > 0
        Frames of a row; later frames are dropped.
    dim : int > 0
        Values per frame.
    dtype : dtype
        Element type of the block.

    Returns
    -------
    block : np.ndarray
        (len(arrays), max_frames, dim), zero where a clip has no frames.
    n_frames : np.ndarray
        (len(arrays),) int32 frames kept per clip; 0 for a failed clip.

    Raises
    ------
    ValueError
        If there are not as many arrays as clips, or an array is not (frames, dim).
    """
    if len(arrays) != len(clip_ids):
        raise ValueError(f"the shard holds {len(clip_ids)} clips, got {len(arrays)} arrays")
    block = np.zeros((len(arrays), max_frames, dim), dtype=dtype)
    n_frames = np.zeros(len(arrays), dtype=np.int32)
    for i, array in enumerate(arrays):
        if array is None:
            continue
        if array.ndim != 2 or array.shape[1] != dim:
            raise ValueError(f"{clip_ids[i]}: expected (frames, {dim}), got {array.shape}")
        t = min(len(array), max_frames)
        block[i, :t] = array[:t]
        n_frames[i] = t
    return block, n_frames
