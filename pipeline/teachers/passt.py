"""PaSST (Koutini et al., 2022): a patchout audio spectrogram transformer trained on AudioSet.

The network is ``passt_s_swa_p16_128_ap476`` from the ``hear21passt`` package (a DeiT-base
transformer: 16×16 patches with stride 10 over a 128-band log-mel, 12 blocks, 768 wide, class and
distillation tokens), used the way HEAR 2021 and the EAsT paper used it: timestamp embeddings of
0.96 s windows every 0.96 s (``PasstBasicWrapper.get_timestamp_embeddings``: the clip is
reflect-padded by half a window at each end, cut into windows, and each window goes through the
mel front end and the network on its own).

Two outputs (``mode``):

* ``"embed_only"`` (default): 768-d, the mean of the class and distillation tokens after the
  final layer norm — what the paper distilled from;
* ``"all"``: 1295-d, the 527 AudioSet logits (before the sigmoid) followed by those 768 values.

``hear21passt`` needs ``timm`` (only to download weights) and ``torchaudio`` (only for the Kaldi
mel filterbank and for training-time masking); neither is needed here: the network code is
imported under a private package name with a stand-in for ``timm`` that refuses downloads, and
the mel front end (``AugmentMelSTFT`` in eval mode) is the students' recipe
(:func:`pipeline.extract.frontends.log_mel_spectrogram`, whose Kaldi filterbank is
:func:`pipeline.extract.melbanks.kaldi_mel_filterbank`) with PaSST's numbers, :data:`MEL_CONFIG`.

Weights: ``passt-s-f128-p16-s10-ap.476-swa.pt`` (about 330 MB, a plain state dict), from an
explicit path, ``$PASST_WEIGHTS``, or ``<torch hub dir>/checkpoints/`` (where timm caches it,
``~/.cache/torch/hub/checkpoints`` by default); never downloaded here.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.machinery
import importlib.metadata
import importlib.util
import io
import os
import sys
import warnings
from collections.abc import Iterator, Mapping, Sequence
from functools import cache
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from pipeline.extract.frontends import (
    OUTPUT_VERSION as MEL_OUTPUT_VERSION,
)
from pipeline.extract.frontends import (
    MelConfig,
    log_mel_spectrogram,
    mel_filterbank,
    num_frames,
)
from pipeline.fileio import file_sha256
from pipeline.teachers.base import Teacher, register_teacher
from pipeline.teachers.weights import (
    InvalidWeightsError,
    describe,
    read_checkpoint,
    resolve_weights,
    state_problems,
)

ARCH = "passt_s_swa_p16_128_ap476"
WEIGHTS_FILE = "passt-s-f128-p16-s10-ap.476-swa.pt"
WEIGHTS_URL = f"https://github.com/kkoutini/PaSST/releases/download/v0.0.1-audioset/{WEIGHTS_FILE}"
WEIGHTS_ENV = "PASST_WEIGHTS"

SAMPLE_RATE_HZ = 32000
# The mel front end of hear21passt.base.get_basic_model (AugmentMelSTFT, eval mode).
N_MELS = 128
N_FFT = 1024
WIN_LENGTH = 800
HOP_LENGTH = 320
FMIN_HZ = 0.0
FMAX_HZ = float(SAMPLE_RATE_HZ // 2 - 2000 // 2)  # fmax=None with fmax_aug_range=2000: 15 kHz
PREEMPHASIS = 0.97
LOG_OFFSET = 1e-5
NORM_SHIFT = 4.5
NORM_SCALE = 5.0
MEL_CONFIG = MelConfig(
    sample_rate_hz=SAMPLE_RATE_HZ,
    n_fft=N_FFT,
    win_length=WIN_LENGTH,
    hop_length=HOP_LENGTH,
    n_mels=N_MELS,
    f_min_hz=FMIN_HZ,
    f_max_hz=FMAX_HZ,
    preemphasis=PREEMPHASIS,
    log_offset=LOG_OFFSET,
    norm_shift=NORM_SHIFT,
    norm_scale=NORM_SCALE,
)

# The network, as get_model builds it for ARCH: a 998-frame input gives 99 time patches.
PATCH = 16
PATCH_STRIDE = 10
INPUT_FRAMES = 998
MAX_TIME_PATCHES = (INPUT_FRAMES - PATCH) // PATCH_STRIDE + 1
EMBED_DIM = 768
N_CLASSES = 527
MODE_DIMS = {"embed_only": EMBED_DIM, "all": N_CLASSES + EMBED_DIM}

_PRIVATE_PACKAGE = "_pipeline_hear21passt"
_TIMM_MODULES = ("timm", "timm.models", "timm.models._hub")


# --- the package's network code -----------------------------------------------------------------


def _refuse_download(url: str, *args: Any, **kwargs: Any) -> str:
    raise RuntimeError(
        f"downloads are disabled: hear21passt asked for {url}; give the weights file instead"
    )


@contextlib.contextmanager
def _timm_stand_in() -> Iterator[None]:
    """``timm.models._hub`` as a module whose ``download_cached_file`` refuses, for one import.

    Afterwards ``sys.modules`` holds exactly the ``timm`` entries it held before (a real timm that
    was imported stays untouched; none is added).
    """
    before = {name: sys.modules[name] for name in _TIMM_MODULES if name in sys.modules}
    hub = ModuleType("timm.models._hub")
    hub.download_cached_file = _refuse_download  # type: ignore[attr-defined]
    sys.modules.update(
        {"timm": ModuleType("timm"), "timm.models": ModuleType("timm.models"), hub.__name__: hub}
    )
    try:
        yield
    finally:
        for name in _TIMM_MODULES:
            if name in before:
                sys.modules[name] = before[name]
            else:
                sys.modules.pop(name, None)


@cache
def passt_models() -> ModuleType:
    """``hear21passt.models.passt``, loaded under a private package name without timm.

    ``find_spec`` only locates the installed package; its ``models`` folder is then imported as
    ``_pipeline_hear21passt.models``, so its relative imports resolve there, the package's own
    ``__init__`` and its torchaudio-importing front end never run, and a later ``import
    hear21passt`` elsewhere still gets the untouched real package.
    """
    spec = importlib.util.find_spec("hear21passt")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("hear21passt is not installed: pip install --no-deps hear21passt==0.0.26")
    if _PRIVATE_PACKAGE not in sys.modules:
        package = importlib.machinery.ModuleSpec(_PRIVATE_PACKAGE, None, is_package=True)
        package.submodule_search_locations = list(spec.submodule_search_locations)
        sys.modules[_PRIVATE_PACKAGE] = importlib.util.module_from_spec(package)
    with _timm_stand_in():
        module = importlib.import_module(f"{_PRIVATE_PACKAGE}.models.passt")
    module.first_RUN = False  # silences the shape printout of the first forward pass
    return module


def build_passt() -> nn.Module:
    """The PaSST network of ``get_basic_model`` with random weights, in eval mode."""
    with contextlib.redirect_stdout(io.StringIO()):  # get_model prints the whole network
        net = passt_models().get_model(
            arch=ARCH,
            pretrained=False,
            n_classes=N_CLASSES,
            in_channels=1,
            fstride=PATCH_STRIDE,
            tstride=PATCH_STRIDE,
            input_fdim=N_MELS,
            input_tdim=INPUT_FRAMES,
            u_patchout=0,
            s_patchout_t=0,
            s_patchout_f=0,
        )
    return net.eval()


# --- weights ------------------------------------------------------------------------------------


def default_weights_dir() -> Path:
    """Where timm (and so hear21passt) caches downloads: ``<torch.hub.get_dir()>/checkpoints``."""
    return Path(torch.hub.get_dir()) / "checkpoints"


def download_command() -> str:
    folder = default_weights_dir()
    return f"mkdir -p {folder} && wget -P {folder} {WEIGHTS_URL}"


def weights_path(explicit: str | os.PathLike | None = None) -> Path:
    """The weights file: ``explicit``, else ``$PASST_WEIGHTS``, else timm's cache folder."""
    return resolve_weights(
        teacher="PaSST",
        filename=WEIGHTS_FILE,
        explicit=explicit,
        env_var=WEIGHTS_ENV,
        default_dir=default_weights_dir(),
        download=download_command(),
    )


