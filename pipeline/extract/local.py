"""Stage one: run a teacher over every clip of a manifest, into a clip store.

Any :class:`Encoder` can take the teacher's place, e.g. a mel front end
(:class:`pipeline.extract.frontends.MelFrontEnd`) whose spectrograms are cached the same way.

Worker processes (joblib's loky, :func:`pipeline.extract.decode.decode_ahead`) decode and
resample the next batches while the teacher embeds the current one, at most ``2 × jobs`` batches
ahead, so memory does not grow with the dataset when decoding is faster than the teacher. Each
finished shard is written once with its done marker, so a killed run resumes where it stopped.
Clips that cannot be decoded or embedded are recorded with their cause and left at zero frames;
they never abort the run unless more than ``max_failed_fraction`` fail (default
:data:`MAX_FAILED_FRACTION`): then the store is held back from completion, recording why
(:func:`pipeline.stores.markers.hold`), and its failures table is written next to it.
Clips shorter than a teacher's ``pad_below_s`` are zero-padded by it and listed in the summary.
Each shard's marker records the identity of every clip's audio
(:mod:`pipeline.extract.audio_identity`); a run on an existing store extracts again the clips
of done shards whose audio changed since, and only those, naming them first.
An encoder's ``store_compression`` ("zstd" unless it says otherwise) is the store's codec, and
a teacher's ``precision`` is recorded in the store's ``precisions`` by each run that writes.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from tqdm.auto import tqdm

from pipeline.data.manifest import Manifest
from pipeline.extract.audio_identity import audio_identity, begin_update, check_audio
from pipeline.extract.decode import decode_ahead, default_decode_jobs
from pipeline.extract.shards import embed_batch, padding_notes, row_batches, write_results
from pipeline.stores import ClipStore, markers, open_store
from pipeline.stores.status import write_failures

#: The default failure limit: above this fraction of failed clips a store is not marked complete.
MAX_FAILED_FRACTION = 0.2


class Encoder(Protocol):
    """What :func:`extract` needs from a teacher (or a mel front end): clips → (frames, D) arrays.

    See :class:`pipeline.teachers.Teacher` for the meaning of each member.
    """

    name: str
    sample_rate_hz: int
    min_duration_s: float
    dim: int

    def embed(self, waveforms: Sequence[np.ndarray]) -> list[np.ndarray]: ...

    def num_frames(self, n_samples: int) -> int: ...

    def fingerprint(self) -> dict[str, Any]: ...


class ExtractionError(RuntimeError):
    """Too many clips failed: the inputs or the settings are likely wrong."""


def check_failure_limit(fraction: float) -> float:
    """``fraction``, the share of clips that may fail with the store still marked complete,
    if it is from 0 to 1.

    Raises
    ------
    ValueError
        If it is not a number from 0 to 1.
    """
    if not 0 <= fraction <= 1:  # also refuses NaN
        raise ValueError(f"failure limit {fraction}: expected a fraction from 0 to 1")
    return fraction


@dataclass
class ExtractSummary:
    """What one extraction run did to a store: clips embedded and failed (clip → cause), clips
    zero-padded (clip → note), shards written and found done, clips handled, seconds taken, and
    the clips extracted again because their audio changed (clip → what changed)."""

    store: str
    clips: int
    embedded: int
    failed: dict[str, str] = field(default_factory=dict)
    padded: dict[str, str] = field(default_factory=dict)
    shards_written: int = 0
    shards_skipped: int = 0
    processed: int = 0
    seconds: float = 0.0
    audio_changed: dict[str, str] = field(default_factory=dict)

    @property
    def clips_per_s(self) -> float:
        """Clips handled by this run (decoded and embedded, or failed) per second."""
        return self.processed / self.seconds if self.seconds else 0.0

    def as_dict(self) -> dict[str, Any]:
        """The fields and ``clips_per_s``, as kept in the store's completion marker; of
        ``audio_changed`` only the number of clips (all of a rebuilt dataset's may change)."""
        fields = {**asdict(self), "audio_changed": len(self.audio_changed)}
        return {**fields, "clips_per_s": round(self.clips_per_s, 2)}

    def __str__(self) -> str:
        lines = [
            f"{self.store}: {self.embedded}/{self.clips} clips embedded, "
            f"{len(self.failed)} failed; "
            f"{self.shards_written} shards written, {self.shards_skipped} already done; "
            f"{self.seconds:.1f} s ({self.clips_per_s:.1f} clips/s)"
        ]
        lines += [f"  failed {clip}: {cause}" for clip, cause in sorted(self.failed.items())]
        lines += [f"  padded {clip}: {note}" for clip, note in sorted(self.padded.items())]
        return "\n".join(lines)


def open_encoder_store(
    manifest: Manifest,
    teacher: Encoder,
    out: str | os.PathLike,
    shard_size: int,
    max_duration_s: float | None,
    overwrite: bool,
) -> ClipStore:
    """Create (or reopen to resume) the store ``teacher`` fills for ``manifest``.

    Parameters
    ----------
    manifest, teacher, out, shard_size, max_duration_s, overwrite : as for :func:`extract`

    Returns
    -------
    ClipStore
        A store of ``len(manifest)`` rows of at most :func:`max_frames_for` frames of
        ``teacher.dim`` values.
    """
    return open_store(
        out,
        fingerprint=teacher.fingerprint(),
        clip_ids=manifest.clip_ids,
        dim=teacher.dim,
        max_frames=max_frames_for(manifest, teacher, max_duration_s),
        shard_size=shard_size,
        compression=getattr(teacher, "store_compression", "zstd"),
        overwrite=overwrite,
    )


def record_precision(store: ClipStore, encoder: Encoder) -> None:
    """Record the precision ``encoder`` computes at in ``store`` (nothing for an encoder without
    a ``precision``, such as a mel front end).

    Parameters
    ----------
    store : ClipStore
        The store a run is about to write shards into.
    encoder : Encoder
    """
    precision = getattr(encoder, "precision", None)
    if precision is not None:
        store.record_precision(precision)


def max_frames_for(manifest: Manifest, teacher: Encoder, max_duration_s: float | None) -> int:
    """Frames of the longest clip of ``manifest`` (cut to ``max_duration_s``) for ``teacher``.

    Parameters
    ----------
    manifest : Manifest
        The clips, with their ``duration_s`` (NaN where unknown).
    teacher : Encoder
    max_duration_s : float, optional
        Seconds kept of each clip; None: all.

    Returns
    -------
    int
        At least 1: the frame rows each clip has in the store.
    """
    durations = manifest.clips["duration_s"].to_numpy(dtype=float)
    if np.isnan(durations).all():
        raise ExtractionError(f"{manifest.name}: no clip has a readable duration")
    longest = float(np.nanmax(durations))
    if max_duration_s is not None:
        longest = min(longest, max_duration_s)
    return max(1, teacher.num_frames(math.ceil(longest * teacher.sample_rate_hz)))


def _decode_tasks(
    batches: Sequence[tuple[int, list[int]]],
    clip_ids: Sequence[str],
    paths: Sequence[str],
    teacher: Encoder,
    max_duration_s: float | None,
    *,
    identities: dict[str, dict[str, Any]],
    hash_audio: bool,
) -> Iterator[tuple[Any, ...]]:
    """The arguments of :func:`pipeline.extract.decode.decode_clips` per batch; each clip's audio
    identity is put into ``identities`` as its batch is handed to the decoders (hashing, when
    asked for, happens here, in the extracting process)."""
    for _, rows in batches:
        clips = [(clip_ids[r], paths[r]) for r in rows]
        for clip, path in clips:
            identities[clip] = audio_identity(path, content_hash=hash_audio)
        yield clips, teacher.sample_rate_hz, teacher.min_duration_s, max_duration_s


def extract(
    manifest: Manifest,
    teacher: Encoder,
    out: str | os.PathLike,
    *,
    batch_size: int = 16,
    shard_size: int = 256,
    jobs: int | None = None,
    max_duration_s: float | None = None,
    max_failed_fraction: float = MAX_FAILED_FRACTION,
    overwrite: bool = False,
    hash_audio: bool = False,
    progress: bool = True,
    say: Callable[[str], None] = print,
) -> ExtractSummary:
    """Embed every clip of ``manifest`` with ``teacher`` (any :class:`Encoder`) into ``out``.

    Parameters
    ----------
    batch_size : int > 0 -- clips per teacher call (and per decode task)
    shard_size : int > 0 -- clips per shard, the unit of writing and resuming
    jobs : decode worker processes; default: usable cores − 1 (``default_decode_jobs``)
    max_duration_s : keep only the first seconds of each clip
    max_failed_fraction : from 0 to 1; above this fraction of failed clips, ExtractionError and
        the store is held back from completion (see :func:`finish`)
    overwrite : delete an existing store (also one made with other settings) first
    hash_audio : record the sha256 of each clip's audio, and where one is recorded let the
        content decide whether a clip's audio changed (reads each such file of unchanged size)
    progress : show a progress bar (when writing to a terminal)
    say : where the lines about clips whose audio changed or is missing go

    Returns
    -------
    ExtractSummary
    """
    started = time.perf_counter()
    check_failure_limit(max_failed_fraction)
    clip_ids = manifest.clip_ids
    store = open_encoder_store(manifest, teacher, out, shard_size, max_duration_s, overwrite)
    paths = [str(p) for p in manifest.clips["path"]]
    done = store.done_shards()
    check = check_audio(store.path, clip_ids, paths, content_hash=hash_audio)
    begin_update(store.path, check, say=say)
    work: dict[int, Sequence[int]] = {
        p.index: range(p.start, p.stop) for p in store.shards() if p.index not in done
    }
    work.update(check.rows)
    if work:
        record_precision(store, teacher)
    summary = ExtractSummary(
        str(out),
        len(clip_ids),
        0,
        shards_skipped=len(done - set(check.rows)),
        audio_changed=check.changed,
    )
    batches = list(row_batches(work, batch_size))
    identities: dict[str, dict[str, Any]] = {}
    tasks = _decode_tasks(
        batches,
        clip_ids,
        paths,
        teacher,
        max_duration_s,
        identities=identities,
        hash_audio=hash_audio,
    )
    jobs = jobs or default_decode_jobs()
    decoded = decode_ahead(tasks, jobs, ahead=2 * jobs)
    bar = tqdm(
        total=sum(len(rows) for rows in work.values()),
        unit="clip",
        desc=f"{teacher.name} → {Path(out).name}",
        disable=None if progress else True,  # None: off when not writing to a terminal
    )
    with bar:
        _embed_and_write(store, teacher, batches, decoded, work, identities, summary, bar)
    return finish(store, summary, started, max_failed_fraction)


def _embed_and_write(
    store: ClipStore,
    teacher: Encoder,
    batches: Sequence[tuple[int, list[int]]],
    decoded: Iterator[list[np.ndarray | str]],
    work: Mapping[int, Sequence[int]],
    identities: dict[str, dict[str, Any]],
    summary: ExtractSummary,
    bar: tqdm,
) -> None:
    """Embed each decoded batch; write each shard with its audio records once its rows are
    embedded."""
    pending: dict[int, list[np.ndarray | str]] = {}
    for (shard, rows), waves in zip(batches, decoded, strict=True):
        ids = [store.clip_ids[r] for r in rows]
        summary.padded.update(padding_notes(teacher, ids, waves))
        pending.setdefault(shard, []).extend(embed_batch(teacher, ids, waves))
        bar.update(len(rows))
        summary.processed += len(rows)
        if rows[-1] == work[shard][-1]:
            audio = {store.clip_ids[r]: identities.pop(store.clip_ids[r]) for r in work[shard]}
            write_results(store, shard, pending.pop(shard), rows=work[shard], audio=audio)
            summary.shards_written += 1


def finish(
    store: ClipStore, summary: ExtractSummary, started: float, max_failed_fraction: float
) -> ExtractSummary:
    """Fill in the summary from the store and mark it complete, unless too many clips failed:
    then write its failures table (:func:`pipeline.stores.status.write_failures`) and record in
    the store why it is held back (:func:`pipeline.stores.markers.hold`), which readers report.

    Parameters
    ----------
    store : ClipStore
        The store, every shard written.
    summary : ExtractSummary
        The run's summary so far; its times, failures and embedded count are set here.
    started : float
        ``time.perf_counter()`` at the start of the run.
    max_failed_fraction : float
        As for :func:`extract`: above it, ExtractionError and no completion marker.

    Raises
    ------
    ExtractionError
        Too many clips failed; its message is the reason recorded in the store.

    Returns
    -------
    ExtractSummary
        ``summary``, filled in.
    """
    summary.seconds = time.perf_counter() - started
    summary.failed = store.failures()
    summary.embedded = int((store.n_frames > 0).sum())
    if len(summary.failed) > max_failed_fraction * len(store):
        table = write_failures(store.path, summary.failed)
        failed, clips = len(summary.failed), len(store)
        reason = markers.hold(store.path, failed, clips, max_failed_fraction, str(table))
        raise ExtractionError(f"{store.path}: {reason}")
    store.mark_complete(summary.as_dict())
    return summary
