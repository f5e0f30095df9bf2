"""musicnn (Pons & Serra, 2019): a PyTorch port of the MagnaTagATune / MSD music taggers.

The pretrained weights are the TensorFlow 1 checkpoints that the ``musicnn==0.1.0`` wheel carries
(``pip install --no-deps musicnn==0.1.0``); they are read with :mod:`.tf_checkpoint`, so neither
TensorFlow nor musicnn's own Python code is ever imported.

Front end (as musicnn's ``extractor.batch_data``): 16 kHz mono → librosa-style power mel
spectrogram (n_fft 512, hop 256, 96 bands, Slaney mel scale, centred frames with zero padding as
librosa ≥ 0.10 does) → float16 → log10(10000·x + 1) → non-overlapping patches of 187 frames
(2.992 s). A trailing partial patch is dropped, so clips shorter than one patch (2.976 s) give no
frames. Each patch yields one embedding frame.
"""

from __future__ import annotations

import importlib.util
import os
import sysconfig
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import librosa
import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from pipeline.fileio import file_sha256
from pipeline.teachers.base import Teacher, register_teacher
from pipeline.teachers.tf_checkpoint import batch_norm_state, read_checkpoint
from pipeline.teachers.weights import MissingWeightsError, resolve_weights

SAMPLE_RATE_HZ = 16_000
N_FFT = 512
HOP = 256
N_MELS = 96
PATCH_FRAMES = 187
BN_EPS = 1e-3  # TensorFlow's batch-norm default, not PyTorch's 1e-5

ENV_VAR = "MUSICNN_WEIGHTS"
DATA_SUFFIX = ".data-00000-of-00001"
INDEX_SUFFIX = ".index"
DOWNLOAD_HINT = (
    "pip install --no-deps musicnn==0.1.0  (the wheel holds the checkpoints in "
    "site-packages/musicnn/<model>/; never import musicnn itself, it needs TensorFlow)"
)

MTT_TAGS = (
    "guitar", "classical", "slow", "techno", "strings", "drums", "electronic", "rock", "fast",
    "piano", "ambient", "beat", "violin", "vocal", "synth", "female", "indian", "opera", "male",
    "singing", "vocals", "no vocals", "harpsichord", "loud", "quiet", "flute", "woman",
    "male vocal", "no vocal", "pop", "soft", "sitar", "solo", "man", "classic", "choir", "voice",
    "new age", "dance", "male voice", "female vocal", "beats", "harp", "cello", "no voice",
    "weird", "country", "metal", "female voice", "choral",
)  # fmt: skip
MSD_TAGS = (
    "rock", "pop", "alternative", "indie", "electronic", "female vocalists", "dance", "00s",
    "alternative rock", "jazz", "beautiful", "metal", "chillout", "male vocalists",
    "classic rock", "soul", "indie rock", "Mellow", "electronica", "80s", "folk", "90s", "chill",
    "instrumental", "punk", "oldies", "blues", "hard rock", "ambient", "acoustic",
    "experimental", "female vocalist", "guitar", "Hip-Hop", "70s", "party", "country",
    "easy listening", "sexy", "catchy", "funk", "electro", "heavy metal", "Progressive rock",
    "60s", "rnb", "indie pop", "sad", "House", "happy",
)  # fmt: skip
MODEL_TAGS = {"MTT_musicnn": MTT_TAGS, "MSD_musicnn": MSD_TAGS}

# Widths of the front end (musicnn's num_filt=1.6 and kernel heights relative to 96 bands).
_TIMBRAL = ((204, 38), (204, 67))  # (filters, frequency taps), 7 time taps each
_TEMPORAL = ((51, 128), (51, 64), (51, 32))  # (filters, time taps), 1 frequency tap each
_FRONT_DIM = sum(f for f, _ in _TIMBRAL) + sum(f for f, _ in _TEMPORAL)  # 561
_MID_FILTERS = 64
POOL_DIM = _FRONT_DIM + 3 * _MID_FILTERS  # 753
PENULTIMATE_DIM = 200

