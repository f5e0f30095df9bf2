"""Any installed Python module that follows the HEAR 2021 API, used as a teacher.

HEAR 2021 (https://hearbenchmark.com/hear-api.html) asks every submitted audio embedding model to
be a pip-installable module with three functions:

* ``load_model(model_file_path: str = "") -> Model``, the model having the attributes
  ``sample_rate`` (Hz), ``timestamp_embedding_size`` and ``scene_embedding_size``;
* ``get_timestamp_embeddings(audio, model) -> (embeddings, timestamps)``: for ``audio`` of shape
  (n_sounds, n_samples), embeddings (n_sounds, n_timestamps, D) at regular intervals and their
  centre times (n_sounds, n_timestamps) in milliseconds;
* ``get_scene_embeddings(audio, model) -> (n_sounds, D)``: one embedding per sound.

The teacher is named ``hear:<module>``, e.g. ``hear:hear21passt.base``, and offers two layers:
``"timestamp"`` (the timestamp embeddings, one frame per timestamp) and ``"scene"`` (the scene
embedding, one frame per clip). Usage::

    make extract DATASET=openmic TEACHER=hear:<module> WEIGHTS=<file>
    pipeline extract openmic hear:<module> --weights <file> -o layer=scene

Its embedding store and Make target are called ``hear-<module>`` (':' becomes '-' in names).

Weights: the file the module's ``load_model`` expects, given explicitly (``WEIGHTS=<file>``);
there is no default location. Without one, ``load_model()`` is called with no argument, and
modules that fetch their weights by themselves do so then; offline, always pass a local path.
Some modules ignore the path and always download (hear21passt does): those cannot run offline.

HEAR declares no hop size. It is measured once, at construction, from the timestamps the module
returns for silent clips of two lengths, and :meth:`HearTeacher.num_frames` runs the module on a
silent clip of the asked length (once per length), so it is exact whatever the module's framing.
Only PyTorch modules are supported: the audio is given to them as a torch tensor.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.metadata
import math
import os
from collections import defaultdict
from collections.abc import Sequence
from functools import cache
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import torch
from torch import nn

from pipeline.fileio import file_sha256
from pipeline.teachers.base import Teacher, option_bool
from pipeline.teachers.weights import InvalidWeightsError, MissingWeightsError

LAYERS = ("timestamp", "scene")
API_FUNCTIONS = ("load_model", "get_timestamp_embeddings", "get_scene_embeddings")
MODEL_ATTRIBUTES = ("sample_rate", "timestamp_embedding_size", "scene_embedding_size")
# Hop probing: silent clips of these lengths (s), longer ones only while no run gave two frames.
PROBE_SECONDS = (1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0)
# Timestamp differences may wander this much (fraction of the hop) before spacing counts as uneven.
HOP_TOLERANCE = 0.01


class HearApiError(ValueError):
    """A module, or what it returns, does not follow the HEAR 2021 API."""


def import_hear_module(name: str) -> ModuleType:
    """Import ``name`` and check it offers the three HEAR functions.

    Raises
    ------
    ModuleNotFoundError
        The module, or a package it needs, is not installed.
    ImportError
        Importing the module failed otherwise.
    HearApiError
        The module lacks one of :data:`API_FUNCTIONS`.
    """
    try:
        module = importlib.import_module(name)
    except ModuleNotFoundError as err:
        if err.name and (name == err.name or name.startswith(f"{err.name}.")):
            raise ModuleNotFoundError(
                f"HEAR module {name!r} is not installed (pip install the package that provides "
                "it, then name its module, e.g. hear:hear21passt.base)",
                name=name,
            ) from err
        raise ModuleNotFoundError(
            f"HEAR module {name!r} needs {err.name!r}, which is not installed", name=err.name
        ) from err
    except Exception as err:  # a module's import-time code may raise anything
        raise ImportError(
            f"importing HEAR module {name!r} failed: {type(err).__name__}: {err}", name=name
        ) from err
    missing = [f for f in API_FUNCTIONS if not callable(getattr(module, f, None))]
    if missing:
        raise HearApiError(
            f"module {name!r} does not follow the HEAR API: it lacks {', '.join(missing)} "
            f"(a HEAR module offers {', '.join(API_FUNCTIONS)})"
        )
    return module


def module_identity(module: ModuleType) -> dict[str, str | None]:
    """What identifies a module's code: its distribution's version, else a hash of its source.

    Returns ``{"module_distribution": "name==version"}`` when the module's top-level package
    belongs to an installed distribution, else ``{"module_sha256": ...}``: the sha256 of the
    top-level module's file or, for a package, of all its ``.py`` files (None if it has none).
    """
    top = module.__name__.split(".")[0]
    dists = _packages_distributions().get(top)
    if dists:
        versions = sorted(f"{d}=={importlib.metadata.version(d)}" for d in set(dists))
        return {"module_distribution": ",".join(versions)}
    return {"module_sha256": _source_sha256(importlib.import_module(top))}


@cache
def _packages_distributions() -> dict[str, list[str]]:
    return dict(importlib.metadata.packages_distributions())


def _source_sha256(module: ModuleType) -> str | None:
    digest = hashlib.sha256()
    if hasattr(module, "__path__"):  # a package: every source file in it, in a fixed order
        files = sorted(
            (path.relative_to(root).as_posix(), path)
            for root in map(Path, module.__path__)
            for path in root.rglob("*.py")
        )
        if not files:
            return None
        for relative, path in files:
            digest.update(relative.encode() + b"\0" + path.read_bytes() + b"\0")
        return digest.hexdigest()
    if not getattr(module, "__file__", None):
        return None
    return hashlib.sha256(Path(module.__file__).read_bytes()).hexdigest()


class HearTeacher(Teacher):
    """A HEAR 2021 module's timestamp embeddings (frames) or scene embedding (one frame).

    Parameters
    ----------
    module : importable name of the HEAR module, e.g. ``"hear21passt.base"``
    weights : path of the file given to the module's ``load_model``; it must exist. Default:
        none, ``load_model()`` is called without argument (a module may then download).
    device : torch device to run on, e.g. ``"cpu"``, ``"cuda"``
    batch_size : int > 0 -- clips of equal length run together, at most this many at a time
    layer : ``"timestamp"`` (frames every ``hop_s`` seconds) or ``"scene"`` (one frame)
    pad_below_s : float >= 0 -- clips shorter than this (seconds) are zero-padded to it at the
        end, for modules that cannot embed very short audio
    precision : "fp32" (default), "bf16", "fp16" or "auto" -- autocast around the module's
        functions, front end included (:meth:`Teacher.choose_precision`)
    bf16_agrees : bool -- the module's bf16 embeddings are known to agree with its fp32 ones;
        default false: ``"auto"`` runs an unknown module at fp32

    Attributes
    ----------
    name : ``"hear:<module>"``
    sample_rate_hz, dim : the model's ``sample_rate`` and the layer's embedding size
    timestamp_dim, scene_dim : the model's two embedding sizes
    hop_s : seconds between timestamps, measured at construction; None for ``"scene"``
    module, model : the imported module and the model its ``load_model`` returned
    """

    # Raise when a change alters the embeddings (tests/test_golden.py fails until it is).
    output_version = 1

    def __init__(
        self,
        module: str,
        weights: str | os.PathLike | None = None,
        device: str = "cpu",
        batch_size: int | str = 16,
        layer: str = "timestamp",
        pad_below_s: float | str = 0.0,
        precision: str | None = "fp32",
        bf16_agrees: bool | str = False,
    ):
        if layer not in LAYERS:
            raise ValueError(f"unknown HEAR layer {layer!r}; choose one of {', '.join(LAYERS)}")
        self.batch_size = int(batch_size)
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        self.pad_below_s = float(pad_below_s)
        if not self.pad_below_s >= 0:
            raise ValueError(f"pad_below_s must be a number of seconds >= 0, got {pad_below_s}")
        self.name = f"hear:{module}"
        self.module_name = module
        self.layer = layer
        self.device = torch.device(device)
        self.bf16_agrees = option_bool("bf16_agrees", bf16_agrees)
        self.choose_precision(precision, self.device)
        self.module = import_hear_module(module)
        self.weights = self._weights_path(weights)
        # Hashed now, so the fingerprint names the weights loaded even if the file is replaced.
        self.weights_sha256 = file_sha256(self.weights) if self.weights else None
        self.model = self._load_model()
        self.sample_rate_hz = self._model_int("sample_rate")
        self.timestamp_dim = self._model_int("timestamp_embedding_size")
        self.scene_dim = self._model_int("scene_embedding_size")
        self.dim = self.timestamp_dim if layer == "timestamp" else self.scene_dim
        self._frame_counts: dict[int, int] = {}
        self.hop_s = self._measure_hop_s() if layer == "timestamp" else None
        if layer == "scene":  # checks the module's scene output before any clip is embedded
            n = self._padded_length(self.sample_rate_hz)
            self._scene(torch.zeros(1, n, device=self.device))

    def _weights_path(self, weights: str | os.PathLike | None) -> Path | None:
        if not weights:
            return None
        path = Path(weights).expanduser()
        if not path.is_file():
            raise MissingWeightsError(
                f"{self.name} weights not found at the given path {path}. Pass the local path of "
                f"the file that {self.module_name}.load_model reads (WEIGHTS=<file>); its "
                "package's documentation says where to download it."
            )
        return path

    def _load_model(self) -> Any:
        try:
            if self.weights is None:
                model = self.module.load_model()
            else:
                model = self.module.load_model(str(self.weights))
        except Exception as err:  # whatever the module's loader raises on a bad file
            if self.weights is None:
                raise RuntimeError(
                    f"{self.module_name}.load_model() failed ({type(err).__name__}: {err}); "
                    "pass the local path of its weights file with WEIGHTS=<file>"
                ) from err
            raise InvalidWeightsError(
                f"{self.weights}: {self.module_name}.load_model could not load it "
                f"({type(err).__name__}: {err})"
            ) from err
        missing = [a for a in MODEL_ATTRIBUTES if not hasattr(model, a)]
        if missing:
            raise HearApiError(
                f"the model of HEAR module {self.module_name!r} lacks {', '.join(missing)} "
                f"(a HEAR model has {', '.join(MODEL_ATTRIBUTES)})"
            )
        if isinstance(model, nn.Module):
            model = model.to(self.device).eval()
        return model

    def _model_int(self, attribute: str) -> int:
        value = getattr(self.model, attribute)
        try:
            valid = not isinstance(value, bool) and float(value).is_integer() and value > 0
        except (TypeError, ValueError):
            valid = False
        if not valid:
            raise HearApiError(
                f"the model of HEAR module {self.module_name!r} has {attribute}={value!r}, "
                "not a positive integer"
            )
        return int(value)

    def _padded_length(self, n_samples: int) -> int:
        return max(n_samples, math.ceil(self.pad_below_s * self.sample_rate_hz))

    def _measure_hop_s(self) -> float:
        """Seconds between timestamps of silent clips; checks they are evenly spaced in ms.

        The frame count must grow with the clip's length as the hop says, which catches
        timestamps given in seconds instead of milliseconds.
        """
        probes: list[tuple[int, np.ndarray]] = []  # (n_samples, timestamps in ms)
        for seconds in PROBE_SECONDS:
            n = self._padded_length(round(seconds * self.sample_rate_hz))
            if probes and n == probes[-1][0]:
                continue
            _, timestamps = self._timestamp_embeddings(torch.zeros(1, n, device=self.device))
            self._frame_counts[n] = timestamps.shape[1]
            probes.append((n, timestamps[0].astype(np.float64)))
            if len(probes) >= 2 and any(len(t) > 1 for _, t in probes):
                break
        else:
            raise HearApiError(
                f"HEAR module {self.module_name!r} returned a single timestamp for "
                f"{PROBE_SECONDS[-1]:g} s of audio: no hop to measure; use layer=scene"
            )
        diffs = np.concatenate([np.diff(t) for _, t in probes])
        hop_ms = float(np.median(diffs))
        if not hop_ms > 0 or np.abs(diffs - hop_ms).max() > HOP_TOLERANCE * hop_ms:
            raise HearApiError(
                f"HEAR module {self.module_name!r} returned timestamps that are not evenly "
                f"spaced (differences from {diffs.min():g} to {diffs.max():g} ms)"
            )
        hop_s = hop_ms / 1000
        (n0, t0), (n1, t1) = probes[0], probes[-1]
        grown_s = (len(t1) - len(t0)) * hop_s
        added_s = (n1 - n0) / self.sample_rate_hz
        if abs(grown_s - added_s) > 2 * hop_s:
            raise HearApiError(
                f"HEAR module {self.module_name!r}: timestamps {hop_ms:g} ms apart, but "
                f"{added_s:g} s more audio gave {len(t1) - len(t0)} more frames; timestamps "
                "must be in milliseconds"
            )
        return round(hop_s, 6)

    def options(self) -> dict[str, Any]:
        return {
            "hear_module": self.module_name,
            **module_identity(self.module),
            "weights_sha256": self.weights_sha256,
            "layer": self.layer,
            "hop_s": self.hop_s,
            "pad_below_s": self.pad_below_s,
        }

    def num_frames(self, n_samples: int) -> int:
        """Frames :meth:`embed` returns for ``n_samples`` samples: the module's own count.

        Runs the module on a silent clip of that length, once per length.
        """
        if self.layer == "scene":
            return 1
        n = self._padded_length(int(n_samples))
        if n not in self._frame_counts:
            _, timestamps = self._timestamp_embeddings(torch.zeros(1, n, device=self.device))
            self._frame_counts[n] = timestamps.shape[1]
        return self._frame_counts[n]

    def embed(self, waveforms: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Mono float32 clips at ``sample_rate_hz`` → one (n_frames, dim) float32 array each."""
        clips = [self._prepare(i, w) for i, w in enumerate(waveforms)]
        # Only clips of one length share a batch: HEAR takes one length per batch, and padding
        # would change the embeddings.
        by_length: dict[int, list[int]] = defaultdict(list)
        for i, clip in enumerate(clips):
            by_length[len(clip)].append(i)
        results: dict[int, np.ndarray] = {}
        for indices in by_length.values():
            for start in range(0, len(indices), self.batch_size):
                chunk = indices[start : start + self.batch_size]
                batch = torch.from_numpy(np.stack([clips[i] for i in chunk])).to(self.device)
                results.update(zip(chunk, self._forward(batch), strict=True))
        return [results[i] for i in range(len(clips))]

    def _prepare(self, index: int, waveform: np.ndarray) -> np.ndarray:
        clip = np.asarray(waveform, dtype=np.float32)
        if clip.ndim != 1:
            raise ValueError(f"waveform {index}: expected a mono 1-D array, got shape {clip.shape}")
        return np.pad(clip, (0, self._padded_length(len(clip)) - len(clip)))

    def _forward(self, batch: torch.Tensor) -> np.ndarray:
        """(B, n_samples) → (B, T, dim) float32."""
        if self.layer == "scene":
            return self._scene(batch)[:, None, :]
        return self._timestamp_embeddings(batch)[0]

    def _timestamp_embeddings(self, batch: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        """The module's (B, T, dim) embeddings and (B, T) timestamps (ms), shapes checked."""
        with torch.no_grad(), self.autocast():
            returned = self.module.get_timestamp_embeddings(batch, self.model)
        if not isinstance(returned, tuple | list) or len(returned) < 2:
            raise HearApiError(
                f"{self.module_name}.get_timestamp_embeddings returned "
                f"{type(returned).__name__}, not (embeddings, timestamps)"
            )
        embeddings, timestamps = _to_numpy(returned[0]), _to_numpy(returned[1])
        n_sounds, size = batch.shape[0], self.timestamp_dim
        if embeddings.ndim != 3 or embeddings.shape[::2] != (n_sounds, size):
            raise HearApiError(
                f"{self.module_name}.get_timestamp_embeddings returned embeddings of shape "
                f"{embeddings.shape} for audio of shape {tuple(batch.shape)}; expected "
                f"({n_sounds}, n_timestamps, {size})"
            )
        if timestamps.shape != embeddings.shape[:2]:
            raise HearApiError(
                f"{self.module_name}.get_timestamp_embeddings returned timestamps of shape "
                f"{timestamps.shape} for embeddings of shape {embeddings.shape}; expected "
                f"{embeddings.shape[:2]}"
            )
        return embeddings, timestamps

    def _scene(self, batch: torch.Tensor) -> np.ndarray:
        """The module's (B, dim) scene embeddings, shape checked."""
        with torch.no_grad(), self.autocast():
            embeddings = _to_numpy(self.module.get_scene_embeddings(batch, self.model))
        expected = (batch.shape[0], self.dim)
        if embeddings.shape != expected:
            raise HearApiError(
                f"{self.module_name}.get_scene_embeddings returned shape {embeddings.shape} for "
                f"audio of shape {tuple(batch.shape)}; expected {expected}"
            )
        return embeddings


def _to_numpy(value: Any) -> np.ndarray:
    if isinstance(value, torch.Tensor):
        value = value.detach().to("cpu", torch.float32)
    return np.asarray(value, dtype=np.float32)
