"""Stage one's work on a shard: embedding its decoded clips and writing them with its marker.

Both engines embed and write through these functions, so their stores are the same. A shard is
written whole, but a run that extracts only some of its clips again (their audio changed, see
:mod:`pipeline.extract.audio_identity`) writes the other clips' stored values and records back
unchanged: only the changed clips are decoded and embedded.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from pipeline.stores import ClipStore, markers

if TYPE_CHECKING:
    from pipeline.extract.local import Encoder

FLOAT16_MAX = float(np.finfo(np.float16).max)


def embed_batch(
    teacher: Encoder, clip_ids: Sequence[str], waves: list[np.ndarray | str]
) -> list[np.ndarray | str]:
    """Embed a batch's decoded clips; a teacher error is pinned to its clip by retrying singly.

    Parameters
    ----------
    teacher : Encoder
    clip_ids : sequence of str
        The batch's clips.
    waves : list of np.ndarray or str
        Their waveforms, shape (samples,), or the causes of their decoding failures.

    Returns
    -------
    list of np.ndarray or str
        Per clip its (frames, dim) embedding or the cause of its failure.
    """
    ok = [i for i, w in enumerate(waves) if not isinstance(w, str)]
    results: list[np.ndarray | str] = list(waves)
    try:
        for i, emb in zip(ok, teacher.embed([waves[i] for i in ok]), strict=True):
            results[i] = emb
    except Exception:
        for i in ok:
            try:
                [results[i]] = teacher.embed([waves[i]])
            except Exception as err:
                results[i] = f"{teacher.name} failed: {type(err).__name__}: {err}"
    for i, r in enumerate(results):
        if isinstance(r, str):
            continue
        if len(r) == 0:
            results[i] = f"{teacher.name} produced no frames"
        elif not np.isfinite(r).all():
            results[i] = f"{teacher.name} produced non-finite values"
        elif r.size and np.abs(r).max() > FLOAT16_MAX:
            results[i] = f"{teacher.name} values exceed the float16 range of the store"
    return results


def padding_notes(
    teacher: Encoder, clip_ids: Sequence[str], waves: list[np.ndarray | str]
) -> dict[str, str]:
    """The clips of a batch that the teacher will zero-pad (its ``pad_below_s``), with why."""
    pad_s = getattr(teacher, "pad_below_s", 0.0)
    sr = teacher.sample_rate_hz
    return {
        clip: f"{len(w) / sr:.3f} s is shorter than {teacher.name}'s {pad_s} s: zero-padded"
        for clip, w in zip(clip_ids, waves, strict=True)
        if not isinstance(w, str) and len(w) < pad_s * sr
    }


def row_batches(
    work: Mapping[int, Sequence[int]], batch_size: int
) -> Iterator[tuple[int, list[int]]]:
    """Batches of at most ``batch_size`` rows, shard by shard in ascending order.

    Parameters
    ----------
    work : mapping of int to sequence of int
        Shard → the rows of its clips to extract (all of them for a shard not yet done).
    batch_size : int > 0
        Clips per batch; a shard's batches never hold another shard's clips.

    Yields
    ------
    tuple of (int, list of int)
        The shard and the rows of one batch.
    """
    for shard in sorted(work):
        rows = list(work[shard])
        for a in range(0, len(rows), batch_size):
            yield shard, rows[a : a + batch_size]


def embed_shard(
    teacher: Encoder, clip_ids: Sequence[str], waves: list[np.ndarray | str], batch_size: int
) -> tuple[list[np.ndarray | str], dict[str, str]]:
    """One shard's decoded clips (or decoding failures) → embeddings or failure causes.

    Parameters
    ----------
    teacher : Encoder
    clip_ids : sequence of str
        The shard's clips.
    waves : list of np.ndarray or str
        Their waveforms, shape (samples,), or the causes of their decoding failures.
    batch_size : int
        Clips per teacher call (the batches :func:`extract` makes).

    Returns
    -------
    results : list of np.ndarray or str
        Per clip its (frames, dim) embedding or the cause of its failure.
    padded : dict of str to str
        The clips the teacher zero-pads, with why.
    """
    results: list[np.ndarray | str] = []
    padded: dict[str, str] = {}
    for a in range(0, len(waves), batch_size):
        ids, part = clip_ids[a : a + batch_size], waves[a : a + batch_size]
        padded.update(padding_notes(teacher, ids, part))
        results.extend(embed_batch(teacher, ids, part))
    return results, padded


def write_results(
    store: ClipStore,
    shard: int,
    results: Sequence[np.ndarray | str],
    *,
    rows: Sequence[int] | None = None,
    audio: Mapping[str, Any] | None = None,
) -> None:
    """Write a shard's embeddings with its done marker.

    Parameters
    ----------
    store : ClipStore
    shard : int
        The shard's index.
    results : sequence of np.ndarray or str
        Per clip of ``rows`` its (frames, dim) embedding, or the cause of its failure.
    rows : sequence of int, optional
        The rows ``results`` are for, ascending; default: all the shard's. The other clips of a
        done shard keep their stored values, failures and audio records.
    audio : mapping, optional
        Clip → identity of the audio the results were made from
        (:func:`pipeline.extract.audio_identity.audio_identity`); None records none.
    """
    plan = store.shards()[shard]
    every = range(plan.start, plan.stop)
    new = dict(zip(every if rows is None else rows, results, strict=True))
    old = markers.read_shard_marker(store.path, shard) if len(new) < len(every) else {}
    kept = [row for row in every if row not in new]
    stored = dict(zip(kept, store.read_batch([store.clip_ids[row] for row in kept]), strict=True))
    old_failures = old.get("failures", {})
    merged = [
        new[row] if row in new else old_failures.get(store.clip_ids[row], stored[row])
        for row in every
    ]
    clips = store.clip_ids[plan.start : plan.stop]
    failures = {clip: r for clip, r in zip(clips, merged, strict=True) if isinstance(r, str)}
    records = {**old.get("audio", {}), **(audio or {})}
    store.write_shard(
        shard,
        [None if isinstance(r, str) else r for r in merged],
        failures,
        audio={clip: records[clip] for clip in clips if clip in records} if records else None,
    )
