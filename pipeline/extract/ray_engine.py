"""Stage one on Ray Data: the same store as :func:`pipeline.extract.local.extract`, on a cluster.

The unit of work is a shard. Ray tasks (one CPU each) decode and resample a shard's clips; a
pool of actors, each holding one loaded teacher (and ``gpus_per_actor`` of a GPU when the
cluster has GPUs), embeds them in the batches the local engine uses and writes the shard with
its done marker. Each shard is therefore written by exactly one task, shards already done are
not sent at all, and a killed run resumes where it stopped. The values equal the local
engine's: same decoding, same teacher calls, same batches.

Each shard's marker records its clips' audio identities, taken in the decode task
(:mod:`pipeline.extract.audio_identity`). Shards with clips whose audio changed since they were
extracted are extracted again whole on Ray (the local engine decodes and embeds only the changed
clips); the values are the same either way.

The store must be reachable at the same path from the driver and every worker: a local folder
for a one-machine cluster, a shared filesystem (NFS, Lustre, a mounted bucket) for several.
Every node needs this package and the teacher's weights installed the same way.

Decoded audio travels through Ray's object store, a shard at a time: ``shard_size`` × clip
length × sample rate × 4 bytes per shard in flight (256 ten-second clips at 32 kHz: 330 MB).
Lower ``shard_size`` if the object store is small.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from pipeline.data.manifest import Manifest
from pipeline.extract.audio_identity import audio_identity, begin_update, check_audio
from pipeline.extract.decode import decode_clips
from pipeline.extract.local import (
    MAX_FAILED_FRACTION,
    Encoder,
    ExtractSummary,
    check_failure_limit,
    finish,
    open_encoder_store,
)
from pipeline.extract.shards import embed_shard, write_results
from pipeline.stores import open_for_writing


def _import_ray():
    try:
        import ray
        import ray.data
    except ImportError as err:
        raise ImportError(
            "the Ray engine needs Ray Data: pip install 'pipeline[ray]' (or 'ray[data]')"
        ) from err
    return ray


def _decode_shard(
    row: dict[str, Any],
    sr_hz: int,
    min_duration_s: float,
    max_duration_s: float | None,
    content_hash: bool = False,
) -> dict[str, Any]:
    """A shard's clips decoded: all waveforms end to end, their lengths (-1: failed), the
    failures' causes (JSON, by position in the shard) and the clips' audio identities taken
    just before (JSON, by clip)."""
    clips = list(zip(row["clip_ids"], row["paths"], strict=True))
    audio = {clip: audio_identity(path, content_hash=content_hash) for clip, path in clips}
    waves = decode_clips(clips, sr_hz, min_duration_s, max_duration_s)
    ok = [w for w in waves if not isinstance(w, str)]
    return {
        "shard": row["shard"],
        "audio": np.concatenate(ok) if ok else np.zeros(0, np.float32),
        "lengths": np.asarray([-1 if isinstance(w, str) else len(w) for w in waves], np.int64),
        "errors": json.dumps({i: w for i, w in enumerate(waves) if isinstance(w, str)}),
        "identities": json.dumps(audio),
    }


def _split(audio: np.ndarray, lengths: np.ndarray, errors: str) -> list[np.ndarray | str]:
    """Inverse of :func:`_decode_shard`'s packing."""
    causes = {int(i): c for i, c in json.loads(errors).items()}
    waves: list[np.ndarray | str] = []
    offset = 0
    for i, n in enumerate(lengths.tolist()):
        if n < 0:
            waves.append(causes[i])
        else:
            waves.append(np.asarray(audio[offset : offset + n], dtype=np.float32))
            offset += n
    return waves


def _decoded_shard_bytes(
    manifest: Manifest, plans: list, sr_hz: int, max_duration_s: float | None
) -> int:
    """Memory a decode task may need: a worker process (256 MiB) plus the largest shard's
    audio as float32, twice over (the decoder's own buffers)."""
    seconds = manifest.clips["duration_s"].fillna(0.0).to_numpy(dtype=float)
    if max_duration_s is not None:
        seconds = np.minimum(seconds, max_duration_s)
    largest = max(float(seconds[p.start : p.stop].sum()) for p in plans)
    return (256 << 20) + int(2 * 4 * sr_hz * largest)


class ShardEmbedder:
    """Ray actor: loads the teacher once, then embeds and writes whole shards.

    Each output row names the shard, the clips the teacher zero-padded (JSON) and the precision
    the actor's teacher ran at ("auto" resolves on the actor's own device), which the driver
    records in the store.
    """

    def __init__(
        self,
        store_path: str,
        teacher_name: str,
        teacher_options: dict[str, Any],
        fingerprint: dict[str, Any],
        batch_size: int,
    ):
        from pipeline.devices import resolve_device
        from pipeline.teachers import create_teacher

        device = str(resolve_device())  # Ray shows an actor its assigned GPUs only
        self.teacher = create_teacher(teacher_name, device=device, **teacher_options)
        self.store = open_for_writing(store_path, fingerprint)
        self.batch_size = batch_size

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        shards, padded = [], []
        for k in range(len(batch["shard"])):
            shard = int(batch["shard"][k])
            plan = self.store.shards()[shard]
            waves = _split(batch["audio"][k], batch["lengths"][k], str(batch["errors"][k]))
            clip_ids = self.store.clip_ids[plan.start : plan.stop]
            results, notes = embed_shard(self.teacher, clip_ids, waves, self.batch_size)
            audio = json.loads(str(batch["identities"][k]))
            write_results(self.store, shard, results, audio=audio)
            shards.append(shard)
            padded.append(json.dumps(notes))
        return {
            "shard": np.asarray(shards, np.int64),
            "padded": np.asarray(padded, object),
            "precision": np.asarray([self.teacher.precision] * len(shards), object),
        }


