"""Teacher registry: pre-trained audio models whose embeddings the students learn from.

Each teacher lives in one self-contained file of this package and registers a class with
``@register_teacher("name")``. A teacher turns a batch of mono waveforms at its own sample rate
into one embedding sequence per clip::

    teacher = create_teacher("musicnn", device="cpu")
    [emb] = teacher.embed([waveform])        # (n_frames, teacher.dim) float32

Teachers run only in stage one (extraction); training reads their cached output.
"""

from __future__ import annotations

import hashlib
import importlib
import inspect
import io
import os
import zipfile
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import torch

import pipeline

TEACHERS: dict[str, type[Teacher]] = {}

# Modules imported lazily by ``create_teacher`` so that listing teachers never imports a
# model package (some of them do network I/O at import time).
_TEACHER_MODULES = {
    "aisfx": "aisfx",
    "musicnn": "musicnn",
    "openl3": "openl3",
    "panns": "panns",
    "passt": "passt",
    "vggish": "vggish",
}


class Teacher(ABC):
    """What every teacher offers.

    Attributes
    ----------
    name : str
        Registry name, e.g. ``"panns"``.
    sample_rate_hz : int
        Rate the waveforms given to :meth:`embed` must have.
    hop_s : float or None
        Seconds between embedding frames; ``None`` for a clip-level teacher (one frame).
    dim : int
        Embedding width D.
    min_duration_s : float
        Shorter clips cannot be embedded and are reported as failures.
    pad_below_s : float
        Shorter clips are zero-padded to this length by :meth:`embed`; extraction names them.
    """

    name: str
    sample_rate_hz: int
    hop_s: float | None
    dim: int
    min_duration_s: float = 0.0
    pad_below_s: float = 0.0

    @abstractmethod
    def embed(self, waveforms: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Embed mono float32 waveforms (any lengths) → one (n_frames, dim) array per clip."""

    @abstractmethod
    def num_frames(self, n_samples: int) -> int:
        """Frames :meth:`embed` returns for a waveform of ``n_samples`` samples."""

    def fingerprint(self) -> dict[str, Any]:
        """Everything that determines the embeddings; a store made with another one is stale."""
        return {
            "teacher": self.name,
            "sample_rate_hz": self.sample_rate_hz,
            "hop_s": self.hop_s,
            "dim": self.dim,
            "code": source_digest(type(self)),
            "pipeline_version": pipeline.__version__,
            **self.options(),
        }

    def options(self) -> dict[str, Any]:
        """Teacher-specific settings and weight identity, merged into :meth:`fingerprint`."""
        return {}


def register_teacher(name: str) -> Callable[[type[Teacher]], type[Teacher]]:
    def add(cls: type[Teacher]) -> type[Teacher]:
        cls.name = name
        TEACHERS[name] = cls
        return cls

    return add


HEAR_PREFIX = "hear:"


def list_teachers() -> list[str]:
    """Registered teacher names, and ``hear:<module>`` for any HEAR-API module."""
    return [*sorted(_TEACHER_MODULES), f"{HEAR_PREFIX}<module>"]


def check_teacher_name(name: str) -> str:
    """``name`` if it names a teacher (``hear:`` needs a module name after it), else ValueError."""
    if name in _TEACHER_MODULES:
        return name
    module = name.removeprefix(HEAR_PREFIX)
    if name.startswith(HEAR_PREFIX) and module and all(p.isidentifier() for p in module.split(".")):
        return name
    raise ValueError(f"unknown teacher {name!r}; choose one of {', '.join(list_teachers())}")


def create_teacher(name: str, **options: Any) -> Teacher:
    """Build a teacher by name; ``None``-valued options are dropped so defaults apply."""
    options = {k: v for k, v in options.items() if v is not None}
    if check_teacher_name(name).startswith(HEAR_PREFIX):
        from pipeline.teachers.hear import HearTeacher

        return HearTeacher(module=name.removeprefix(HEAR_PREFIX), **options)
    importlib.import_module(f"{__name__}.{_TEACHER_MODULES[name]}")
    return TEACHERS[name](**options)


class MissingWeightsError(FileNotFoundError):
    """A teacher's weights file is not where it was looked for."""


class InvalidWeightsError(ValueError):
    """A weights file that is not the checkpoint the teacher expects."""


def resolve_weights(
    *,
    teacher: str,
    filename: str,
    explicit: str | os.PathLike | None,
    env_var: str,
    default_dir: Path,
    download: str,
) -> Path:
    """Find a weights file: explicit path, else ``$env_var``, else the package's usual cache.

    A path given explicitly must exist: it is never silently replaced by another file.

    Raises :class:`MissingWeightsError` with one message that says which file is missing, where
    it was looked for, where to put it and how to download it on a machine with internet.
    Nothing is ever downloaded here.
    """
    if explicit:
        path = Path(explicit).expanduser()
        if path.is_file():
            return path
        raise MissingWeightsError(
            f"{teacher} weights {filename!r} not found at the given path {path}. "
            f"To download it on a machine with internet: {download}"
        )
    candidates: list[tuple[str, Path]] = []
    if os.environ.get(env_var):
        candidates.append((f"${env_var}", Path(os.environ[env_var]).expanduser()))
    candidates.append(("default location", default_dir.expanduser() / filename))
    for _, path in candidates:
        if path.is_file():
            return path
    looked = "; ".join(f"{how}: {path}" for how, path in candidates)
    raise MissingWeightsError(
        f"{teacher} weights {filename!r} not found (looked at {looked}). "
        f"Put the file at {default_dir.expanduser() / filename}, or point ${env_var} or "
        f"WEIGHTS=<path> at it. To download it on a machine with internet: {download}"
    )


def file_sha256(path: Path) -> str:
    """sha256 of a file, computed once per (path, size, mtime) in a process."""
    stat = Path(path).stat()
    return _sha256(str(Path(path).resolve()), stat.st_size, stat.st_mtime_ns)


@cache
def _sha256(path: str, size: int, mtime_ns: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 22):
            digest.update(block)
    return digest.hexdigest()


def source_digest(obj: Any) -> str:
    """Short hash of the source file defining ``obj``: a code change makes old caches stale."""
    return hashlib.sha256(Path(inspect.getfile(obj)).read_bytes()).hexdigest()[:16]


def read_checkpoint(path: Path) -> Any:
    """``torch.load(weights_only=True)`` of a published checkpoint, on the CPU.

    Two things published weights contain are let through: numpy arrays (PCA parameters, a
    training sampler's state), pickled by numpy 1 as ``numpy.core.multiarray._reconstruct`` and
    by numpy 2 as ``numpy._core...`` -- allowing those rebuilders and numpy's dtypes runs no other
    code; and torch.hub's legacy packaging, a zip archive holding the checkpoint as its one file
    (PyTorch's own format is a zip of several entries). An unreadable file raises
    :class:`InvalidWeightsError` naming it.
    """
    reconstruct = np.empty(0).__reduce__()[0]
    numpy_arrays = [
        (reconstruct, "numpy.core.multiarray._reconstruct"),
        (reconstruct, "numpy._core.multiarray._reconstruct"),
        np.ndarray,
        np.dtype,
        *{type(np.dtype(t)) for t in (np.float16, np.float32, np.float64, np.int32, np.int64)},
    ]
    try:
        with torch.serialization.safe_globals(numpy_arrays):
            if zipfile.is_zipfile(path):
                with zipfile.ZipFile(path) as archive:
                    members = archive.infolist()
                    if len(members) == 1 and not members[0].is_dir():
                        data = io.BytesIO(archive.read(members[0]))
                        return torch.load(data, map_location="cpu", weights_only=True)
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # zip, pickle and weights-only errors share no narrower base
        raise InvalidWeightsError(
            f"{path}: not a readable PyTorch checkpoint ({type(err).__name__}: {err})"
        ) from err


def describe(checkpoint: Any) -> str:
    """A few words on what a checkpoint file held, for error messages."""
    if isinstance(checkpoint, Mapping):
        return f"a dict with keys {sorted(map(str, checkpoint))[:5]}"
    return type(checkpoint).__name__


def state_problems(
    given: Mapping[Any, Any],
    expected: Mapping[str, torch.Tensor],
    optional: Callable[[str], bool] = lambda key: False,
) -> str:
    """Missing, unexpected and misshapen entries of a state dict; empty when it fits.

    ``optional(key)`` says which expected entries may be absent (e.g. recomputable buffers).
    """

    def shape(value: Any) -> tuple[int, ...] | str:
        return tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__

    def listing(what: str, items: list[str]) -> str:
        more = f" and {len(items) - 3} more" if len(items) > 3 else ""
        return f"{len(items)} {what} ({', '.join(items[:3])}{more})"

    missing = [key for key in expected if key not in given and not optional(key)]
    unexpected = [str(key) for key in given if key not in expected]
    misshapen = [
        f"{key}: {shape(value)} instead of {tuple(expected[key].shape)}"
        for key, value in given.items()
        if key in expected and shape(value) != tuple(expected[key].shape)
    ]
    found = [
        ("missing keys", missing),
        ("unexpected keys", unexpected),
        ("wrong shapes", misshapen),
    ]
    return "; ".join(listing(what, items) for what, items in found if items)
