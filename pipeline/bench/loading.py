"""Loader benchmarks P2 and P3: how fast stage two gets its training batches.

Setup (written once under ``ctx.root``, reused while complete): a corpus of
``ctx.size(2000, minimum=32)`` clips of 10 s, its mobile_fcn log-mel store (made by the real
stage one) and a teacher-shaped store of random float16 values with PaSST's shape, 11 frames ×
768 per clip (see :mod:`pipeline.bench.stores`; the loader only moves bytes, so the values do not
matter). Every side below delivers the same batches: the same clips in the same order (one
:class:`pipeline.train.loader.ShardAwareSampler` order), 32 clips per batch, mels as (32, 96, 500) and
embeddings as (32, 11, 768) float32 tensors.

P2 -- our loader ÷ the way the EAsT reference code loads its data.
    Ours: :class:`pipeline.train.loader.ClipDataset` over the two stores, torch ``DataLoader`` with
    ``ctx.workers`` workers. Theirs: a ``Dataset`` whose ``__getitem__`` decodes the clip's audio
    file (:func:`pipeline.data.audio.load_audio`, 16 kHz), computes its log-mel with the same
    :class:`pipeline.extract.frontends.MelSpectrogram` and ``np.load``-s the clip's embedding from one
    ``.npy`` file per clip; same ``DataLoader`` settings. Ratio of clips/s; target >= 5.

P3 -- our loader ÷ reading the same bytes raw.
    The raw side holds every clip's valid mel rows and embedding rows (float16, in store order)
    in one flat file, reads each clip with one ``os.pread`` in our loader's access order and
    converts a whole batch to the same float32 tensors with a few numpy calls: the least work
    that yields the batch. Both sides run single-process (``num_workers=0``) for the figure; the
    same comparison with ``ctx.workers`` workers is in the details. "P3" uses the Zarr stores;
    "P3-h5" HDF5 copies made by ``pipeline.stores.h5_store.export_h5`` (skipped where that is missing).
    Ratio of clips/s; target >= 0.5.

Each side is timed for whole passes over the corpus: one untimed pass first (it fills the page
cache and starts the workers; workers persist between passes), then the median of
``ctx.repeats`` passes. Every side therefore reads from memory, not disk: the figures compare
CPU cost. The first batch of each side is built once beforehand and compared with ours: the raw side
must match exactly; the audio side's mels differ by float16 rounding (details).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from pipeline.bench import BenchContext, Figure, device_name, error_figure, median_seconds
from pipeline.bench.corpus import make_corpus
from pipeline.bench.stores import build_stores
from pipeline.data.audio import load_audio
from pipeline.data.manifest import Manifest
from pipeline.extract.frontends import MelSpectrogram, frontend_config
from pipeline.stores.zarr_store import COMPLETE_MARKER, read_store
from pipeline.train.loader import ClipDataset, ShardAwareSampler, collate

BATCH_SIZE = 32
FULL_CLIPS = 2000
FRONTEND = "mobile_fcn"
WHAT = {
    "P2": "our loader ÷ decode audio + mel + .npy per clip (clips/s)",
    "P3": "our loader over the Zarr stores ÷ pread of the same bytes (clips/s, 1 process)",
    "P3-h5": "our loader over HDF5 copies ÷ pread of the same bytes (clips/s, 1 process)",
}


# -- setup -------------------------------------------------------------------------------------
@dataclass
class LoaderSetup:
    """The corpus and every file the compared loaders read."""

    manifest: Manifest
    mel_store: Path
    teacher_store: Path
    dataset: ClipDataset
    npy_paths: list[Path]  # one embedding file per item of ``dataset``
    raw_path: Path  # the flat file of P3
    raw_index: np.ndarray  # (n, 3) int64 per item: byte offset, mel rows, embedding rows


def _newer_than(path: Path, *stores: Path) -> bool:
    """Whether ``path`` exists and was written after every store was completed."""
    if not path.exists():
        return False
    return all(path.stat().st_mtime >= (s / COMPLETE_MARKER).stat().st_mtime for s in stores)


def write_npy_embeddings(teacher_store: Path, clip_ids: Sequence[str], folder: Path) -> list[Path]:
    """One ``<clip_id>.npy`` per clip with its valid embedding rows (float16), written once."""
    paths = [folder / f"{clip}.npy" for clip in clip_ids]
    done = folder / "DONE"
    if _newer_than(done, teacher_store):
        return paths
    folder.mkdir(parents=True, exist_ok=True)
    store = read_store(teacher_store)
    for clip, path in zip(clip_ids, paths, strict=True):
        np.save(path, store.read(clip))
    done.write_text(f"{len(paths)} clips\n")
    return paths


def write_raw_file(
    mel_store: Path, teacher_store: Path, clip_ids: Sequence[str], path: Path
) -> np.ndarray:
    """Each clip's valid mel rows then its embedding rows (float16) back to back in ``path``.

    Returns the (n, 3) int64 index: byte offset, mel rows, embedding rows per clip. Written once,
    with the index beside it as ``<path>.index.npy``.
    """
    index_path = path.with_name(path.name + ".index.npy")
    if _newer_than(index_path, mel_store, teacher_store) and path.exists():
        return np.load(index_path)
    mel, teacher = read_store(mel_store), read_store(teacher_store)
    index = np.zeros((len(clip_ids), 3), dtype=np.int64)
    offset = 0
    partial = path.with_name(path.name + ".partial")
    with open(partial, "wb") as f:
        for k, clip in enumerate(clip_ids):
            m, e = mel.read(clip), teacher.read(clip)
            f.write(m.astype(np.float16).tobytes() + e.astype(np.float16).tobytes())
            index[k] = offset, len(m), len(e)
            offset += (m.size + e.size) * 2
    os.replace(partial, path)
    np.save(index_path, index)
    return index


def setup(ctx: BenchContext) -> LoaderSetup:
    """Corpus, stores, per-clip ``.npy`` files and the flat file, reused where present."""
    manifest = make_corpus(ctx.root, ctx.size(FULL_CLIPS, minimum=32))
    mel_store, teacher_store = build_stores(ctx, manifest, manifest.name)
    dataset = ClipDataset(manifest, "train", mel_store, [teacher_store])
    folder = mel_store.parent
    npy_paths = write_npy_embeddings(teacher_store, dataset.clip_ids, folder / "npy-passt-shaped")
    raw_path = folder / "raw-mel-teacher.f16"
    raw_index = write_raw_file(mel_store, teacher_store, dataset.clip_ids, raw_path)
    return LoaderSetup(manifest, mel_store, teacher_store, dataset, npy_paths, raw_path, raw_index)


# -- the compared datasets ---------------------------------------------------------------------
def _fit_frames(array: np.ndarray, frames: int, axis: int = 0) -> np.ndarray:
    """The first ``frames`` entries along ``axis``, repeating from the start when fewer."""
    return np.take(array, np.arange(frames) % array.shape[axis], axis=axis)


class AudioFileDataset(Dataset):
    """The reference code's loading: decode audio, compute the mel, ``np.load`` the embedding.

    Items are those of ``like`` (a :class:`ClipDataset`): same clips, shapes and labels.
    """

    def __init__(self, like: ClipDataset, audio_paths: Sequence[str], npy_paths: Sequence[Path]):
        self.mel_frames = like.mel_frames
        self.teacher_frames = like.teacher_shapes[0][0]
        self.labels, self.mask = like.labels, like.mask
        self.audio_paths = [str(p) for p in audio_paths]
        self.npy_paths = [str(p) for p in npy_paths]
        self.config = frontend_config(FRONTEND)
        self.mel = MelSpectrogram(self.config).eval()

    def __len__(self) -> int:
        return len(self.audio_paths)

    def __getitem__(self, i: int) -> dict[str, Any]:
        wave = load_audio(self.audio_paths[i], sr_hz=self.config.sample_rate_hz)
        with torch.no_grad():
            mel = self.mel(torch.from_numpy(wave))  # (n_mels, frames)
        mel = _fit_frames(mel.numpy(), self.mel_frames, axis=1)
        embedding = np.load(self.npy_paths[i]).astype(np.float32)
        return {
            "mel": torch.from_numpy(np.ascontiguousarray(mel)),
            "labels": torch.from_numpy(self.labels[i].copy()),
            "mask": torch.from_numpy(self.mask[i].copy()),
            "teachers": [torch.from_numpy(_fit_frames(embedding, self.teacher_frames))],
            "index": int(i),
        }


class RawFileDataset(Dataset):
    """Whole batches from the flat file: one ``os.pread`` per clip, numpy conversion per batch.

    ``__getitems__`` returns the collated batch itself (use :func:`pass_through` as
    ``collate_fn``). The file is opened lazily in each process.
    """

    def __init__(self, like: ClipDataset, path: Path, index: np.ndarray):
        self.path = str(path)
        self.index = index
        self.n_mels = like.n_mels
        self.mel_frames = like.mel_frames
        self.teacher_frames, self.teacher_dim = like.teacher_shapes[0]
        self.labels, self.mask = like.labels, like.mask
        self._fd: int | None = None
        self._pid: int | None = None

    def __len__(self) -> int:
        return len(self.index)

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_fd": None, "_pid": None}

    def _file(self) -> int:
        if self._fd is None or self._pid != os.getpid():
            self._fd = os.open(self.path, os.O_RDONLY)
            self._pid = os.getpid()
        return self._fd

    def __getitems__(self, indices: Sequence[int]) -> dict[str, Any]:
        fd, n = self._file(), len(indices)
        mels = np.empty((n, self.mel_frames, self.n_mels), dtype=np.float16)
        embs = np.empty((n, self.teacher_frames, self.teacher_dim), dtype=np.float16)
        for j, i in enumerate(indices):
            offset, mel_rows, emb_rows = self.index[i]
            mel_size, emb_size = mel_rows * self.n_mels, emb_rows * self.teacher_dim
            flat = np.frombuffer(os.pread(fd, 2 * (mel_size + emb_size), offset), np.float16)
            mel = flat[:mel_size].reshape(mel_rows, self.n_mels)
            emb = flat[mel_size:].reshape(emb_rows, self.teacher_dim)
            mels[j] = mel if mel_rows == self.mel_frames else _fit_frames(mel, self.mel_frames)
            embs[j] = emb if emb_rows == self.teacher_frames else _fit_frames(emb, len(embs[j]))
        rows = np.asarray(indices)
        return {
            "mel": torch.from_numpy(np.ascontiguousarray(mels.transpose(0, 2, 1), np.float32)),
            "labels": torch.from_numpy(self.labels[rows]),
            "mask": torch.from_numpy(self.mask[rows]),
            "teachers": [torch.from_numpy(embs.astype(np.float32))],
            "index": torch.from_numpy(rows.astype(np.int64)),
        }


def pass_through(batch: dict[str, Any]) -> dict[str, Any]:
    """``collate_fn`` for datasets whose ``__getitems__`` already returns a batch."""
    return batch


# -- timing ------------------------------------------------------------------------------------
def make_loader(
    dataset: Dataset, sampler: Sampler[int], workers: int, *, collated: bool = False
) -> DataLoader:
    """The DataLoader every side uses: batches of 32 in ``sampler``'s order, persistent workers."""
    return DataLoader(
        dataset,
        batch_size=BATCH_SIZE,
        sampler=sampler,
        num_workers=workers,
        persistent_workers=workers > 0,
        collate_fn=pass_through if collated else collate,
    )


