"""OpenL3 (Cramer et al., 2019): look-listen-learn audio embeddings, from ``torchopenl3``.

The network sees 1 s windows of 48 kHz audio as a log spectrogram (``mel128``, ``mel256`` or
``linear``), runs seven conv layers plus the embedding conv layer and max-pools them into one
512- or 6144-d vector per window. Windows are cut the way ``torchopenl3.get_audio_embedding``
cuts them: with ``center`` the audio is first preceded by 0.5 s of zeros, so that frame ``k`` is
centred on ``k * hop_s``; the end is zero-padded to fill the last window. Defaults are those of
the paper's teacher: ``mel128``, ``music``, 512-d, hop 0.96 s, centred (10 s → 11 frames).

Weights: ``torchopenl3_{input_repr}_{content_type}_{embedding_size}.pth.tar`` (a plain state
dict; e.g. ``torchopenl3_mel128_music_512.pth.tar``, about 36 MB) from an explicit path,
``$OPENL3_WEIGHTS`` or torch.hub's cache ``<torch.hub.get_dir()>/checkpoints/`` (by default
``~/.cache/torch/hub/checkpoints/``, or ``$TORCH_HOME/hub/checkpoints/``), where
``torchopenl3`` itself keeps them. The package's own loader would download a missing file; here
the network is built from its model code and the state dict loaded with ``weights_only``.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import os
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any
from urllib.parse import urlparse

import numpy as np
import torch
from torch import nn

from pipeline.fileio import file_sha256
from pipeline.teachers.base import Teacher, keep_float32, option_bool, register_teacher
from pipeline.teachers.weights import (
    InvalidWeightsError,
    read_checkpoint,
    resolve_weights,
    state_problems,
)

SAMPLE_RATE_HZ = 48000
WINDOW_SAMPLES = SAMPLE_RATE_HZ  # torchopenl3 embeds 1 s windows
INPUT_REPRS = ("mel128", "mel256", "linear")
CONTENT_TYPES = ("music", "env")
EMBEDDING_SIZES = (512, 6144)
WEIGHTS_ENV = "OPENL3_WEIGHTS"
# The paper's loader subtracts this from the stored (mel128, music, 512-d) embeddings.
LOAD_SHIFT = 2.24

# Entries that need not be in a checkpoint: BatchNorm's step counter (unused in eval mode) and
# the spectrogram layer's DFT kernels and mel filterbank, which the model code computes itself.
_OPTIONAL_PREFIXES = ("speclayer.",)
_OPTIONAL_SUFFIXES = ("num_batches_tracked",)


def _package() -> tuple[ModuleType, ModuleType]:
    """``torchopenl3.core`` and ``torchopenl3.models``, with an install hint if missing."""
    try:
        return (
            importlib.import_module("torchopenl3.core"),
            importlib.import_module("torchopenl3.models"),
        )
    except ImportError as err:
        raise ImportError(
            "torchopenl3 is not installed: pip install --no-deps torchopenl3==1.0.1 "
            f"&& pip install nnaudio julius resampy six ({err})"
        ) from err


def weights_url(input_repr: str, content_type: str, embedding_size: int) -> str:
    """Where ``torchopenl3`` downloads the weights of one model variant from."""
    core, _ = _package()
    return core.get_model_path(input_repr, content_type, embedding_size)


def weights_filename(input_repr: str, content_type: str, embedding_size: int) -> str:
    """The name torch.hub caches them under, e.g. ``torchopenl3_mel128_music_512.pth.tar``."""
    return os.path.basename(urlparse(weights_url(input_repr, content_type, embedding_size)).path)


def hub_checkpoints_dir() -> Path:
    """torch.hub's checkpoint cache (follows ``$TORCH_HOME`` and ``$XDG_CACHE_HOME``)."""
    return Path(torch.hub.get_dir()) / "checkpoints"


def build_openl3(input_repr: str, content_type: str, embedding_size: int) -> nn.Module:
    """An OpenL3 network of ``torchopenl3``'s code with random weights, in eval mode."""
    _, models = _package()
    return models.PytorchOpenl3(
        content_type=content_type, input_repr=input_repr, embedding_size=embedding_size
    ).eval()


def _optional(key: str) -> bool:
    return key.startswith(_OPTIONAL_PREFIXES) or key.endswith(_OPTIONAL_SUFFIXES)