def extract_ray(
    manifest: Manifest,
    teacher_name: str,
    out: str | os.PathLike,
    *,
    teacher_options: dict[str, Any] | None = None,
    teacher: Encoder | None = None,
    address: str | None = None,
    actors: int | None = None,
    gpus_per_actor: float | None = None,
    batch_size: int = 16,
    shard_size: int = 256,
    max_duration_s: float | None = None,
    max_failed_fraction: float = MAX_FAILED_FRACTION,
    overwrite: bool = False,
    hash_audio: bool = False,
    progress: bool = True,
    say: Callable[[str], None] = print,
) -> ExtractSummary:
    """Embed every clip of ``manifest`` with the teacher ``teacher_name`` into ``out`` on Ray.

    Parameters
    ----------
    teacher_options : keyword arguments of :func:`pipeline.teachers.create_teacher` (weights,
        model options); each actor builds its own teacher from them
    teacher : the driver's copy of that teacher, if already built (on the CPU); else built here
    address : Ray cluster to join ("auto", "ray://host:10001", …); default: ``$RAY_ADDRESS``,
        else a Ray instance started on this machine for the run
    actors : teacher actors; default: one per GPU in the cluster, else 1
    gpus_per_actor : GPUs reserved per actor; default: 1 when the cluster has GPUs, else 0
    batch_size, shard_size, max_duration_s, max_failed_fraction, overwrite, hash_audio, say :
        as for :func:`pipeline.extract.local.extract`; the store is the same

    Returns
    -------
    ExtractSummary
    """
    from pipeline.teachers import create_teacher

    check_failure_limit(max_failed_fraction)
    ray = _import_ray()
    started = time.perf_counter()
    options = {k: v for k, v in (teacher_options or {}).items() if v is not None}
    # The driver builds the teacher once on the CPU: it checks the weights and options with a
    # clear message before any worker starts, and gives the store's fingerprint and layout.
    if teacher is None:
        teacher = create_teacher(teacher_name, device="cpu", **options)
    fingerprint = teacher.fingerprint()
    clip_ids = manifest.clip_ids
    store = open_encoder_store(manifest, teacher, out, shard_size, max_duration_s, overwrite)
    shards = store.shards()
    done = store.done_shards()
    paths = manifest.clips["path"].astype(str).tolist()
    check = check_audio(store.path, clip_ids, paths, content_hash=hash_audio)
    begin_update(store.path, check, say=say)
    todo = [p for p in shards if p.index not in done or p.index in check.rows]
    skipped = len(done - set(check.rows))
    summary = ExtractSummary(
        str(out), len(clip_ids), 0, shards_skipped=skipped, audio_changed=check.changed
    )
    if todo:
        if not ray.is_initialized():
            ray.init(address=address, include_dashboard=False, log_to_driver=False)
        gpus = ray.cluster_resources().get("GPU", 0)
        if gpus_per_actor is None:
            gpus_per_actor = 1.0 if gpus else 0.0
        if actors is None:
            actors = max(1, int(gpus // gpus_per_actor)) if gpus_per_actor else 1
        context = ray.data.DataContext.get_current()
        context.enable_progress_bars = False
        items = [
            {
                "shard": p.index,
                "clip_ids": clip_ids[p.start : p.stop],
                "paths": paths[p.start : p.stop],
            }
            for p in todo
        ]
        sizes = {p.index: p.stop - p.start for p in todo}
        # Reserving a decoded shard's memory per decode task keeps Ray from running more of
        # them than a node can hold, and keeps decoding in tasks of its own rather than fused
        # into the teacher actors, whose resources differ.
        decoded_bytes = _decoded_shard_bytes(manifest, todo, teacher.sample_rate_hz, max_duration_s)
        written = (
            ray.data.from_items(items, override_num_blocks=len(items))
            .map(
                _decode_shard,
                fn_kwargs={
                    "sr_hz": teacher.sample_rate_hz,
                    "min_duration_s": teacher.min_duration_s,
                    "max_duration_s": max_duration_s,
                    "content_hash": hash_audio,
                },
                num_cpus=1,
                memory=decoded_bytes,
            )
            .map_batches(
                ShardEmbedder,
                fn_constructor_kwargs={
                    "store_path": str(out),
                    "teacher_name": teacher_name,
                    "teacher_options": options,
                    "fingerprint": fingerprint,
                    "batch_size": batch_size,
                },
                batch_size=1,
                compute=ray.data.ActorPoolStrategy(size=actors),
                num_cpus=1,
                num_gpus=gpus_per_actor,
                batch_format="numpy",
            )
        )
        precisions: set[str] = set()
        bar = tqdm(
            total=sum(sizes.values()),
            unit="clip",
            desc=f"{teacher.name} → {os.path.basename(out)} (Ray, {actors} actors)",
            disable=None if progress else True,
        )
        with bar:
            for row in written.iter_rows():
                if str(row["precision"]) not in precisions:
                    precisions.add(str(row["precision"]))
                    store.record_precision(str(row["precision"]))
                summary.padded.update(json.loads(row["padded"]))
                summary.shards_written += 1
                summary.processed += sizes[int(row["shard"])]
                bar.update(sizes[int(row["shard"])])
    del teacher
    # Markers written by the workers: reopen so the summary sees them.
    store = open_for_writing(out, fingerprint)
    return finish(store, summary, started, max_failed_fraction)
