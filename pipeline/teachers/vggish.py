"""VGGish (Hershey et al., 2017): a VGG-like CNN trained on AudioSet, from ``torchvggish==0.2``.

Front end (the package's ``vggish_input.waveform_to_examples``): 16 kHz mono → magnitude STFT
with a 400-sample (25 ms) periodic Hann window, hop 160 (10 ms), FFT 512, no centring → 64 HTK
mel bands 125–7500 Hz → log(x + 0.01) → non-overlapping patches of 96 frames (0.96 s). A patch
spans 400 + 95·160 = 15 600 samples (0.975 s), so one frame every 0.96 s; a trailing partial
patch is dropped. Shorter clips are zero-padded to one patch.

Network: four conv blocks (64, 128, 256+256, 512+512 channels, each block max-pooled) and three
fully connected layers 12 288 → 4096 → 4096 → 128, each followed by ReLU.

Output (``postprocess=True``, as the paper used it): the 128-d embedding after the AudioSet
release's PCA (with whitening), clipped to [-2, 2] and quantised to 8 bits — integer values
0..255 stored as float32; the training loader maps them to (x − 128) / 256. With
``postprocess=False`` the raw 128-d ReLU output of the network.

Weights, as the package fetches them into torch.hub's cache (never downloaded here):

* network: ``vggish-10086976.pth`` (a state dict of 72 M float32 parameters, 275 MiB) — from
  ``weights=``, else ``$VGGISH_WEIGHTS``, else ``<torch.hub.get_dir()>/checkpoints/``;
* PCA: ``vggish_pca_params-970ea276.pth`` (a dict of numpy arrays ``pca_eigen_vectors`` (128,
  128) and ``pca_means`` (128,)) — from the option ``pca=``, else ``$VGGISH_PCA``, else the
  folder holding the network file. Only needed when postprocessing.
"""

from __future__ import annotations

import importlib.metadata
import os
from collections.abc import Mapping, Sequence
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torchvggish import mel_features, vggish_params
from torchvggish import torchvggish as vggish_model

from pipeline.fileio import file_sha256
from pipeline.teachers.base import Teacher, option_bool, register_teacher
from pipeline.teachers.weights import (
    InvalidWeightsError,
    MissingWeightsError,
    read_checkpoint,
    resolve_weights,
    state_problems,
)

SAMPLE_RATE_HZ = vggish_params.SAMPLE_RATE  # 16 000
WINDOW = round(SAMPLE_RATE_HZ * vggish_params.STFT_WINDOW_LENGTH_SECONDS)  # 400 samples
HOP = round(SAMPLE_RATE_HZ * vggish_params.STFT_HOP_LENGTH_SECONDS)  # 160 samples
N_FFT = 2 ** int(np.ceil(np.log2(WINDOW)))  # 512
N_MELS = vggish_params.NUM_MEL_BINS  # 64
PATCH_FRAMES = vggish_params.NUM_FRAMES  # 96 STFT frames, 0.96 s
PATCH_SAMPLES = WINDOW + (PATCH_FRAMES - 1) * HOP  # 15 600: the shortest audio with one patch
DIM = vggish_params.EMBEDDING_SIZE  # 128

QUANTIZE_MIN = vggish_params.QUANTIZE_MIN_VAL
QUANTIZE_MAX = vggish_params.QUANTIZE_MAX_VAL
# The paper's loader centres and scales the 8-bit codes: (x - 128) / 256.
LOAD_SHIFT = 128.0
LOAD_SCALE = 256.0

WEIGHTS_FILE = "vggish-10086976.pth"
PCA_FILE = "vggish_pca_params-970ea276.pth"
WEIGHTS_URL = "https://github.com/harritaylor/torchvggish/releases/download/v0.1/" + WEIGHTS_FILE
PCA_URL = "https://github.com/harritaylor/torchvggish/releases/download/v0.1/" + PCA_FILE
WEIGHTS_ENV = "VGGISH_WEIGHTS"
PCA_ENV = "VGGISH_PCA"
PCA_EIGEN_VECTORS = vggish_params.PCA_EIGEN_VECTORS_NAME  # "pca_eigen_vectors"
PCA_MEANS = vggish_params.PCA_MEANS_NAME  # "pca_means"

# --- front end --------------------------------------------------------------------------------