def passt_state(checkpoint: Any, path: Path) -> Mapping[str, Any]:
    """The PaSST state dict in a checkpoint, as hear21passt's loader would read it.

    ``get_model(pretrained=True)`` unwraps a ``'model'`` entry, converts ImageNet ViT/DeiT
    position embeddings and flat or RGB patch kernels, then loads strictly. For the AudioSet
    release file (a plain state dict with PaSST's own time/frequency position embeddings and a
    one-channel conv patch kernel) every conversion leaves it as it is; files that would need one
    are not this teacher's weights and are refused.
    """
    state = checkpoint
    if isinstance(state, Mapping) and "model" in state:
        state = state["model"]
    if not isinstance(state, Mapping):
        raise InvalidWeightsError(
            f"{path}: expected the PaSST state dict of {WEIGHTS_FILE}, got {describe(checkpoint)}"
        )
    if "time_new_pos_embed" not in state:
        raise InvalidWeightsError(
            f"{path} is not a PaSST AudioSet checkpoint like {WEIGHTS_FILE}: it has no "
            f"'time_new_pos_embed' (got {describe(state)})"
        )
    return state


def load_passt(path: Path) -> nn.Module:
    """The PaSST network (on the CPU, eval mode) with the weights of the checkpoint at ``path``."""
    state = passt_state(read_checkpoint(path), path)
    model = build_passt()
    problems = state_problems(state, model.state_dict())
    if problems:
        raise InvalidWeightsError(f"{path} is not a {ARCH} checkpoint: {problems}")
    model.load_state_dict(state)
    return model