def one_pass(loader: DataLoader) -> int:
    """Iterate ``loader`` once; returns the clips delivered."""
    return sum(len(batch["index"]) for batch in loader)


def time_passes(
    dataset: Dataset, sampler: Sampler[int], workers: int, repeats: int, *, collated: bool = False
) -> dict[str, Any]:
    """Clips per pass, median seconds per pass and clips/s, after one untimed pass.

    The loader and its workers live only for this call, so no idle worker of another side
    competes for the CPU while a side is timed.
    """
    loader = make_loader(dataset, sampler, workers, collated=collated)
    clips = one_pass(loader)  # warm-up: page cache, worker start, lazy store opening
    median_s, times = median_seconds(lambda: one_pass(loader), repeats)
    return {
        "clips": clips,
        "median_s": median_s,
        "times_s": [round(t, 4) for t in times],
        "clips_per_s": clips / median_s,
    }


def first_batch(dataset: Dataset, sampler: Sampler[int]) -> dict[str, Any]:
    """The first batch in ``sampler``'s order, built in this process."""
    indices = list(sampler)[:BATCH_SIZE]
    if isinstance(dataset, RawFileDataset):
        return dataset.__getitems__(indices)
    return collate([dataset[i] for i in indices])


def batch_difference(a: dict[str, Any], b: dict[str, Any]) -> dict[str, float]:
    """Largest absolute differences of the mels and the embeddings of two batches."""
    if not torch.equal(a["index"], b["index"]):
        raise AssertionError("the compared loaders deliver different clips")
    return {
        "mel": float((a["mel"] - b["mel"]).abs().max()),
        "embedding": float((a["teachers"][0] - b["teachers"][0]).abs().max()),
    }


