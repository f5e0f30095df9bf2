"""The files that P2 and P3 (:mod:`pipeline.bench.loading`) read, and the baselines' datasets.

:func:`setup` makes (or reuses) the corpus, our two stores (:mod:`pipeline.bench.stores`) and
the baselines' files:

* P2's baseline loads data the way the EAsT reference code does: :class:`AudioFileDataset`
  decodes each clip's audio, computes its log-mel and ``np.load``-s its embedding from one
  ``.npy`` file per clip (:func:`write_npy_embeddings`).
* P3's baseline reads the same bytes as our loader with the least work:
  :class:`RawFileDataset` reads each clip's valid mel and embedding rows from one flat file
  (:func:`write_raw_file`) with one ``os.pread`` and converts a whole batch with numpy.

Both datasets deliver the items or batches of the :class:`pipeline.train.loader.ClipDataset`
they are made ``like``: same clips, shapes and labels.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from pipeline.bench import BenchContext
from pipeline.bench.corpus import make_corpus
from pipeline.bench.stores import build_stores, newer_than
from pipeline.data.audio import load_audio
from pipeline.data.manifest import Manifest
from pipeline.extract.frontends import MelSpectrogram, frontend_config
from pipeline.fileio import atomic_path, write_text
from pipeline.stores import read_store
from pipeline.train.loader import ClipDataset, fit_frames

FULL_CLIPS = 2000


# -- files -------------------------------------------------------------------------------------
def write_npy_embeddings(teacher_store: Path, clip_ids: Sequence[str], folder: Path) -> list[Path]:
    """One ``<clip_id>.npy`` per clip with its valid embedding rows (float16), written once.

    Parameters
    ----------
    teacher_store : Path -- complete teacher store holding every clip of ``clip_ids``
    clip_ids : sequence of str -- the clips, in the order of the returned paths
    folder : Path -- where the files go, with a ``DONE`` marker once all are written; files
        newer than the store's completion are reused

    Returns
    -------
    list of Path -- ``folder / f"{clip_id}.npy"`` per clip, each a (frames, D) float16 array.
    """
    paths = [folder / f"{clip}.npy" for clip in clip_ids]
    done = folder / "DONE"
    if newer_than(done, teacher_store):
        return paths
    folder.mkdir(parents=True, exist_ok=True)
    store = read_store(teacher_store)
    for clip, path in zip(clip_ids, paths, strict=True):
        np.save(path, store.read(clip))
    write_text(done, f"{len(paths)} clips\n")
    return paths


def write_raw_file(
    mel_store: Path, teacher_store: Path, clip_ids: Sequence[str], path: Path
) -> np.ndarray:
    """Each clip's valid mel rows then its embedding rows (float16) back to back in ``path``.

    Written once, with the index beside it as ``<path>.index.npy``; both are reused while they
    are newer than the stores' completion.

    Parameters
    ----------
    mel_store, teacher_store : Path -- complete stores holding every clip of ``clip_ids``
    clip_ids : sequence of str -- the clips, in file order
    path : Path -- the flat file

    Returns
    -------
    np.ndarray, (n, 3) int64 -- per clip: byte offset, mel rows, embedding rows.
    """
    index_path = path.with_name(path.name + ".index.npy")
    if newer_than(index_path, mel_store, teacher_store) and path.exists():
        return np.load(index_path)
    mel, teacher = read_store(mel_store), read_store(teacher_store)
    index = np.zeros((len(clip_ids), 3), dtype=np.int64)
    offset = 0
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        for k, clip in enumerate(clip_ids):
            m, e = mel.read(clip), teacher.read(clip)
            f.write(m.astype(np.float16).tobytes() + e.astype(np.float16).tobytes())
            index[k] = offset, len(m), len(e)
            offset += (m.size + e.size) * 2
    with atomic_path(index_path) as tmp, open(tmp, "wb") as f:
        np.save(f, index)
    return index


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


def setup(ctx: BenchContext) -> LoaderSetup:
    """Corpus, stores, per-clip ``.npy`` files and the flat file, reused where present.

    Parameters
    ----------
    ctx : BenchContext -- ``root`` holds the files; ``scale`` sizes the corpus
        (``ctx.size(2000, minimum=32)`` clips of 10 s)

    Returns
    -------
    LoaderSetup -- every file the compared loaders read, and our dataset over the stores.
    """
    manifest = make_corpus(ctx.root, ctx.size(FULL_CLIPS, minimum=32))
    mel_store, teacher_store = build_stores(ctx, manifest, manifest.name)
    dataset = ClipDataset(manifest, "train", mel_store, [teacher_store])
    folder = mel_store.parent
    npy_paths = write_npy_embeddings(teacher_store, dataset.clip_ids, folder / "npy-passt-shaped")
    raw_path = folder / "raw-mel-teacher.f16"
    raw_index = write_raw_file(mel_store, teacher_store, dataset.clip_ids, raw_path)
    return LoaderSetup(manifest, mel_store, teacher_store, dataset, npy_paths, raw_path, raw_index)


# -- datasets ----------------------------------------------------------------------------------
class AudioFileDataset(Dataset):
    """The reference code's loading: decode audio, compute the mel, ``np.load`` the embedding.

    Parameters
    ----------
    like : ClipDataset -- items have its clips, shapes and labels
    audio_paths : sequence of str or Path -- each item's audio file
    npy_paths : sequence of Path -- each item's embedding file (:func:`write_npy_embeddings`)
    frontend : str -- the mel front end that made ``like``'s mel store
    """

    def __init__(
        self,
        like: ClipDataset,
        audio_paths: Sequence[str | os.PathLike],
        npy_paths: Sequence[Path],
        frontend: str = "mobile_fcn",
    ) -> None:
        self.mel_frames = like.mel_frames
        self.teacher_frames = like.teacher_shapes[0][0]
        self.labels, self.mask = like.labels, like.mask
        self.audio_paths = [str(p) for p in audio_paths]
        self.npy_paths = [str(p) for p in npy_paths]
        self.config = frontend_config(frontend)
        self.mel = MelSpectrogram(self.config).eval()

    def __len__(self) -> int:
        return len(self.audio_paths)

    def __getitem__(self, i: int) -> dict[str, Any]:
        wave = load_audio(self.audio_paths[i], sr_hz=self.config.sample_rate_hz)
        with torch.no_grad():
            mel = self.mel(torch.from_numpy(wave))  # (n_mels, frames)
        mel = fit_frames(mel.numpy().T, self.mel_frames).T
        embedding = np.load(self.npy_paths[i]).astype(np.float32)
        return {
            "mel": torch.from_numpy(np.ascontiguousarray(mel)),
            "labels": torch.from_numpy(self.labels[i].copy()),
            "mask": torch.from_numpy(self.mask[i].copy()),
            "teachers": [torch.from_numpy(fit_frames(embedding, self.teacher_frames))],
            "index": int(i),
        }


class RawFileDataset(Dataset):
    """Whole batches from the flat file: one ``os.pread`` per clip, numpy conversion per batch.

    ``__getitems__`` returns the collated batch itself (use :func:`pass_through` as
    ``collate_fn``). The file is opened lazily in each process.

    Parameters
    ----------
    like : ClipDataset -- batches have its shapes and labels
    path : Path -- the flat file of :func:`write_raw_file`
    index : (n, 3) int64 array -- its index: byte offset, mel rows, embedding rows per item
    """

    def __init__(self, like: ClipDataset, path: Path, index: np.ndarray) -> None:
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
            mels[j] = mel if mel_rows == self.mel_frames else fit_frames(mel, self.mel_frames)
            embs[j] = emb if emb_rows == self.teacher_frames else fit_frames(emb, len(embs[j]))
        rows = np.asarray(indices)
        return {
            "mel": torch.from_numpy(np.ascontiguousarray(mels.transpose(0, 2, 1), np.float32)),
            "labels": torch.from_numpy(self.labels[rows]),
            "mask": torch.from_numpy(self.mask[rows]),
            "teachers": [torch.from_numpy(embs.astype(np.float32))],
            "index": torch.from_numpy(rows.astype(np.int64)),
        }


def pass_through(batch: dict[str, Any]) -> dict[str, Any]:
    """``collate_fn`` for datasets whose ``__getitems__`` already returns a batch.

    Parameters
    ----------
    batch : dict -- the batch as the dataset built it

    Returns
    -------
    dict -- ``batch`` itself.
    """
    return batch