# --- mel front end ------------------------------------------------------------------------------


def passt_mel_basis() -> torch.Tensor:
    """The front end's (128, 513) float32 filterbank: Kaldi's bands plus a zero Nyquist column."""
    return mel_filterbank(MEL_CONFIG)


def log_mel(waves: torch.Tensor, mel_basis: torch.Tensor, window: torch.Tensor) -> torch.Tensor:
    """hear21passt's normalised log-mel of each waveform: (B, n) → (B, 128, 1 + (n - 1) // 320).

    Pre-emphasis (y[t] = x[t + 1] − 0.97 x[t], one sample shorter), a centred power STFT (n_fft
    1024, 800-sample symmetric Hann ``window``, hop 320), the filterbank ``mel_basis``
    (:func:`passt_mel_basis`), ln(x + 1e-5), then (x + 4.5) / 5.
    """
    return log_mel_spectrogram(waves, config=MEL_CONFIG, window=window, filterbank=mel_basis)


def time_patches(window_samples: int) -> int:
    """Patch columns the network makes of one window of ``window_samples`` samples."""
    frames = num_frames(window_samples, HOP_LENGTH)
    return (frames - PATCH) // PATCH_STRIDE + 1 if frames >= PATCH else 0


# --- teacher ------------------------------------------------------------------------------------


