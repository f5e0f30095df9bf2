"""PANNs Cnn14 (Kong et al., 2020): a CNN trained on AudioSet, from the ``panns-inference`` package.

Two layers are offered:

* ``"clip"``: the 2048-d clip-level ``embedding`` of ``Cnn14.forward`` (one frame per clip);
* ``"frames"``: the output of the last conv block averaged over frequency, (T, 2048), one frame
  every 0.32 s — the time series that the clip embedding pools (max + mean) before ``fc1``.

Weights: ``Cnn14_mAP=0.431.pth`` (327 MB), from an explicit path, ``$PANNS_WEIGHTS`` or
``~/panns_data/``; never downloaded here.
"""

from __future__ import annotations

import importlib
import importlib.machinery
import importlib.metadata
import importlib.util
import os
import sys
from collections import defaultdict
from collections.abc import Mapping, Sequence
from functools import cache
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import torch
from torch import nn

from pipeline.fileio import file_sha256
from pipeline.teachers.base import Teacher, keep_float32, register_teacher
from pipeline.teachers.weights import (
    InvalidWeightsError,
    describe,
    read_checkpoint,
    resolve_weights,
    state_problems,
)

WEIGHTS_FILE = "Cnn14_mAP=0.431.pth"
WEIGHTS_ENV = "PANNS_WEIGHTS"
WEIGHTS_DIR = Path("~/panns_data")
DOWNLOAD = (
    "wget -O ~/panns_data/Cnn14_mAP=0.431.pth "
    "'https://zenodo.org/record/3987831/files/Cnn14_mAP%3D0.431.pth?download=1'"
)

CNN14_CONFIG: dict[str, int] = {
    "sample_rate": 32000,
    "window_size": 1024,
    "hop_size": 320,
    "mel_bins": 64,
    "fmin": 50,
    "fmax": 14000,
    "classes_num": 527,
}
SAMPLE_RATE_HZ = CNN14_CONFIG["sample_rate"]
HOP_SAMPLES = CNN14_CONFIG["hop_size"]
DIM = 2048
# Conv blocks 1–5 each halve time with a floor; block 6 does not pool.
TIME_POOLING = 32
# The STFT is centred, so n samples give n // hop + 1 frames; five halvings must leave one.
MIN_SAMPLES = (TIME_POOLING - 1) * HOP_SAMPLES
LAYERS = ("clip", "frames")

_PRIVATE_PACKAGE = "_pipeline_panns_inference"


@cache
def panns_models() -> ModuleType:
    """``panns_inference.models``, loaded without running the package's ``__init__``.

    That ``__init__`` imports ``config.py``, which shells out to ``wget`` for a label CSV (and
    leaves an empty file offline). ``find_spec`` of a top-level package only locates it; its
    submodules are then imported under a private package name whose ``__path__`` is the installed
    folder, so ``models.py``'s relative imports resolve there and a later ``import
    panns_inference`` elsewhere in the process still gets the untouched real package.
    """
    spec = importlib.util.find_spec("panns_inference")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("panns-inference is not installed: pip install panns-inference==0.1.1")
    if _PRIVATE_PACKAGE not in sys.modules:
        package = importlib.machinery.ModuleSpec(_PRIVATE_PACKAGE, None, is_package=True)
        package.submodule_search_locations = list(spec.submodule_search_locations)
        sys.modules[_PRIVATE_PACKAGE] = importlib.util.module_from_spec(package)
    return importlib.import_module(f"{_PRIVATE_PACKAGE}.models")


def build_cnn14() -> nn.Module:
    """A Cnn14 with the AudioSet checkpoint's architecture and random weights, in eval mode."""
    return panns_models().Cnn14(**CNN14_CONFIG).eval()


def load_cnn14(path: Path) -> nn.Module:
    """A Cnn14 (on the CPU, eval mode) with the weights of the checkpoint at ``path``."""
    checkpoint = read_checkpoint(path)
    state = checkpoint.get("model") if isinstance(checkpoint, Mapping) else None
    if not isinstance(state, Mapping):
        raise InvalidWeightsError(
            f"{path}: expected a dict with the Cnn14 state dict under 'model' "
            f"(as in {WEIGHTS_FILE}), got {describe(checkpoint)}"
        )
    model = build_cnn14()
    problems = state_problems(state, model.state_dict())
    if problems:
        raise InvalidWeightsError(f"{path} is not a PANNs Cnn14 checkpoint: {problems}")
    model.load_state_dict(state)
    return model