def num_patches(n_samples: int) -> int:
    """Whole 0.96 s patches in ``n_samples`` samples at 16 kHz, as ``waveform_to_examples`` cuts.

    STFT frames are not centred: ``1 + (n - 400) // 160`` of them, then ``// 96`` patches.
    """
    if n_samples < PATCH_SAMPLES:
        return 0
    return (1 + (n_samples - WINDOW) // HOP) // PATCH_FRAMES


@cache
def mel_matrix() -> np.ndarray:
    """(257, 64) float64 HTK mel weights, the package's own (first row zero: no DC)."""
    return mel_features.spectrogram_to_mel_matrix(
        num_mel_bins=N_MELS,
        num_spectrogram_bins=N_FFT // 2 + 1,
        audio_sample_rate=SAMPLE_RATE_HZ,
        lower_edge_hertz=vggish_params.MEL_MIN_HZ,
        upper_edge_hertz=vggish_params.MEL_MAX_HZ,
    )


@cache
def stft_window() -> np.ndarray:
    """(400,) float64 periodic Hann window."""
    return mel_features.periodic_hann(WINDOW)


def stft_frames(clip: np.ndarray) -> np.ndarray:
    """(1 + (n - 400) // 160, 400) read-only view of the analysis frames of a float64 clip."""
    return np.lib.stride_tricks.sliding_window_view(clip, WINDOW)[::HOP]


def log_mel_patches(frames: Sequence[np.ndarray]) -> np.ndarray:
    """Log-mel patches from their STFT frames: k × (96, 400) float64 → (k, 96, 64) float32.

    The numbers of ``waveform_to_examples``: float64 throughout, the package's window and mel
    matrix, log(mel + 0.01); only the final cast to float32 (as ``.float()`` there) rounds.
    """
    windowed = np.stack(frames) * stft_window()
    spectrum = np.abs(np.fft.rfft(windowed, N_FFT))
    mel = spectrum.reshape(-1, N_FFT // 2 + 1) @ mel_matrix()
    log_mel = np.log(mel + vggish_params.LOG_OFFSET)
    return log_mel.reshape(len(frames), PATCH_FRAMES, N_MELS).astype(np.float32)


# --- post-processing --------------------------------------------------------------------------


def postprocess(
    raw: torch.Tensor, pca_matrix: torch.Tensor, pca_means: torch.Tensor
) -> torch.Tensor:
    """AudioSet's PCA + whitening, clipping to [-2, 2] and 8-bit quantisation.

    Parameters
    ----------
    raw : (B, 128) raw network embeddings
    pca_matrix : (128, 128) float32 eigen vectors, one output dimension per row
    pca_means : (128, 1) float32 means subtracted before the projection

    Returns
    -------
    torch.Tensor, (B, 128) float32 holding integers 0..255
    """
    # Same operation order as the package's Postprocessor, so results agree to the bit on CPU.
    pca_applied = torch.mm(pca_matrix, raw.t() - pca_means).t()
    clipped = torch.clamp(pca_applied, QUANTIZE_MIN, QUANTIZE_MAX)
    return torch.round((clipped - QUANTIZE_MIN) * (255.0 / (QUANTIZE_MAX - QUANTIZE_MIN)))


# --- weights ----------------------------------------------------------------------------------


def hub_checkpoints() -> Path:
    """torch.hub's checkpoint folder, where ``torchvggish`` caches both files."""
    return Path(torch.hub.get_dir()) / "checkpoints"


def download_command(url: str) -> str:
    return f"wget -P {hub_checkpoints()} {url}"


def build_vggish() -> nn.Module:
    """The package's VGGish network (no post-processing) with random weights, in eval mode."""
    return vggish_model._vgg(postprocess=False).eval()


def load_vggish(path: Path) -> nn.Module:
    """VGGish (CPU, eval mode) with the state dict saved at ``path``."""
    state = read_checkpoint(path)
    if not isinstance(state, Mapping):
        raise InvalidWeightsError(
            f"{path}: expected the VGGish state dict (as in {WEIGHTS_FILE}), "
            f"got {type(state).__name__}"
        )
    # Built on the meta device: randomly initialising 72 M parameters only to overwrite them
    # would cost about as much as reading the file.
    with torch.device("meta"):
        model = build_vggish()
    problems = state_problems(state, model.state_dict())
    if problems:
        raise InvalidWeightsError(f"{path} is not a VGGish state dict: {problems}")
    model.load_state_dict({k: v.float() for k, v in state.items()}, assign=True)
    return model


def load_pca(path: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """The (128, 128) eigen vector matrix and (128, 1) means, float32, from the PCA file.

    The file holds ``{"pca_eigen_vectors": (128, 128), "pca_means": (128,)}``, numpy arrays in
    the published file (tensors are accepted too); converted as the package's Postprocessor does.
    """
    params = read_checkpoint(path)
    if not isinstance(params, Mapping) or not {PCA_EIGEN_VECTORS, PCA_MEANS} <= set(params):
        keys = sorted(map(str, params))[:5] if isinstance(params, Mapping) else None
        got = f"a dict with keys {keys}" if keys is not None else type(params).__name__
        raise InvalidWeightsError(
            f"{path}: expected VGGish PCA parameters, a dict with {PCA_EIGEN_VECTORS!r} and "
            f"{PCA_MEANS!r} (as in {PCA_FILE}), got {got}"
        )
    try:
        matrix = torch.as_tensor(params[PCA_EIGEN_VECTORS]).float()
        means = torch.as_tensor(params[PCA_MEANS]).float()
    except (TypeError, ValueError, RuntimeError) as err:
        raise InvalidWeightsError(f"{path}: PCA parameters are not numeric arrays ({err})") from err
    if matrix.shape != (DIM, DIM) or means.numel() != DIM:
        raise InvalidWeightsError(
            f"{path}: PCA parameters of shapes {tuple(matrix.shape)} and {tuple(means.shape)}, "
            f"expected ({DIM}, {DIM}) and ({DIM},)"
        )
    means = means.reshape(-1, 1)
    if not (torch.isfinite(matrix).all() and torch.isfinite(means).all()):
        raise InvalidWeightsError(f"{path}: PCA parameters hold NaN or infinite values")
    return matrix, means


def resolve_pca(explicit: str | os.PathLike | None, network: Path) -> Path:
    """Find the PCA file: ``explicit``, else ``$VGGISH_PCA``, else beside the network file.

    Raises :class:`MissingWeightsError` saying where it looked and how to get the file.
    """
    hint = (
        f"Put {PCA_FILE} beside the network weights ({network.parent / PCA_FILE}), or give its "
        f"path with ${PCA_ENV} or the teacher option pca=<path> (-o pca=<path>); "
        "postprocess=False needs no PCA file. To download it on a machine with internet: "
        f"{download_command(PCA_URL)}"
    )
    if explicit:
        path = Path(explicit).expanduser()
        if path.is_file():
            return path
        raise MissingWeightsError(
            f"VGGish PCA parameters not found at the given path {path}. {hint}"
        )
    candidates: list[tuple[str, Path]] = []
    if os.environ.get(PCA_ENV):
        candidates.append((f"${PCA_ENV}", Path(os.environ[PCA_ENV]).expanduser()))
    candidates.append(("beside the network weights", network.parent / PCA_FILE))
    for _, path in candidates:
        if path.is_file():
            return path
    looked = "; ".join(f"{how}: {path}" for how, path in candidates)
    raise MissingWeightsError(
        f"VGGish PCA parameters {PCA_FILE!r} not found (looked at {looked}). {hint}"
    )


# --- teacher ----------------------------------------------------------------------------------


@register_teacher
class VggishTeacher(Teacher):
    """VGGish at 16 kHz: one 128-d frame per 0.96 s, PCA-whitened 8-bit codes by default.

    Parameters
    ----------
    weights : path to ``vggish-10086976.pth``; default ``$VGGISH_WEIGHTS``, then
        ``<torch.hub.get_dir()>/checkpoints/``
    device : torch device to run on, e.g. ``"cpu"``, ``"cuda"``
    batch_size : int > 0 -- 0.96 s patches (of any clips) per forward pass; each needs about
        2 MB of activations at the widest layer (raise it on a GPU)
    postprocess : bool -- PCA + 8-bit quantisation (values 0..255, as float32; the loader applies
        (x − 128) / 256), or the raw 128-d network output when false
    pca : path to ``vggish_pca_params-970ea276.pth``; default ``$VGGISH_PCA``, then the folder of
        the network file. Ignored when ``postprocess`` is false.
    precision : ``"fp32"`` (default), ``"bf16"``, ``"fp16"`` or ``"auto"`` -- autocast of the
        network; the log-mel front end and the PCA and quantisation stay float32 (see
        :meth:`Teacher.choose_precision`)
    """

    # Raise when a change alters the embeddings (tests/test_golden.py fails until it is).
    output_version = 1

    sample_rate_hz = SAMPLE_RATE_HZ
    hop_s = PATCH_FRAMES * HOP / SAMPLE_RATE_HZ  # 0.96 s
    dim = DIM
    min_duration_s = 0.0
    pad_below_s = PATCH_SAMPLES / SAMPLE_RATE_HZ  # 0.975 s: one whole patch
    bf16_agrees = True

    def __init__(
        self,
        weights: str | os.PathLike | None = None,
        device: str = "cpu",
        batch_size: int | str = 16,
        postprocess: bool | str = True,
        pca: str | os.PathLike | None = None,
        precision: str | None = "fp32",
    ) -> None:
        batch_size = int(batch_size)
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        self.batch_size = batch_size
        self.postprocess = option_bool("postprocess", postprocess)
        self.device = torch.device(device)
        self.choose_precision(precision, self.device)
        self.weights = resolve_weights(
            teacher="VGGish",
            filename=WEIGHTS_FILE,
            explicit=weights,
            env_var=WEIGHTS_ENV,
            default_dir=hub_checkpoints(),
            download=download_command(WEIGHTS_URL),
        )
        self.pca = resolve_pca(pca, self.weights) if self.postprocess else None
        # Hashed now, so the fingerprint names the files loaded even if they are replaced.
        self.weights_sha256 = file_sha256(self.weights)
        self.pca_sha256 = file_sha256(self.pca) if self.pca else None
        if self.pca:  # first: it is small, so a wrong file is reported at once
            matrix, means = load_pca(self.pca)
            self._pca_matrix, self._pca_means = matrix.to(self.device), means.to(self.device)
        self.model = load_vggish(self.weights).to(self.device)

    def options(self) -> dict[str, Any]:
        found = {
            "postprocess": self.postprocess,
            "weights_sha256": self.weights_sha256,
            "torchvggish": importlib.metadata.version("torchvggish"),
        }
        if self.postprocess:
            found |= {
                "pca_sha256": self.pca_sha256,
                "load_shift": LOAD_SHIFT,
                "load_scale": LOAD_SCALE,
            }
        return found

    def num_frames(self, n_samples: int) -> int:
        """Frames for ``n_samples`` ≥ 1 samples: whole patches, at least one (padding)."""
        return max(num_patches(n_samples), 1)

    def embed(self, waveforms: Sequence[np.ndarray]) -> list[np.ndarray]:
        """One (num_frames(n), 128) float32 array per waveform; frame k starts at k·0.96 s.

        The patches of all clips go through the network together, ``batch_size`` at a time.
        """
        frames = [stft_frames(self._prepare(i, w)) for i, w in enumerate(waveforms)]
        if not frames:
            return []
        counts = [len(f) // PATCH_FRAMES for f in frames]
        patches = [
            clip_frames[p * PATCH_FRAMES : (p + 1) * PATCH_FRAMES]
            for clip_frames, count in zip(frames, counts, strict=True)
            for p in range(count)
        ]
        outputs = []
        with torch.inference_mode():
            for start in range(0, len(patches), self.batch_size):
                chunk = log_mel_patches(patches[start : start + self.batch_size])
                batch = torch.from_numpy(chunk)[:, None].to(self.device)  # (B, 1, 96, 64)
                outputs.append(self._forward(batch).cpu())
        rows = torch.cat(outputs).numpy()
        return [part.copy() for part in np.split(rows, np.cumsum(counts)[:-1])]

    def _prepare(self, i: int, waveform: np.ndarray) -> np.ndarray:
        """A float64 copy, zero-padded to one whole patch."""
        clip = np.asarray(waveform)
        if clip.ndim != 1:
            raise ValueError(f"waveform {i}: expected a mono 1-D array, got shape {clip.shape}")
        if len(clip) == 0:
            raise ValueError(f"waveform {i}: no samples")
        # float32 → float64 is exact; the package computes its front end in float64 too.
        clip = clip.astype(np.float32).astype(np.float64)
        if len(clip) < PATCH_SAMPLES:
            clip = np.pad(clip, (0, PATCH_SAMPLES - len(clip)))
        return clip

    def _forward(self, patches: torch.Tensor) -> torch.Tensor:
        """(B, 1, 96, 64) log-mel → (B, 128) float32 embeddings."""
        with self.autocast():
            raw = self.model(patches).float()
        if not self.postprocess:
            return raw
        return postprocess(raw, self._pca_matrix, self._pca_means)
