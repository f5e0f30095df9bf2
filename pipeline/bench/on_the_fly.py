"""P1: a training epoch with the teacher run on the fly ÷ the same epoch from the cache.

Both sides train the same student (one model, one Adam optimiser) with the same EAsT loss
(distance correlation, λ of the config preset) through
:func:`pipeline.train.steps.train_one_epoch` (:func:`pipeline.bench.epochs.epoch_runner`), over
the same clips in the same order (one :class:`pipeline.train.samplers.ShardAwareSampler` order),
with the same batch size and ``ctx.workers`` DataLoader workers. They differ only in where a
batch's mels and teacher embeddings come from:

* cached: :class:`pipeline.train.loader.ClipDataset` over the mel store and the teacher store,
  loaded with the DataLoader settings of training (:func:`store_loader`). Making the two stores
  with :func:`pipeline.extract.local.extract` (:func:`pipeline.bench.stores.ensure_store`) is
  paid once, not per epoch; its time is in the details.
* on the fly: the DataLoader workers decode each clip once
  (:func:`pipeline.data.audio.load_audio` at the file's own rate), resample it with soxr to the
  teacher's and to the student's rate (the same samples ``load_audio`` gives at those rates) and
  compute the student's log-mel (:class:`pipeline.extract.frontends.MelFrontEnd`, as the mel
  store holds it); the main process runs the teacher forward (``teacher.embed``, no gradient, on
  ``ctx.device``) per batch, then the training step.

Rows:

* "P1": PANNs Cnn14 (random weights, saved once as a checkpoint under ``ctx.root``, see
  :mod:`pipeline.bench.teachers`; the clip embedding, as the paper used PANNs) → mobile_fcn at
  its 16 kHz front end. Target >= 20.
* "P1-musicnn": musicnn with its real weights (max_pool layer, one frame per 3 s) → cp_resnet at
  its 32 kHz front end. Report only: the student is heavy and the teacher light here, so the
  cache can save little.

Sizes: ``ctx.size(128, minimum=8)`` clips of 10 s, batches of 16 (fewer if there are fewer
clips). After one untimed cached epoch and one untimed teacher call, the cached epoch is timed
``ctx.repeats`` times (median); the on-the-fly epoch once on the CPU (one pass runs the teacher
over every clip, slow there) and ``ctx.repeats`` times on a GPU. The two sides take turns, so a
change in the machine's load hits both alike. Details add the stage-one times, the GFLOP per
clip of teacher and student step and the load average.
"""

from __future__ import annotations

import os
import statistics
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf
import soxr
import torch
from torch.utils.data import DataLoader, Dataset

from pipeline.bench import BenchContext, Figure, device_name, measure_cases, median_seconds
from pipeline.bench.corpus import make_corpus
from pipeline.bench.epochs import epoch_runner, flops_per_clip
from pipeline.bench.stores import ensure_store
from pipeline.bench.teachers import make_teacher
from pipeline.data.audio import load_audio
from pipeline.data.manifest import Manifest
from pipeline.extract.frontends import MelFrontEnd, create_frontend
from pipeline.extract.local import max_frames_for
from pipeline.students import create_student
from pipeline.teachers import Teacher
from pipeline.train.config import TrainConfig
from pipeline.train.loader import ClipDataset, collate, fit_frames
from pipeline.train.samplers import ShardAwareSampler

FULL_CLIPS = 128
MIN_CLIPS = 8
BATCH_SIZE = 16
CLIP_S = 10.0
SEED = 1223


@dataclass(frozen=True)
class Case:
    """One teacher → student pair of P1."""

    id: str
    label: str
    teacher: str  # "panns" (random Cnn14) or a registered teacher name
    student: str  # student name, also its mel front end
    target: str