def _workers(n: int) -> str:
    return "1 worker" if n == 1 else f"{n} workers"


def _compare(
    ours: dict[str, Any], theirs: dict[str, Any], **extra: Any
) -> tuple[float, dict[str, Any]]:
    if ours["clips"] != theirs["clips"]:
        raise AssertionError(f"ours read {ours['clips']} clips, the baseline {theirs['clips']}")
    ratio = ours["clips_per_s"] / theirs["clips_per_s"]
    details = {
        "clips": ours["clips"],
        "batch_size": BATCH_SIZE,
        **{f"ours_{k}": v for k, v in ours.items() if k != "clips"},
        **{f"baseline_{k}": v for k, v in theirs.items() if k != "clips"},
        **extra,
    }
    return ratio, details


# -- the figures -------------------------------------------------------------------------------
def p2(ctx: BenchContext, s: LoaderSetup) -> Figure:
    """Our loader ÷ decoding audio, computing mels and loading one .npy per clip."""
    sampler = ShardAwareSampler(s.dataset.shard_ids, seed=0)
    paths = s.manifest.clips.set_index("clip_id").loc[s.dataset.clip_ids, "path"].tolist()
    audio = AudioFileDataset(s.dataset, paths, s.npy_paths)
    check = batch_difference(first_batch(s.dataset, sampler), first_batch(audio, sampler))
    ours = time_passes(s.dataset, sampler, ctx.workers, ctx.repeats)
    theirs = time_passes(audio, sampler, ctx.workers, ctx.repeats)
    ratio, details = _compare(
        ours, theirs, workers=ctx.workers, first_batch_max_abs_difference=check
    )
    return Figure(
        id="P2",
        what=WHAT["P2"],
        ratio=ratio,
        target=">= 5",
        numerator=f"{ours['clips_per_s']:.1f} clips/s (stores, {_workers(ctx.workers)})",
        denominator=f"{theirs['clips_per_s']:.1f} clips/s (audio + mel + .npy)",
        details=details,
        device=device_name("cpu"),
    )