@register_teacher
class PasstTeacher(Teacher):
    """PaSST timestamp embeddings at 32 kHz: one frame per ``hop_ms`` (0.96 s by default).

    Parameters
    ----------
    weights : path to ``passt-s-f128-p16-s10-ap.476-swa.pt``; default ``$PASST_WEIGHTS``, then
        ``<torch.hub.get_dir()>/checkpoints/``
    device : torch device to run on, e.g. ``"cpu"``, ``"cuda"``
    batch_size : int > 0 -- windows (of all clips given together) per forward pass
    mode : ``"embed_only"`` (768-d) or ``"all"`` (527 logits then the 768-d embedding)
    window_ms : float -- window length in milliseconds, 150 ms to about 10 s (default 960)
    hop_ms : float -- milliseconds between window starts, i.e. between frames (default 960)
    precision : ``"fp32"`` (default), ``"bf16"``, ``"fp16"`` or ``"auto"`` -- autocast of the
        transformer; the mel front end stays float32 (see :meth:`Teacher.choose_precision`)

    Frame i covers the samples [i·hop − window/2, i·hop + window/2) of the clip, mirrored at its
    ends, so it is centred at i · hop_s seconds: n samples give n // hop + 1 frames at the default
    (a 10 s clip: 11). Clips of at most window/2 samples cannot be mirrored that far;
    :meth:`embed` zero-pads them to ``pad_below_s`` first.
    """

    # Raise when a change alters the embeddings (tests/test_golden.py fails until it is).
    output_version = 1

    sample_rate_hz = SAMPLE_RATE_HZ
    min_duration_s = 0.0
    bf16_agrees = True

    def __init__(
        self,
        weights: str | os.PathLike | None = None,
        device: str = "cpu",
        batch_size: int = 16,
        mode: str = "embed_only",
        window_ms: float | str = 960,
        hop_ms: float | str = 960,
        precision: str | None = "fp32",
    ):
        if mode not in MODE_DIMS:
            raise ValueError(f"unknown PaSST mode {mode!r}; choose one of {', '.join(MODE_DIMS)}")
        self.batch_size = int(batch_size)
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        self.mode = mode
        self.dim = MODE_DIMS[mode]
        self.window_ms = float(window_ms)
        self.hop_ms = float(hop_ms)
        # Millisecond → sample conversion as PasstBasicWrapper does it.
        self.window = int(self.window_ms * SAMPLE_RATE_HZ / 1000)
        self.hop = int(self.hop_ms * SAMPLE_RATE_HZ / 1000)
        if not 1 <= time_patches(self.window) <= MAX_TIME_PATCHES:
            raise ValueError(
                f"window_ms={window_ms} gives {time_patches(self.window)} time patches; PaSST "
                f"takes 1 to {MAX_TIME_PATCHES} (windows of about 150 ms to 10 s)"
            )
        if self.hop < 1:
            raise ValueError(f"hop_ms={hop_ms} is shorter than one sample")
        self.hop_s = self.hop / SAMPLE_RATE_HZ
        self.pad = self.window // 2
        self.pad_below_s = (self.pad + 1) / SAMPLE_RATE_HZ
        self.device = torch.device(device)
        self.choose_precision(precision, self.device)
        self.weights = weights_path(weights)
        # Hashed now, so the fingerprint names the weights loaded even if the file is replaced.
        self.weights_sha256 = file_sha256(self.weights)
        self.model = load_passt(self.weights).to(self.device)
        self.mel_basis = passt_mel_basis().to(self.device)
        self.stft_window = torch.hann_window(WIN_LENGTH, periodic=False, device=self.device)

    def options(self) -> dict[str, Any]:
        return {
            "arch": ARCH,
            "mode": self.mode,
            "window_ms": self.window_ms,
            "hop_ms": self.hop_ms,
            "weights_sha256": self.weights_sha256,
            "hear21passt": importlib.metadata.version("hear21passt"),
            # The version of the log-mel code shared with the students' front ends.
            "mel_version": MEL_OUTPUT_VERSION,
        }

    def num_frames(self, n_samples: int) -> int:
        padded = max(n_samples, self.pad + 1) + 2 * self.pad
        return (padded - self.window) // self.hop + 1

    def embed(self, waveforms: Sequence[np.ndarray]) -> list[np.ndarray]:
        """One (num_frames(n), dim) float32 array per clip; all clips' windows run together."""
        windows = [self._windows(w, i) for i, w in enumerate(waveforms)]
        if not windows:
            return []
        counts = [len(w) for w in windows]
        with torch.inference_mode():
            outputs = torch.cat(
                [
                    self._forward(chunk.to(self.device)).cpu()
                    for chunk in torch.cat(windows).split(self.batch_size)
                ]
            )
        return [part.numpy().copy() for part in outputs.split(counts)]

    def _windows(self, waveform: np.ndarray, index: int) -> torch.Tensor:
        """(num_frames(n), window) windows of the reflect-padded clip."""
        samples = np.asarray(waveform, dtype=np.float32)
        if samples.ndim != 1:
            raise ValueError(f"waveform {index}: expected a mono 1-D array, got {samples.shape}")
        wave = torch.from_numpy(np.ascontiguousarray(samples))
        if len(wave) <= self.pad:  # reflect padding needs more samples than it adds
            wave = F.pad(wave, (0, self.pad + 1 - len(wave)))
        padded = F.pad(wave[None], (self.pad, self.pad), mode="reflect")[0]
        return padded.unfold(0, self.window, self.hop)

    def _forward(self, windows: torch.Tensor) -> torch.Tensor:
        """(B, window) → (B, dim) float32."""
        specs = log_mel(windows, self.mel_basis, self.stft_window)
        with warnings.catch_warnings(), self.autocast():
            # A window shorter than the 10 s the network was built for is expected.
            warnings.filterwarnings("ignore", message="Input image size")
            logits, features = self.model(specs.unsqueeze(1))
        if self.mode == "embed_only":
            return features.float()
        return torch.cat([logits.float(), features.float()], dim=1)