TEACHER_NOTES = {
    "panns": "PANNs Cnn14, random weights, clip layer (1 × 2048)",
    "musicnn": "musicnn MTT, real weights, max_pool layer (1 frame per 3 s × 753)",
}
CASES = (
    Case("P1", "Cnn14 → mobile_fcn", "panns", "mobile_fcn", ">= 20"),
    Case("P1-musicnn", "musicnn → cp_resnet", "musicnn", "cp_resnet", "report"),
)


# -- the on-the-fly data path --------------------------------------------------------------------
def decode_at(path: str, rates: Sequence[int]) -> list[np.ndarray]:
    """Decode ``path`` once and resample it to each rate in ``rates`` (mono float32 each).

    Gives exactly ``load_audio(path, sr_hz=rate)`` per rate: that too averages the channels at
    the file's rate, then resamples with soxr's HQ setting.

    Parameters
    ----------
    path : str -- an audio file
    rates : sequence of int -- sampling rates in Hz

    Returns
    -------
    list of np.ndarray, (samples,) float32 -- one waveform per rate, in the order of ``rates``.
    """
    native = sf.info(path).samplerate
    mono = load_audio(path, sr_hz=native)
    return [
        mono
        if rate == native
        else soxr.resample(mono, native, rate, quality="HQ").astype(np.float32, copy=False)
        for rate in rates
    ]


class AudioClips(Dataset):
    """Clips read from their audio files per item: the teacher's waveform and the student's mel.

    Items: ``wave`` (samples,) float32 at ``teacher_rate_hz``; ``mel`` (n_mels, mel_frames)
    float32 tensor; ``labels`` / ``mask`` (classes,) tensors; ``index``.

    Parameters
    ----------
    manifest : Manifest -- the clips, in item order
    teacher_rate_hz : int -- sampling rate of ``wave`` in Hz
    frontend : MelFrontEnd -- the student's mel front end
    mel_frames : int -- frames of every mel, cut or repeated from the start to fit
    """

    def __init__(
        self, manifest: Manifest, teacher_rate_hz: int, frontend: MelFrontEnd, mel_frames: int
    ) -> None:
        self.paths = manifest.clips["path"].tolist()
        self.labels = manifest.labels()
        self.mask = manifest.mask()
        self.teacher_rate_hz = teacher_rate_hz
        self.frontend = frontend
        self.mel_frames = mel_frames

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> dict[str, Any]:
        wave, student_wave = decode_at(
            self.paths[i], (self.teacher_rate_hz, self.frontend.sample_rate_hz)
        )
        [mel] = self.frontend.embed([student_wave])  # (frames, n_mels)
        mel = np.ascontiguousarray(fit_frames(mel, self.mel_frames).T, dtype=np.float32)
        return {
            "wave": wave,
            "mel": torch.from_numpy(mel),
            "labels": torch.from_numpy(self.labels[i].copy()),
            "mask": torch.from_numpy(self.mask[i].copy()),
            "index": int(i),
        }


def collate_audio(items: list[dict[str, Any]]) -> dict[str, Any]:
    """Stack the tensors of :class:`AudioClips` items; waveforms stay a list (``waves``).

    Parameters
    ----------
    items : list of dict -- N items of :class:`AudioClips`

    Returns
    -------
    dict -- ``waves`` (list of N arrays), ``mel`` (N, n_mels, frames), ``labels`` and ``mask``
    (N, classes), ``index`` (N,) int64.
    """
    return {
        "waves": [it["wave"] for it in items],
        "mel": torch.stack([it["mel"] for it in items]),
        "labels": torch.stack([it["labels"] for it in items]),
        "mask": torch.stack([it["mask"] for it in items]),
        "index": torch.tensor([it["index"] for it in items], dtype=torch.int64),
    }