@register_teacher
class PannsTeacher(Teacher):
    """PANNs Cnn14 at 32 kHz: 2048-d clip embeddings or frame features every 0.32 s.

    Parameters
    ----------
    weights : path to ``Cnn14_mAP=0.431.pth``; default ``$PANNS_WEIGHTS``, then ``~/panns_data/``
    device : torch device to run on, e.g. ``"cpu"``, ``"cuda"``
    layer : ``"clip"`` (one frame per clip) or ``"frames"`` (T = ``num_frames(n)`` frames)
    batch_size : int > 0 -- clips of equal length run together, at most this many at a time
    precision : ``"fp32"`` (default), ``"bf16"``, ``"fp16"`` or ``"auto"`` -- autocast of the
        network; the STFT and log-mel layers stay float32 (see :meth:`Teacher.choose_precision`)
    """

    # Raise when a change alters the embeddings (tests/test_golden.py fails until it is).
    output_version = 1

    sample_rate_hz = SAMPLE_RATE_HZ
    dim = DIM
    min_duration_s = MIN_SAMPLES / SAMPLE_RATE_HZ
    bf16_agrees = True

    def __init__(
        self,
        weights: str | os.PathLike | None = None,
        device: str = "cpu",
        layer: str = "clip",
        batch_size: int = 16,
        precision: str | None = "fp32",
    ):
        if layer not in LAYERS:
            raise ValueError(f"unknown PANNs layer {layer!r}; choose one of {', '.join(LAYERS)}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        self.layer = layer
        self.hop_s = TIME_POOLING * HOP_SAMPLES / SAMPLE_RATE_HZ if layer == "frames" else None
        self.batch_size = batch_size
        self.device = torch.device(device)
        self.choose_precision(precision, self.device)
        self.weights = resolve_weights(
            teacher="PANNs Cnn14",
            filename=WEIGHTS_FILE,
            explicit=weights,
            env_var=WEIGHTS_ENV,
            default_dir=WEIGHTS_DIR,
            download=DOWNLOAD,
        )
        # Hashed now, so the fingerprint names the weights loaded even if the file is replaced.
        self.weights_sha256 = file_sha256(self.weights)
        self.model = load_cnn14(self.weights).to(self.device)
        keep_float32(self.model.spectrogram_extractor, self.device)
        keep_float32(self.model.logmel_extractor, self.device)

    def options(self) -> dict[str, Any]:
        return {
            "layer": self.layer,
            "weights_sha256": self.weights_sha256,
            "panns_inference": importlib.metadata.version("panns-inference"),
        }

    def num_frames(self, n_samples: int) -> int:
        frames = (n_samples // HOP_SAMPLES + 1) // TIME_POOLING
        return frames if self.layer == "frames" else min(frames, 1)

    def embed(self, waveforms: Sequence[np.ndarray]) -> list[np.ndarray]:
        clips = [np.asarray(w, dtype=np.float32) for w in waveforms]
        for i, clip in enumerate(clips):
            if clip.ndim != 1:
                raise ValueError(f"waveform {i}: expected a mono 1-D array, got shape {clip.shape}")
            if len(clip) < MIN_SAMPLES:
                raise ValueError(
                    f"waveform {i}: {len(clip)} samples, PANNs Cnn14 needs at least {MIN_SAMPLES}"
                    f" ({self.min_duration_s} s at {SAMPLE_RATE_HZ} Hz)"
                )
        # Only clips of one length share a batch: padding would enter the pooled embedding.
        by_length: dict[int, list[int]] = defaultdict(list)
        for i, clip in enumerate(clips):
            by_length[len(clip)].append(i)
        results: dict[int, np.ndarray] = {}
        with torch.inference_mode():
            for indices in by_length.values():
                for start in range(0, len(indices), self.batch_size):
                    chunk = indices[start : start + self.batch_size]
                    batch = torch.from_numpy(np.stack([clips[i] for i in chunk])).to(self.device)
                    with self.autocast():
                        frames = self._forward(batch)
                    frames = frames.float().cpu().numpy()
                    results.update(zip(chunk, frames, strict=True))
        return [results[i] for i in range(len(clips))]

    def _forward(self, batch: torch.Tensor) -> torch.Tensor:
        """(B, n_samples) → (B, T, 2048)."""
        if self.layer == "clip":
            return self.model(batch)["embedding"][:, None, :]
        return frame_features(self.model, batch)


def frame_features(model: nn.Module, batch: torch.Tensor) -> torch.Tensor:
    """Cnn14's last conv block averaged over frequency: (B, n_samples) → (B, T, 2048).

    The steps of ``Cnn14.forward`` up to its ``torch.mean(x, dim=3)``, with what it does only in
    training (SpecAugment, mixup, dropout) left out; ``model`` must be in eval mode.
    """
    x = model.logmel_extractor(model.spectrogram_extractor(batch))  # (B, 1, frames, mel)
    x = model.bn0(x.transpose(1, 3)).transpose(1, 3)
    for block in (
        model.conv_block1,
        model.conv_block2,
        model.conv_block3,
        model.conv_block4,
        model.conv_block5,
    ):
        x = block(x, pool_size=(2, 2), pool_type="avg")
    x = model.conv_block6(x, pool_size=(1, 1), pool_type="avg")
    return x.mean(dim=3).transpose(1, 2)