LAYER_DIMS = {
    "max_pool": POOL_DIM,
    "mean_pool": POOL_DIM,
    "penultimate": PENULTIMATE_DIM,
    "taggram": len(MTT_TAGS),
}


# --- network ----------------------------------------------------------------------------------


def _conv_relu_bn(conv: nn.Conv1d | nn.Conv2d) -> nn.Sequential:
    """musicnn normalises after the activation: conv → ReLU → batch norm."""
    bn_cls = nn.BatchNorm2d if isinstance(conv, nn.Conv2d) else nn.BatchNorm1d
    return nn.Sequential(conv, nn.ReLU(inplace=True), bn_cls(conv.out_channels, eps=BN_EPS))


def tf_same_padding(taps: int) -> tuple[int, int]:
    """TensorFlow's "same" padding: for even kernels the extra frame goes after, not before."""
    return (taps - 1) // 2, taps // 2


class MusicnnNet(nn.Module):
    """The musicnn network for one (batch, 187, 96) log-mel patch batch; eval mode only."""

    def __init__(self, n_tags: int = len(MTT_TAGS)) -> None:
        super().__init__()
        self.input_bn = nn.BatchNorm2d(1, eps=BN_EPS)
        self.timbral = nn.ModuleList(
            _conv_relu_bn(nn.Conv2d(1, filters, (7, taps))) for filters, taps in _TIMBRAL
        )
        self.temporal = nn.ModuleList(
            _conv_relu_bn(nn.Conv2d(1, filters, (taps, 1))) for filters, taps in _TEMPORAL
        )
        widths = (_FRONT_DIM, _MID_FILTERS, _MID_FILTERS)
        self.midend = nn.ModuleList(
            _conv_relu_bn(nn.Conv1d(w, _MID_FILTERS, 7, padding=3)) for w in widths
        )
        self.pool_bn = nn.BatchNorm1d(2 * POOL_DIM, eps=BN_EPS)
        self.dense = nn.Linear(2 * POOL_DIM, PENULTIMATE_DIM)
        self.dense_bn = nn.BatchNorm1d(PENULTIMATE_DIM, eps=BN_EPS)
        self.classifier = nn.Linear(PENULTIMATE_DIM, n_tags)

    def forward(self, patches: torch.Tensor) -> dict[str, torch.Tensor]:
        """(B, 187, 96) log-mel → taggram, penultimate, max_pool and mean_pool, each (B, D)."""
        x = self.input_bn(patches.unsqueeze(1))  # (B, 1, T, F)
        timbral = [block(F.pad(x, (0, 0, 3, 3))) for block in self.timbral]
        temporal = [
            block(F.pad(x, (0, 0, *tf_same_padding(taps))))
            for block, (_, taps) in zip(self.temporal, _TEMPORAL, strict=True)
        ]
        # Every front-end map is max-pooled over all its frequency bins → (B, C, T).
        front = torch.cat([m.amax(dim=3) for m in timbral + temporal], dim=1)
        mid1 = self.midend[0](front)
        mid2 = self.midend[1](mid1) + mid1
        mid3 = self.midend[2](mid2) + mid2
        features = torch.cat([front, mid1, mid2, mid3], dim=1)  # (B, 753, T)
        max_pool = features.amax(dim=2)
        mean_pool = features.mean(dim=2)
        # TensorFlow flattened a (753, 2) [max, mean] stack: the two alternate per channel.
        pooled = torch.stack([max_pool, mean_pool], dim=2).flatten(1)
        penultimate = self.dense_bn(F.relu(self.dense(self.pool_bn(pooled))))
        taggram = torch.sigmoid(self.classifier(penultimate))
        return {
            "taggram": taggram,
            "penultimate": penultimate,
            "max_pool": max_pool,
            "mean_pool": mean_pool,
        }


