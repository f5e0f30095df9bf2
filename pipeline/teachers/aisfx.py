"""aiSFX (Ma & Lerch, ISMIR 2022): sound-effects embeddings, a PyTorch port of the published model.

The pretrained weights are the checkpoint that the ``aisfx==0.1.2`` wheel carries
(``pip install --no-deps aisfx==0.1.2``, file ``site-packages/aisfx/models/checkpoint.pth``). It
is read with ``torch.load(weights_only=True)``; aisfx's own Python code is never imported here.

Front end (the paper's Essentia chain, not the package's librosa convenience path): 44.1 kHz
mono → frames of 2048 samples every 1024, the first centred on sample 0 (1024 zeros before the
audio, zeros after its end) → symmetric Hann window → power spectrum (1025 bins) → 96 HTK-mel
bands between 0 and 22050 Hz, triangles linear on the mel scale, each band's weights summing to
one → log10(10000·x + 1) → divided by 9.457798957824707 (the min-max range the paper took over
all its training spectrograms; the minimum is 0). A clip of N > 0 samples gives ⌈N / 1024⌉ + 1
spectrogram frames.

The network sees the spectrogram time first, (100 frames, 96 bands): that is what Essentia's
``Pool`` returns and what the model's convolutions were trained on (the librosa path returns it
transposed). Blocks of 100 frames (2.32 s) start every 50 frames (1.161 s); a trailing partial
block is dropped, but a clip shorter than one block is zero-padded to one. Each block gives one
512-d embedding: four VGG-style blocks of two 3×3 convolutions, then the mean over frequency and
the maximum over time.
"""

from __future__ import annotations

import importlib.util
import os
import sysconfig
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from pipeline.fileio import file_sha256
from pipeline.teachers.base import Teacher, register_teacher
from pipeline.teachers.weights import InvalidWeightsError, describe, resolve_weights, state_problems

SAMPLE_RATE_HZ = 44_100
N_FFT = 2048
HOP = 1024
N_MELS = 96
F_MIN_HZ = 0.0
F_MAX_HZ = 22_050.0
LOG_MAX = 9.457798957824707  # the paper's normalisation maximum (its minimum is 0)
BLOCK_FRAMES = 100
BLOCK_HOP_FRAMES = 50  # half a block, the paper's embedding hop
DIM = 512
WIDTHS = (64, 128, 256, 512)

ENV_VAR = "AISFX_WEIGHTS"
WEIGHTS_FILE = "checkpoint.pth"
DOWNLOAD_HINT = (
    "pip install --no-deps aisfx==0.1.2  (the wheel holds site-packages/aisfx/models/"
    "checkpoint.pth)"
)
EMBEDDING_PREFIX = "embedding_net."


# --- network ----------------------------------------------------------------------------------


class _ConvPair(nn.Module):
    """Two 3×3 convolutions (no bias), each followed by batch norm and ReLU, then max pooling."""

    def __init__(self, channels_in: int, channels_out: int, pool: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels_in, channels_out, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels_out)
        self.conv2 = nn.Conv2d(channels_out, channels_out, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels_out)
        self.pool = pool

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        x = F.relu(self.bn2(self.conv2(x)))
        return F.max_pool2d(x, self.pool) if self.pool > 1 else x


class AisfxNet(nn.Module):
    """The embedding network: (B, 100, 96) normalised log-mel blocks → (B, 512); eval mode only.

    Parameter names follow the checkpoint's ``embedding_net`` entries (``conv_block1.conv1...``).
    """

    def __init__(self) -> None:
        super().__init__()
        ins = (1, *WIDTHS[:-1])
        pools = (2, 2, 2, 1)
        for k, (c_in, c_out, pool) in enumerate(zip(ins, WIDTHS, pools, strict=True), start=1):
            self.add_module(f"conv_block{k}", _ConvPair(c_in, c_out, pool))

    def forward(self, blocks: torch.Tensor) -> torch.Tensor:
        """(B, T, F) → (B, 512): mean over the frequency axis, then maximum over time."""
        x = blocks.unsqueeze(1)  # (B, 1, T, F)
        for block in self.children():
            x = block(x)
        return x.mean(dim=3).amax(dim=2)


def _numpy_scalar_globals() -> list[Any]:
    """The only non-tensor objects the checkpoint pickles: numpy scalars and their dtypes.

    Its dataset table holds numpy integers, written by numpy 1 as
    ``numpy.core.multiarray.scalar`` (numpy 2 keeps the function in ``numpy._core``).
    """
    scalar = np.float64(0).__reduce__()[0]
    dtype_classes = [type(np.dtype(t)) for t in (np.float64, np.int64)]
    return [(scalar, "numpy.core.multiarray.scalar"), np.dtype, *dtype_classes]