def _raw_comparison(
    ours_set: ClipDataset, raw_set: RawFileDataset, workers: int, repeats: int
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Timings of our loader and of the raw reads, after checking they give the same batch."""
    sampler = ShardAwareSampler(ours_set.shard_ids, seed=0)
    check = batch_difference(first_batch(ours_set, sampler), first_batch(raw_set, sampler))
    if check["mel"] or check["embedding"]:
        raise AssertionError(f"the flat file holds other values than the stores: {check}")
    ours = time_passes(ours_set, sampler, workers, repeats)
    raw = time_passes(raw_set, sampler, workers, repeats, collated=True)
    return ours, raw


def p3(
    ctx: BenchContext, s: LoaderSetup, ours_set: ClipDataset, stores: Sequence[Path], figure_id: str
) -> Figure:
    """Our loader over ``stores`` (``ours_set``) ÷ ``os.pread`` of the same bytes, 1 process."""
    raw_set = RawFileDataset(s.dataset, s.raw_path, s.raw_index)
    ours, raw = _raw_comparison(ours_set, raw_set, 0, ctx.repeats)
    ratio, details = _compare(ours, raw, workers=0, stores=[str(p) for p in stores])
    if ctx.workers > 0:
        ours_w, raw_w = _raw_comparison(ours_set, raw_set, ctx.workers, ctx.repeats)
        details[f"with_{ctx.workers}_workers"] = {
            "ratio": ours_w["clips_per_s"] / raw_w["clips_per_s"],
            "ours_clips_per_s": ours_w["clips_per_s"],
            "baseline_clips_per_s": raw_w["clips_per_s"],
            "ours_times_s": ours_w["times_s"],
            "baseline_times_s": raw_w["times_s"],
        }
    kind = "HDF5" if figure_id.endswith("h5") else "Zarr"
    return Figure(
        id=figure_id,
        what=WHAT[figure_id],
        ratio=ratio,
        target=">= 0.5",
        numerator=f"{ours['clips_per_s']:.1f} clips/s ({kind} stores)",
        denominator=f"{raw['clips_per_s']:.1f} clips/s (pread, flat file)",
        details=details,
        device=device_name("cpu"),
    )


def _h5_dataset(s: LoaderSetup) -> tuple[ClipDataset, list[Path]] | None:
    """Our dataset over HDF5 copies of the stores, and the copies; None without ``export_h5``."""
    try:
        from pipeline.stores.h5_store import export_h5
    except ImportError:
        return None
    copies = []
    for store in (s.mel_store, s.teacher_store):
        copy = store.with_suffix(".h5")
        if not _newer_than(copy, store):
            export_h5(store, copy)
        copies.append(copy)
    return ClipDataset(s.manifest, "train", copies[0], copies[1:]), copies


def p3_h5(ctx: BenchContext, s: LoaderSetup) -> Figure:
    """P3 over HDF5 copies of the stores; a "skipped" row where ``export_h5`` is missing."""
    h5 = _h5_dataset(s)
    if h5 is None:
        why = "skipped: pipeline.stores.h5_store.export_h5 is not available"
        return Figure(
            "P3-h5",
            WHAT["P3-h5"],
            None,
            ">= 0.5",
            why,
            details={"skipped": why},
            device=device_name("cpu"),
        )
    return p3(ctx, s, h5[0], h5[1], "P3-h5")


def run(ctx: BenchContext) -> list[Figure]:
    """P2, P3 and P3-h5 (those that ``ctx`` asks for); a figure that fails is an error row."""
    s = setup(ctx)
    zarr_stores = [s.mel_store, s.teacher_store]
    measure = {
        "P2": lambda: p2(ctx, s),
        "P3": lambda: p3(ctx, s, s.dataset, zarr_stores, "P3"),
        "P3-h5": lambda: p3_h5(ctx, s),
    }
    figures = []
    for figure_id, fn in measure.items():
        if not ctx.wants(figure_id):
            continue
        try:
            figures.append(fn())
        except Exception as err:  # report it and go on with the other figures
            figures.append(error_figure(figure_id, WHAT[figure_id], err))
    return figures