# TensorFlow layer names, in the order musicnn's graph created them.
_TF_BLOCKS = {
    "timbral.0": ("conv2d", "batch_normalization_1"),
    "timbral.1": ("conv2d_1", "batch_normalization_2"),
    "temporal.0": ("conv2d_2", "batch_normalization_3"),
    "temporal.1": ("conv2d_3", "batch_normalization_4"),
    "temporal.2": ("conv2d_4", "batch_normalization_5"),
    "midend.0": ("conv2d_5", "batch_normalization_6"),
    "midend.1": ("conv2d_6", "batch_normalization_7"),
    "midend.2": ("conv2d_7", "batch_normalization_8"),
}
_TF_BATCH_NORMS = {
    "input_bn": "batch_normalization",
    "pool_bn": "batch_normalization_9",
    "dense_bn": "batch_normalization_10",
}
_TF_DENSE = {"dense": "dense", "classifier": "dense_1"}


def _tf_conv_kernel(kernel: np.ndarray, conv_dims: int) -> np.ndarray:
    """TF (time, width, in, out) → torch (out, in, time, width), or (out, width, time) for 1-D.

    musicnn's mid-end convolutions span the whole feature axis as the kernel *width* of a
    one-channel 2-D convolution; as a Conv1d that width becomes the input channels.
    """
    if conv_dims == 1:
        return kernel[:, :, 0, :].transpose(2, 1, 0)
    return kernel.transpose(3, 2, 0, 1)