def with_teacher(
    loader: Iterable[dict[str, Any]], teacher: Teacher, frames: int
) -> Iterator[dict[str, Any]]:
    """Batches of ``loader`` with ``teachers`` = [(N, frames, D)] computed now by ``teacher``.

    Parameters
    ----------
    loader : iterable of dict -- batches of :func:`collate_audio`; their ``waves`` are consumed
    teacher : Teacher -- embeds each batch's waveforms
    frames : int -- teacher frames per clip, cut or repeated from the start to fit

    Yields
    ------
    dict -- the batch with float32 ``teachers`` in place of ``waves``.
    """
    for batch in loader:
        embeddings = teacher.embed(batch.pop("waves"))
        stacked = np.stack([fit_frames(e, frames) for e in embeddings]).astype(np.float32)
        yield {**batch, "teachers": [torch.from_numpy(stacked)]}


# -- one epoch ----------------------------------------------------------------------------------
def store_loader(
    dataset: ClipDataset, cfg: TrainConfig, device: torch.device
) -> tuple[DataLoader, ShardAwareSampler]:
    """The training DataLoader of one process, as :mod:`pipeline.train.loop` sets it up.

    Shard-aware order from ``cfg.seed``, whole batches of ``cfg.batch_size``, ``cfg.workers``
    persistent workers.

    Parameters
    ----------
    dataset : ClipDataset -- the cached clips
    cfg : TrainConfig -- batch size, workers, shard window and seed
    device : torch.device -- memory is pinned for CUDA

    Returns
    -------
    loader : DataLoader
    sampler : ShardAwareSampler -- its clip order, to share with another loader
    """
    sampler = ShardAwareSampler(dataset.shard_ids, window=cfg.shard_window, seed=cfg.seed)
    loader = DataLoader(
        dataset,
        batch_size=cfg.batch_size,
        sampler=sampler,
        drop_last=True,
        collate_fn=collate,
        num_workers=cfg.workers,
        persistent_workers=cfg.workers > 0,
        pin_memory=device.type == "cuda",
    )
    return loader, sampler