def read_aisfx_checkpoint(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """(state dict, dataset table) of the package's checkpoint, on the CPU.

    Raises :class:`InvalidWeightsError` naming the file when it is not such a pair.
    """
    try:
        with torch.serialization.safe_globals(_numpy_scalar_globals()):
            checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # zip, pickle and weights-only errors share no narrower base
        raise InvalidWeightsError(
            f"{path}: not a readable PyTorch checkpoint ({type(err).__name__}: {err})"
        ) from err
    if not (isinstance(checkpoint, tuple) and len(checkpoint) == 2):
        raise InvalidWeightsError(
            f"{path}: expected aisfx's (state dict, datasets) pair, got {describe(checkpoint)}"
        )
    state, datasets = checkpoint
    if not isinstance(state, dict) or not isinstance(datasets, dict):
        raise InvalidWeightsError(f"{path}: expected two dicts, got {describe(state)}")
    return state, datasets


def load_network(path: Path) -> AisfxNet:
    """The embedding network with the checkpoint's weights, in eval mode.

    The checkpoint's per-dataset classifier heads (``fc.*``) are not part of the embedding and
    are ignored.
    """
    state, _ = read_aisfx_checkpoint(path)
    embedding = {
        k.removeprefix(EMBEDDING_PREFIX): v
        for k, v in state.items()
        if str(k).startswith(EMBEDDING_PREFIX)
    }
    net = AisfxNet()
    if problems := state_problems(embedding, net.state_dict()):
        raise InvalidWeightsError(f"{path}: checkpoint does not fit aisfx: {problems}")
    net.load_state_dict(embedding)
    return net.eval()


# --- front end --------------------------------------------------------------------------------


def hz_to_htk_mel(hz: np.ndarray | float) -> np.ndarray:
    """HTK mel scale: 2595 · log10(1 + f / 700), f in Hz."""
    return 2595.0 * np.log10(1.0 + np.asarray(hz, np.float64) / 700.0)


def htk_mel_to_hz(mel: np.ndarray | float) -> np.ndarray:
    """Inverse of :func:`hz_to_htk_mel`, in Hz."""
    return 700.0 * (10.0 ** (np.asarray(mel, np.float64) / 2595.0) - 1.0)


def mel_filterbank() -> np.ndarray:
    """(96, 1025) float64 filters of Essentia's ``MelBands`` with the paper's settings.

    Band b has corners at mel-spaced frequencies (b, b + 1, b + 2 of 98 points from 0 to
    22050 Hz); its weight at bin frequency f rises and falls linearly *in mel* between them
    (``weighting="warping"``), and each band's weights are scaled to sum to one
    (``normalize="unit_sum"``).
    """
    edges_mel = np.linspace(hz_to_htk_mel(F_MIN_HZ), hz_to_htk_mel(F_MAX_HZ), N_MELS + 2)
    lo, centre, hi = edges_mel[:-2, None], edges_mel[1:-1, None], edges_mel[2:, None]
    bins_hz = np.arange(N_FFT // 2 + 1) * (SAMPLE_RATE_HZ / N_FFT)
    bins_mel = hz_to_htk_mel(bins_hz)[None, :]
    rising = (bins_mel - lo) / (centre - lo)
    falling = (hi - bins_mel) / (hi - centre)
    # Corner comparisons in Hz, as Essentia makes them: [lo, centre) rises, [centre, hi) falls.
    lo_hz, centre_hz, hi_hz = (htk_mel_to_hz(e) for e in (lo, centre, hi))
    weights = np.where(
        (bins_hz >= lo_hz) & (bins_hz < centre_hz),
        rising,
        np.where((bins_hz >= centre_hz) & (bins_hz < hi_hz), falling, 0.0),
    )
    sums = weights.sum(axis=1, keepdims=True)
    return weights / np.where(sums > 0, sums, 1.0)


def num_spectrogram_frames(n_samples: int) -> int:
    """Frames Essentia's ``FrameCutter`` (first frame centred on sample 0) cuts from a clip."""
    return -(-n_samples // HOP) + 1 if n_samples > 0 else 0


def num_blocks(n_samples: int) -> int:
    """Embedding frames: whole 100-frame blocks every 50 frames; at least one (zero-padded)."""
    frames = num_spectrogram_frames(n_samples)
    return max(1, (frames - BLOCK_FRAMES) // BLOCK_HOP_FRAMES + 1)


def log_mel(waveform: torch.Tensor, filterbank: torch.Tensor, n_frames: int) -> torch.Tensor:
    """(N,) samples → (n_frames, 96) normalised log-mel spectrogram, time first.

    Frame k covers samples [1024·(k − 1), 1024·(k + 1)); samples outside the clip are zeros, so
    frames past its end are silent (value 0), as the paper's zero-padded blocks are.
    """
    right = (n_frames + 1) * HOP - (waveform.shape[0] + HOP)
    padded = F.pad(waveform, (HOP, max(right, 0)))[: (n_frames + 1) * HOP]
    spec = torch.stft(
        padded,
        n_fft=N_FFT,
        hop_length=HOP,
        window=torch.hann_window(N_FFT, periodic=False, device=padded.device, dtype=padded.dtype),
        center=False,
        return_complex=True,
    )  # (1025, n_frames)
    power = spec.real.square() + spec.imag.square()
    mel = filterbank @ power
    return (torch.log10(10_000.0 * mel + 1.0) / LOG_MAX).T


def to_blocks(spectrogram: torch.Tensor) -> torch.Tensor:
    """(T, 96), T ≥ 100 → (blocks, 100, 96): 100 frames every 50, trailing partial block dropped."""
    return spectrogram.unfold(0, BLOCK_FRAMES, BLOCK_HOP_FRAMES).transpose(1, 2)


# --- weights ----------------------------------------------------------------------------------


def default_weights_dir() -> Path:
    """The wheel's ``aisfx/models`` folder, found without importing aisfx."""
    spec = importlib.util.find_spec("aisfx")
    if spec is not None and spec.submodule_search_locations:
        return Path(next(iter(spec.submodule_search_locations))) / "models"
    return Path(sysconfig.get_paths()["purelib"]) / "aisfx" / "models"


def resolve_checkpoint(weights: str | os.PathLike | None) -> Path:
    """``weights``, else ``$AISFX_WEIGHTS``, else the aisfx wheel's ``checkpoint.pth``."""
    return resolve_weights(
        teacher="aisfx",
        filename=WEIGHTS_FILE,
        explicit=weights,
        env_var=ENV_VAR,
        default_dir=default_weights_dir(),
        download=DOWNLOAD_HINT,
    )


# --- teacher ----------------------------------------------------------------------------------


@register_teacher
class AisfxTeacher(Teacher):
    """aiSFX embeddings (512-d), one frame per 2.32 s block, every 1.161 s.

    Parameters
    ----------
    weights : path, optional
        The checkpoint; default ``$AISFX_WEIGHTS``, else the one in the aisfx wheel.
    device : str
        Torch device for the front end and the network.
    batch_size : int
        Blocks per network call; on CPU each needs about 20 MB of activations.
    precision : {"fp32", "bf16", "fp16", "auto"}
        Autocast of the network (default "fp32"); the log-mel front end stays float32 (see
        :meth:`Teacher.choose_precision`).
    """

    # Raise when a change alters the embeddings (tests/test_golden.py fails until it is).
    output_version = 1

    sample_rate_hz = SAMPLE_RATE_HZ
    hop_s = BLOCK_HOP_FRAMES * HOP / SAMPLE_RATE_HZ
    dim = DIM
    min_duration_s = 0.0
    # Shortest clip with 100 spectrogram frames (⌈N / 1024⌉ + 1 ≥ 100); shorter ones are padded.
    pad_below_s = ((BLOCK_FRAMES - 2) * HOP + 1) / SAMPLE_RATE_HZ
    bf16_agrees = True

    def __init__(
        self,
        weights: str | os.PathLike | None = None,
        device: str = "cpu",
        batch_size: int | str = 32,
        precision: str | None = "fp32",
    ) -> None:
        self.batch_size = int(batch_size)
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        self.device = torch.device(device)
        self.choose_precision(precision, self.device)
        self.weights = resolve_checkpoint(weights)
        self.net = load_network(self.weights).to(self.device)
        self._filterbank = torch.from_numpy(mel_filterbank().astype(np.float32)).to(self.device)

    def options(self) -> dict[str, Any]:
        return {"weights_sha256": file_sha256(self.weights)}

    def num_frames(self, n_samples: int) -> int:
        return num_blocks(n_samples)

    def frame_times(self, n_samples: int) -> np.ndarray:
        """Centre of each block, in seconds from the clip's first sample (frame k is centred on
        sample 1024·k; a block's centre lies halfway between its 50th and 51st frame)."""
        first = (BLOCK_FRAMES - 1) / 2 * HOP / SAMPLE_RATE_HZ
        return first + self.hop_s * np.arange(self.num_frames(n_samples))

    def blocks(self, waveform: np.ndarray) -> torch.Tensor:
        """(num_frames, 100, 96) normalised log-mel blocks of one mono clip, on the device."""
        samples = np.asarray(waveform, dtype=np.float32)
        if samples.ndim != 1:
            raise ValueError(f"aisfx wants mono waveforms, got shape {samples.shape}")
        frames = max(num_spectrogram_frames(len(samples)), BLOCK_FRAMES)
        wave = torch.from_numpy(np.ascontiguousarray(samples)).to(self.device)
        return to_blocks(log_mel(wave, self._filterbank, frames))

    @torch.inference_mode()
    def embed(self, waveforms: Sequence[np.ndarray]) -> list[np.ndarray]:
        """One (num_frames, 512) float32 array per waveform; all blocks go through together."""
        if not waveforms:
            return []
        blocks = [self.blocks(w) for w in waveforms]
        batch = torch.cat(blocks)
        with self.autocast():
            outputs = torch.cat(
                [self.net(chunk).float().cpu() for chunk in batch.split(self.batch_size)]
            )
        return [part.numpy().copy() for part in outputs.split([len(b) for b in blocks])]