def state_dict_from_tf(tf: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
    """Map musicnn's checkpoint variables onto :class:`MusicnnNet` parameter names."""
    state: dict[str, np.ndarray] = {}
    for prefix, (conv, bn) in _TF_BLOCKS.items():
        conv_dims = 1 if prefix.startswith("midend") else 2
        state[f"{prefix}.0.weight"] = _tf_conv_kernel(tf[f"{conv}/kernel"], conv_dims)
        state[f"{prefix}.0.bias"] = tf[f"{conv}/bias"]
        state.update(batch_norm_state(tf, f"{prefix}.2", bn))
    for prefix, bn in _TF_BATCH_NORMS.items():
        state.update(batch_norm_state(tf, prefix, bn))
    for prefix, dense in _TF_DENSE.items():
        state[f"{prefix}.weight"] = tf[f"{dense}/kernel"].T
        state[f"{prefix}.bias"] = tf[f"{dense}/bias"]
    return {k: torch.from_numpy(np.ascontiguousarray(v, np.float32)) for k, v in state.items()}


def load_network(prefix: str | Path, n_tags: int) -> MusicnnNet:
    """Build the network with the checkpoint's weights, in eval mode."""
    net = MusicnnNet(n_tags)
    state = state_dict_from_tf(read_checkpoint(prefix))
    # num_batches_tracked has no TensorFlow counterpart and is unused in eval mode.
    missing, unexpected = net.load_state_dict(state, strict=False)
    if unexpected or any(not k.endswith("num_batches_tracked") for k in missing):
        raise ValueError(f"checkpoint does not fit musicnn: missing {missing}, extra {unexpected}")
    return net.eval()


# --- front end --------------------------------------------------------------------------------


def mel_filterbank() -> np.ndarray:
    """(96, 257) Slaney-scale, Slaney-normalised filters: librosa's defaults, which musicnn used."""
    return librosa.filters.mel(sr=SAMPLE_RATE_HZ, n_fft=N_FFT, n_mels=N_MELS)


def mel_power(waveform: torch.Tensor, filterbank: torch.Tensor) -> torch.Tensor:
    """(N,) samples → (1 + N // 256, 96) power mel spectrogram, as librosa computes it.

    librosa ≥ 0.10 centres frames with zero padding (torch's default would reflect).
    """
    spec = torch.stft(
        waveform,
        n_fft=N_FFT,
        hop_length=HOP,
        window=torch.hann_window(N_FFT, device=waveform.device, dtype=waveform.dtype),
        center=True,
        pad_mode="constant",
        return_complex=True,
    )
    power = spec.real.square() + spec.imag.square()
    return (filterbank @ power).T


def log_compress(mel: torch.Tensor) -> torch.Tensor:
    """log10(10000·x + 1) evaluated in float16, as musicnn's numpy code did, returned as float32.

    In float16, 10000·x overflows for x > 6.55 (loud tonal audio gets there); musicnn then fed
    inf to the network. Those bins are computed in float32 instead.
    """
    half = mel.to(torch.float16)
    scaled = half * 10000
    compressed = torch.log10(scaled + 1).float()
    fallback = torch.log10(half.float() * 10000 + 1)
    return torch.where(torch.isfinite(scaled), compressed, fallback)


def num_patches(n_samples: int) -> int:
    """Whole 187-frame patches in a clip of ``n_samples`` (centred frames: 1 + N // 256)."""
    return (n_samples // HOP + 1) // PATCH_FRAMES if n_samples > 0 else 0


def to_patches(log_mel: torch.Tensor) -> torch.Tensor:
    """(T, 96) → (T // 187, 187, 96): consecutive, non-overlapping, trailing remainder dropped."""
    n = log_mel.shape[0] // PATCH_FRAMES
    return log_mel[: n * PATCH_FRAMES].reshape(n, PATCH_FRAMES, N_MELS)


# --- weights ----------------------------------------------------------------------------------


def default_weights_dir(model: str) -> Path:
    """The wheel's checkpoint folder, found without importing musicnn (it imports TensorFlow)."""
    spec = importlib.util.find_spec("musicnn")
    if spec is not None and spec.submodule_search_locations:
        return Path(next(iter(spec.submodule_search_locations))) / model
    return Path(sysconfig.get_paths()["purelib"]) / "musicnn" / model


def _data_file(path: Path) -> Path:
    """Accept a checkpoint folder, a prefix, or the ``.index``/``.data-…`` file itself."""
    if path.is_dir():
        return path / DATA_SUFFIX
    if path.name.endswith(DATA_SUFFIX):
        return path
    if path.name.endswith(INDEX_SUFFIX):
        return path.with_name(path.name.removesuffix(INDEX_SUFFIX) + DATA_SUFFIX)
    return path.with_name(path.name + DATA_SUFFIX)


def resolve_checkpoint(weights: str | os.PathLike | None, model: str) -> tuple[Path, Path]:
    """Find the checkpoint: ``weights``, else ``$MUSICNN_WEIGHTS``, else the musicnn wheel's folder.

    ``weights`` / ``$MUSICNN_WEIGHTS`` may name the checkpoint folder, its prefix or one of its
    files. Returns the (index, data) file pair; raises :class:`MissingWeightsError` when either
    is missing.
    """
    # resolve_weights looks for files only, so a folder or prefix (also in the env var) is
    # turned into its data file here.
    given = weights or os.environ.get(ENV_VAR)
    data = resolve_weights(
        teacher="musicnn",
        filename=DATA_SUFFIX,
        explicit=_data_file(Path(given).expanduser()) if given else None,
        env_var=ENV_VAR,
        default_dir=default_weights_dir(model),
        download=DOWNLOAD_HINT,
    )
    # musicnn's own prefix is a folder plus an empty name, hence string surgery, not Path.
    index = Path(str(data).removesuffix(DATA_SUFFIX) + INDEX_SUFFIX)
    if not index.is_file():
        raise MissingWeightsError(
            f"musicnn checkpoint index {str(index)!r} not found next to {str(data)!r}. "
            f"To download it on a machine with internet: {DOWNLOAD_HINT}"
        )
    return index, data


# --- teacher ----------------------------------------------------------------------------------


@register_teacher
class MusicnnTeacher(Teacher):
    """musicnn embeddings, one frame per 2.992 s patch.

    ``layer`` picks the output: ``max_pool`` (default, 753: the widest tag-agnostic summary of
    the whole front and mid end), ``mean_pool`` (753), ``penultimate`` (200, shaped by the
    tagging objective) or ``taggram`` (the 50 tag probabilities). ``batch_size`` patches go
    through the network at once; on CPU each needs about 30 MB of activations. ``precision``
    (``"fp32"`` by default, ``"bf16"``, ``"fp16"`` or ``"auto"``) is the autocast of the network;
    the mel front end stays as musicnn computed it (see :meth:`Teacher.choose_precision`).
    """

    # Raise when a change alters the embeddings (tests/test_golden.py fails until it is).
    output_version = 1

    sample_rate_hz = SAMPLE_RATE_HZ
    hop_s = PATCH_FRAMES * HOP / SAMPLE_RATE_HZ
    # Shortest clip with one whole patch: 1 + N // 256 ≥ 187 frames.
    min_duration_s = (PATCH_FRAMES - 1) * HOP / SAMPLE_RATE_HZ
    bf16_agrees = True

    def __init__(
        self,
        weights: str | os.PathLike | None = None,
        device: str = "cpu",
        layer: str = "max_pool",
        model: str = "MTT_musicnn",
        batch_size: int = 16,
        precision: str | None = "fp32",
    ) -> None:
        if model not in MODEL_TAGS:
            raise ValueError(f"unknown musicnn model {model!r}; choose one of {list(MODEL_TAGS)}")
        if layer not in LAYER_DIMS:
            raise ValueError(f"unknown musicnn layer {layer!r}; choose one of {list(LAYER_DIMS)}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        self.model = model
        self.layer = layer
        self.dim = LAYER_DIMS[layer]
        self.tag_names = list(MODEL_TAGS[model])
        self.device = torch.device(device)
        self.choose_precision(precision, self.device)
        self.batch_size = batch_size
        self.index_file, self.data_file = resolve_checkpoint(weights, model)
        prefix = str(self.data_file).removesuffix(DATA_SUFFIX)
        self.net = load_network(prefix, len(self.tag_names)).to(self.device)
        self._filterbank = torch.from_numpy(mel_filterbank()).to(self.device)

    def options(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "layer": self.layer,
            "weights_sha256": file_sha256(self.data_file),
        }

    def num_frames(self, n_samples: int) -> int:
        return num_patches(n_samples)

    def embed(self, waveforms: Sequence[np.ndarray]) -> list[np.ndarray]:
        """One (n_patches, dim) float32 array per waveform; clips under one patch give (0, dim)."""
        return self.layer_outputs(waveforms, self.layer)

    def tags(self, waveform: np.ndarray) -> tuple[np.ndarray, list[str]]:
        """Taggram (n_patches, n_tags) of tag probabilities for one clip, and the tag names."""
        [taggram] = self.layer_outputs([waveform], "taggram")
        return taggram, list(self.tag_names)

    @torch.inference_mode()
    def layer_outputs(self, waveforms: Sequence[np.ndarray], layer: str) -> list[np.ndarray]:
        """All patches of all clips go through the network together, in bounded chunks."""
        if layer not in LAYER_DIMS:
            raise ValueError(f"unknown musicnn layer {layer!r}; choose one of {list(LAYER_DIMS)}")
        patches = [self._patches(w) for w in waveforms]
        counts = [len(p) for p in patches]
        if sum(counts) == 0:
            return [np.zeros((0, LAYER_DIMS[layer]), np.float32) for _ in waveforms]
        batch = torch.cat(patches)
        with self.autocast():
            outputs = torch.cat(
                [self.net(chunk)[layer].float().cpu() for chunk in batch.split(self.batch_size)]
            )
        return [part.numpy().copy() for part in outputs.split(counts)]

    def _patches(self, waveform: np.ndarray) -> torch.Tensor:
        samples = np.asarray(waveform, dtype=np.float32)
        if samples.ndim != 1:
            raise ValueError(f"musicnn wants mono waveforms, got shape {samples.shape}")
        if num_patches(len(samples)) == 0:
            return torch.zeros((0, PATCH_FRAMES, N_MELS), device=self.device)
        wave = torch.from_numpy(np.ascontiguousarray(samples)).to(self.device)
        return to_patches(log_compress(mel_power(wave, self._filterbank)))