def measure(ctx: BenchContext, case: Case) -> Figure:
    """Time the cached and the on-the-fly epoch of ``case``; their ratio is the figure.

    Parameters
    ----------
    ctx : BenchContext
    case : Case -- one of :data:`CASES`

    Returns
    -------
    Figure -- the row ``case.id``: on-the-fly seconds per epoch ÷ cached seconds per epoch.
    """
    n = ctx.size(FULL_CLIPS, minimum=MIN_CLIPS)
    batch_size = min(BATCH_SIZE, n)
    manifest = make_corpus(ctx.root, n, duration_s=CLIP_S)
    folder = Path(ctx.root) / "on_the_fly" / f"{manifest.name}-{CLIP_S:g}s"
    device = torch.device(ctx.device)
    teacher = make_teacher(case.teacher, ctx)
    frontend = create_frontend(case.student)  # mels on the CPU, as the mel store is made
    mel_path = folder / f"{frontend.name}.zarr"
    teacher_path = folder / f"{case.teacher}-{getattr(teacher, 'layer', '')}.zarr"
    mel_s, mel_reused = ensure_store(manifest, frontend, mel_path, ctx.workers)
    teacher_s, teacher_reused = ensure_store(manifest, teacher, teacher_path, ctx.workers)

    cfg = TrainConfig(
        dataset="bench",
        student=case.student,
        teacher=case.teacher,
        frontend=case.student,
        batch_size=batch_size,
        workers=ctx.workers,
        device=ctx.device,
        seed=SEED,
    )
    cached_set = ClipDataset(manifest, "train", mel_path, [teacher_path])
    cached_loader, sampler = store_loader(cached_set, cfg, device)
    mel_frames = max_frames_for(manifest, frontend, None)
    teacher_frames = max_frames_for(manifest, teacher, None)
    audio_loader = DataLoader(
        AudioClips(manifest, teacher.sample_rate_hz, frontend, mel_frames),
        batch_size=batch_size,
        sampler=sampler,  # the same clip order as the cached side
        drop_last=True,
        collate_fn=collate_audio,
        num_workers=ctx.workers,
        persistent_workers=ctx.workers > 0,
        pin_memory=device.type == "cuda",
    )

    torch.manual_seed(cfg.seed)
    model = create_student(case.student, n_classes=len(manifest.classes), n_mels=frontend.dim)
    model = model.to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    cached_epoch = epoch_runner(model, optimizer, cfg, lambda: cached_loader, device)
    live_epoch = epoch_runner(
        model, optimizer, cfg, lambda: with_teacher(audio_loader, teacher, teacher_frames), device
    )

    load_before = os.getloadavg()[0]
    cached_epoch()  # untimed: starts the workers, sets up the student's kernels
    silence = np.zeros(int(CLIP_S * teacher.sample_rate_hz), dtype=np.float32)
    teacher.embed([silence] * batch_size)  # untimed: the teacher's first call sets itself up
    # The sides take turns, so a change in the machine's load hits both alike.
    live_repeats = ctx.repeats if device.type == "cuda" else 1
    cached_times, live_times = [], []
    for i in range(ctx.repeats):
        cached_times += median_seconds(cached_epoch, 1)[1]
        if i < live_repeats:
            live_times += median_seconds(live_epoch, 1)[1]
    cached_s, live_s = statistics.median(cached_times), statistics.median(live_times)

    steps = n // batch_size
    gflop = flops_per_clip(teacher, model, mel_frames, CLIP_S)
    details = {
        "clips": n,
        "clip_s": CLIP_S,
        "batch_size": batch_size,
        "steps_per_epoch": steps,
        "workers": ctx.workers,
        "teacher": TEACHER_NOTES.get(case.teacher, case.teacher),
        "teacher_dim": teacher.dim,
        "teacher_frames": teacher_frames,
        "student": case.student,
        "mel_frames": mel_frames,
        "lam": cfg.regulariser_weight,
        "loss": cfg.loss,
        "on_the_fly_s": live_s,
        "on_the_fly_times_s": live_times,
        "on_the_fly_repeats": live_repeats,
        "cached_s": cached_s,
        "cached_times_s": cached_times,
        "cached_repeats": ctx.repeats,
        "cached_warmup_epochs": 1,
        "on_the_fly_note": (
            "timed once on the CPU (one epoch runs the teacher over every clip); "
            "the teacher and the student were warmed up untimed first"
            if device.type != "cuda"
            else "median of the repeats, taking turns with the cached epochs"
        ),
        "extraction_s": {"mel": mel_s, "teacher": teacher_s},
        "extraction_reused": {"mel": mel_reused, "teacher": teacher_reused},
        "extraction_note": (
            "stage one, paid once per dataset and not per epoch; 'reused' stores were made by an "
            "earlier run and their time is the one that run recorded"
        ),
        "load_average_1min": {"start": load_before, "end": os.getloadavg()[0]},
        "break_even_epochs": (mel_s + teacher_s) / max(live_s - cached_s, 1e-9),
        "gflop_per_clip": gflop,
        "flop_bound_ratio": (gflop["teacher_forward"] + gflop["student_step"])
        / gflop["student_step"],
        "flop_note": (
            "the ratio if both epochs took time in proportion to their FLOPs (decoding and "
            "loading left out): what the figure can reach on any device"
        ),
    }
    return Figure(
        id=case.id,
        what=f"epoch time {case.label}: teacher on the fly ÷ cached embeddings",
        ratio=live_s / cached_s,
        target=case.target,
        numerator=f"{live_s:.2f} s/epoch on the fly ({n / live_s:.1f} clips/s)",
        denominator=f"{cached_s:.2f} s/epoch cached ({n / cached_s:.1f} clips/s)",
        details=details,
        device=device_name(ctx.device),
    )


def run(ctx: BenchContext) -> list[Figure]:
    """P1 and P1-musicnn (those that ``ctx`` asks for); a failing case becomes an error row.

    Parameters
    ----------
    ctx : BenchContext

    Returns
    -------
    list of Figure
    """
    return measure_cases(ctx, CASES, measure, lambda case: f"epoch time {case.label}")
