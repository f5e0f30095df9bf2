"""Stage one as the command line runs it: fill a dataset's clip store, keep a table of the
clips that failed next to it, and say how it went.

:func:`run_extraction` builds the teacher and runs :func:`fill_store` with the local engine
(:mod:`pipeline.extract.local`) or on Ray (:mod:`pipeline.extract.ray_engine`); the mel stage
(:mod:`pipeline.extract.mels`) fills its stores through :func:`fill_store` as well.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.data.manifest import Manifest
from pipeline.extract.local import Encoder, ExtractSummary, extract, max_frames_for
from pipeline.paths import read_manifest, store_path
from pipeline.stores import StoreError
from pipeline.stores.status import (
    os_error_text,
    shard_of,
    staleness,
    write_failures,
)

CLIP_COLUMN_MAX = 40  # characters of the clip column in the failures table


@dataclass
class FilledStore:
    """What filling a store did: the extraction's summary and where its failures table is.

    ``str()`` is the report the extract and mels stages print: the summary's first line, a
    table of the failed clips and the clips the encoder zero-padded.
    """

    summary: ExtractSummary
    failures_csv: Path

    @property
    def exit_status(self) -> int:
        """0 when every clip was embedded, 1 when the store is complete but some clips failed."""
        return 1 if self.summary.failed else 0

    def __str__(self) -> str:
        failed = self.summary.failed
        head, *_ = str(self.summary).splitlines()
        lines = [head]
        if failed:
            width = min(CLIP_COLUMN_MAX, max(len("clip"), *(len(c) for c in failed)))
            clips = f"{len(failed)} clip{'s' if len(failed) != 1 else ''}"
            lines.append(f"{clips} failed (also in {self.failures_csv}):")
            lines.append(f"  {'clip':<{width}}  cause")
            lines += [f"  {clip:<{width}}  {cause}" for clip, cause in sorted(failed.items())]
        lines += [f"  padded {clip}: {note}" for clip, note in sorted(self.summary.padded.items())]
        return "\n".join(lines)


def fill_store(
    encoder: Encoder,
    manifest: Manifest,
    out: Path,
    *,
    ray_options: Mapping[str, Any] | None = None,
    **options: Any,
) -> FilledStore:
    """Fill (or finish) the store ``out`` with ``encoder``'s output for every clip of ``manifest``.

    The failed clips are written to ``<store>.failures.csv``
    (:func:`pipeline.stores.status.write_failures`), also when more than ``max_failed_fraction``
    of the clips failed: then the store is held back from completion, recording why
    (:func:`pipeline.extract.local.finish`).

    Parameters
    ----------
    encoder : Encoder
        The teacher or mel front end.
    manifest : Manifest
        The clips to encode.
    out : Path
        The ``<name>.zarr`` store to write.
    ray_options : mapping, optional
        Keyword arguments of :func:`pipeline.extract.ray_engine.extract_ray` beyond the store
        options (``teacher_name``, ``teacher_options``, ``address``, ``actors``,
        ``gpus_per_actor``): run on Ray. None: run here, with the local engine.
    **options
        Keyword arguments of :func:`pipeline.extract.local.extract` (``batch_size``,
        ``shard_size``, ``jobs``, ``max_duration_s``, ``max_failed_fraction``, ``overwrite``,
        ``hash_audio``, ``progress``, ``say``); ``jobs`` is left out on Ray, where decoding
        runs in Ray tasks.

    Returns
    -------
    FilledStore
        The summary and the failures table; its ``exit_status`` is the stage's.

    Raises
    ------
    ExtractionError
        Too many clips failed (the store is kept, not marked complete).
    StoreError
        Writing the store failed (a full disk), naming the store and, where known, the shard.
    """
    try:
        if ray_options is not None:
            from pipeline.extract.ray_engine import extract_ray

            store_options = {k: v for k, v in options.items() if k != "jobs"}
            summary = extract_ray(
                manifest, out=out, teacher=encoder, **ray_options, **store_options
            )
        else:
            summary = extract(manifest, encoder, out, **options)
    except OSError as err:
        if isinstance(err, FileNotFoundError) and not out.exists():
            raise
        raise StoreError(
            f"{out}: writing the store failed{shard_of(err, out)} ({os_error_text(err)}); the "
            "shards done so far are kept: free space or fix the cause and run the same command "
            "again to resume"
        ) from err
    return FilledStore(summary, write_failures(out, summary.failed))


def run_extraction(
    data_dir: Path,
    dataset: str,
    teacher_name: str,
    *,
    name: str | None = None,
    weights: str | os.PathLike | None = None,
    device: str | None = None,
    precision: str | None = None,
    teacher_options: Mapping[str, Any] | None = None,
    replace_stale: bool = False,
    engine: str = "local",
    ray_address: str | None = None,
    actors: int | None = None,
    gpus_per_actor: float | None = None,
    say: Callable[[str], None] = print,
    **options: Any,
) -> FilledStore:
    """Embed every clip of a dataset's manifest with a teacher into its clip store.

    Parameters
    ----------
    data_dir : Path
        Root of everything generated; the store is ``cache/<dataset>/<name>.zarr`` in it.
    dataset : str
        The manifest's name.
    teacher_name : str
        A registered teacher or ``hear:<module>``.
    name : str, optional
        The store's name; default: the teacher's, ':' → '-'.
    weights : path, optional
        The teacher's weights file (default: its environment variable, then the package cache).
    device : str, optional
        Torch device of the teacher; default: :func:`pipeline.devices.resolve_device`'s. On Ray
        the teacher built here only checks the weights and settings, on the CPU.
    precision : {"auto", "bf16", "fp16", "fp32"}, optional
        Arithmetic of the teacher's network (see
        :meth:`pipeline.teachers.Teacher.choose_precision`); default "auto": bf16 on a GPU that
        supports it, for a teacher whose bf16 embeddings agree with its fp32 ones, else fp32.
        It does not enter the store's fingerprint; the store records the precisions used.
    teacher_options : mapping, optional
        The teacher's keyword options (``layer="penultimate"``, …).
    replace_stale : bool
        Extract afresh when the store was made with other settings or for other clips (saying
        why), instead of refusing to resume it.
    engine : {"local", "ray"}
        Where to run: this machine, or a Ray cluster (the same store, value for value).
    ray_address, actors, gpus_per_actor
        Ray's cluster, teacher actors and GPUs per actor (see
        :func:`pipeline.extract.ray_engine.extract_ray`).
    say : callable
        Where the lines about a stale store and about clips whose audio changed go.
    **options
        The store options of :func:`fill_store` (``batch_size``, ``shard_size``, ``jobs``,
        ``max_duration_s``, ``max_failed_fraction``, ``overwrite``, ``hash_audio``,
        ``progress``).

    Returns
    -------
    FilledStore
    """
    from pipeline.devices import AUTO, resolve_device
    from pipeline.teachers import create_teacher

    manifest = read_manifest(data_dir, dataset)
    on_ray = engine == "ray"
    device = "cpu" if on_ray else str(resolve_device(device))
    teacher_options = {"precision": precision or AUTO, **(teacher_options or {})}
    teacher = create_teacher(teacher_name, weights=weights, device=device, **teacher_options)
    out = store_path(data_dir, dataset, name or teacher_name)
    if replace_stale and not options.get("overwrite"):
        room = max_frames_for(manifest, teacher, options.get("max_duration_s"))
        why = staleness(out, teacher.fingerprint(), manifest.clip_ids, max_frames=room)
        if why:
            say(f"{out} was {why}: extracting it again")
            options["overwrite"] = True
    ray_options = None
    if on_ray:
        ray_options = {
            "teacher_name": teacher_name,
            "teacher_options": {"weights": weights, **teacher_options},
            "address": ray_address,
            "actors": actors,
            "gpus_per_actor": gpus_per_actor,
        }
    return fill_store(teacher, manifest, out, ray_options=ray_options, say=say, **options)