def load_openl3(path: Path, input_repr: str, content_type: str, embedding_size: int) -> nn.Module:
    """An OpenL3 network (CPU, eval mode) with the state dict stored at ``path``."""
    state = read_checkpoint(path)
    variant = f"{input_repr}/{content_type}/{embedding_size}"
    if not isinstance(state, Mapping):
        raise InvalidWeightsError(
            f"{path}: expected the OpenL3 {variant} state dict (a dict of tensors, as in "
            f"{weights_filename(input_repr, content_type, embedding_size)}), "
            f"got {type(state).__name__}"
        )
    model = build_openl3(input_repr, content_type, embedding_size)
    problems = state_problems(state, model.state_dict(), _optional)
    if problems:
        raise InvalidWeightsError(f"{path} is not an OpenL3 {variant} checkpoint: {problems}")
    model.load_state_dict(state, strict=False)
    return model


def hop_samples(hop_s: float) -> int:
    """Samples between windows at 48 kHz, truncated as ``torchopenl3`` does (0.96 s → 46080)."""
    return int(hop_s * SAMPLE_RATE_HZ)


def count_windows(n_samples: int, hop: int, center: bool) -> int:
    """Windows ``torchopenl3`` cuts from ``n_samples`` samples at 48 kHz (always at least one).

    Exact integer arithmetic: ``torchopenl3`` rounds the window count through float32 and so
    drops a last window covering only a few samples of clips longer than about 400 s.
    """
    length = n_samples + (WINDOW_SAMPLES // 2 if center else 0)
    if length <= WINDOW_SAMPLES:
        return 1
    return 1 + -(-(length - WINDOW_SAMPLES) // hop)


def frame_windows(waveform: np.ndarray, hop: int, center: bool) -> np.ndarray:
    """The (n_windows, 48000) windows of one 48 kHz waveform, zero-padded as ``torchopenl3`` does.

    With ``center``, 0.5 s of zeros go before the audio; the end is zero-padded up to the last
    window. The result is a read-only view of one padded copy of the waveform.
    """
    n_windows = count_windows(len(waveform), hop, center)
    padded = np.zeros(WINDOW_SAMPLES + (n_windows - 1) * hop, dtype=np.float32)
    start = WINDOW_SAMPLES // 2 if center else 0
    padded[start : start + len(waveform)] = waveform
    return np.lib.stride_tricks.sliding_window_view(padded, WINDOW_SAMPLES)[::hop]


def _to_int(name: str, value: int | str) -> int:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be an integer, got {value!r}") from None
    if not number.is_integer():
        raise ValueError(f"{name} must be an integer, got {value!r}")
    return int(number)


def _to_float(name: str, value: float | str) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number, got {value!r}") from None


def _choice(name: str, value: Any, choices: Sequence[Any]) -> Any:
    if value not in choices:
        raise ValueError(
            f"unknown OpenL3 {name} {value!r}; choose one of {', '.join(map(str, choices))}"
        )
    return value


@register_teacher
class OpenL3Teacher(Teacher):
    """OpenL3 at 48 kHz: one embedding per 1 s window, every ``hop_s`` seconds.

    Parameters
    ----------
    weights : path to ``torchopenl3_{input_repr}_{content_type}_{embedding_size}.pth.tar``;
        default ``$OPENL3_WEIGHTS``, then ``<torch.hub.get_dir()>/checkpoints/``
    device : torch device to run on, e.g. ``"cpu"``, ``"cuda"``
    batch_size : int > 0 -- windows (of all clips together) per network call
    input_repr : ``"mel128"`` (default), ``"mel256"`` or ``"linear"`` spectrogram input
    content_type : ``"music"`` (default) or ``"env"`` -- the training data of the weights
    embedding_size : 512 (default) or 6144 -- embedding width ``dim``
    hop_s : float > 0 -- seconds between windows (default 0.96); truncated to whole samples
    center : bool -- frame ``k`` centred on ``k * hop_s`` (default, as ``torchopenl3``), else it
        starts there
    precision : ``"fp32"`` (default), ``"bf16"``, ``"fp16"`` or ``"auto"`` -- autocast of the
        network; its spectrogram layer stays float32 (see :meth:`Teacher.choose_precision`)

    Numeric and boolean options also accept their text form (``"512"``, ``"0.5"``, ``"false"``).
    """

    # Raise when a change alters the embeddings (tests/test_golden.py fails until it is).
    output_version = 1

    sample_rate_hz = SAMPLE_RATE_HZ
    min_duration_s = 0.0
    # Shorter clips do not fill one window; the framing zero-pads them, as torchopenl3 does.
    pad_below_s = WINDOW_SAMPLES / SAMPLE_RATE_HZ
    bf16_agrees = True

    def __init__(
        self,
        weights: str | os.PathLike | None = None,
        device: str = "cpu",
        batch_size: int | str = 16,
        input_repr: str = "mel128",
        content_type: str = "music",
        embedding_size: int | str = 512,
        hop_s: float | str = 0.96,
        center: bool | str = True,
        precision: str | None = "fp32",
    ):
        self.input_repr = _choice("input_repr", input_repr, INPUT_REPRS)
        self.content_type = _choice("content_type", content_type, CONTENT_TYPES)
        self.embedding_size = _choice(
            "embedding_size", _to_int("embedding_size", embedding_size), EMBEDDING_SIZES
        )
        self.batch_size = _to_int("batch_size", batch_size)
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        self.hop_samples = hop_samples(_to_float("hop_s", hop_s))
        if self.hop_samples < 1:
            raise ValueError(f"hop_s must be at least one sample (1/{SAMPLE_RATE_HZ} s): {hop_s}")
        self.hop_s = self.hop_samples / SAMPLE_RATE_HZ
        self.center = option_bool("center", center)
        self.dim = self.embedding_size
        self.device = torch.device(device)
        self.choose_precision(precision, self.device)

        variant = (self.input_repr, self.content_type, self.embedding_size)
        url = weights_url(*variant)
        filename = weights_filename(*variant)
        checkpoints = hub_checkpoints_dir()
        self.weights = resolve_weights(
            teacher="OpenL3",
            filename=filename,
            explicit=weights,
            env_var=WEIGHTS_ENV,
            default_dir=checkpoints,
            download=f"wget -O {checkpoints / filename} '{url}'",
        )
        # Hashed now, so the fingerprint names the weights loaded even if the file is replaced.
        self.weights_sha256 = file_sha256(self.weights)
        self.model = load_openl3(self.weights, *variant).to(self.device)
        keep_float32(self.model.speclayer, self.device)

    def options(self) -> dict[str, Any]:
        return {
            "input_repr": self.input_repr,
            "content_type": self.content_type,
            "embedding_size": self.embedding_size,
            "center": self.center,
            "weights_sha256": self.weights_sha256,
            "torchopenl3": importlib.metadata.version("torchopenl3"),
            "load_shift": LOAD_SHIFT,
        }

    def num_frames(self, n_samples: int) -> int:
        return count_windows(n_samples, self.hop_samples, self.center)

    def frame_times(self, n_samples: int) -> np.ndarray:
        """Centre of each frame's 1 s window, in seconds from the clip's first sample."""
        offset = 0.0 if self.center else WINDOW_SAMPLES / SAMPLE_RATE_HZ / 2
        return offset + self.hop_s * np.arange(self.num_frames(n_samples))

    def embed(self, waveforms: Sequence[np.ndarray]) -> list[np.ndarray]:
        clips = [np.asarray(w, dtype=np.float32) for w in waveforms]
        for i, clip in enumerate(clips):
            if clip.ndim != 1:
                raise ValueError(f"waveform {i}: expected a mono 1-D array, got shape {clip.shape}")
        windows = [frame_windows(clip, self.hop_samples, self.center) for clip in clips]
        if not windows:
            return []
        with torch.inference_mode():
            outputs = [self._forward(chunk) for chunk in _chunks(windows, self.batch_size)]
        flat = np.concatenate(outputs)
        bounds = np.cumsum([len(w) for w in windows])[:-1]
        return np.split(flat, bounds)

    def _forward(self, windows: np.ndarray) -> np.ndarray:
        """(B, 48000) windows → (B, dim) float32 embeddings."""
        batch = torch.from_numpy(windows).to(self.device)[:, None, :]
        with self.autocast():
            embeddings = self.model(batch)
        return embeddings.float().cpu().numpy()


def _chunks(windows: Sequence[np.ndarray], size: int) -> Iterator[np.ndarray]:
    """The windows of all clips in order, stacked ``size`` at a time (a chunk spans clips)."""
    rows = [(clip, k) for clip, w in enumerate(windows) for k in range(len(w))]
    for start in range(0, len(rows), size):
        yield np.stack([windows[clip][k] for clip, k in rows[start : start + size]])
