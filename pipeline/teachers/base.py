"""The teacher interface and its registry; each teacher is one module of this package.

A teacher turns a batch of mono waveforms at its own sample rate into one embedding sequence
per clip. ``pipeline/teachers/<name>.py`` defines the teacher ``<name>`` with
``@register_teacher`` on its class; nothing else names it.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any

import numpy as np

from pipeline.registry import Registry

# Modules of this package that are not teachers. ``hear`` wraps any HEAR-API module, named at
# run time as ``hear:<module>``.
TEACHERS: Registry[type[Teacher]] = Registry(
    "teacher", "pipeline.teachers", not_entries={"base", "weights", "tf_checkpoint", "hear"}
)
HEAR_PREFIX = "hear:"


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
    output_version : int
        Raised by hand whenever a change to the teacher's code changes the values it returns
        (the golden-output tests in ``tests/test_golden.py`` fail until it is); it enters the
        fingerprint in place of a hash of the code, so refactoring keeps caches valid.
    """

    name: str
    sample_rate_hz: int
    hop_s: float | None
    dim: int
    min_duration_s: float = 0.0
    pad_below_s: float = 0.0
    output_version: int

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
            "output_version": self.output_version,
            **self.options(),
        }

    def options(self) -> dict[str, Any]:
        """Teacher-specific settings and weight identity, merged into :meth:`fingerprint`."""
        return {}


def register_teacher(cls: type[Teacher]) -> type[Teacher]:
    """Class decorator: registers ``cls`` under its module's file name, which becomes its name.

    The class must set ``output_version`` itself (see :class:`Teacher`).
    """
    if "output_version" not in vars(cls):
        raise TypeError(f"{cls.__name__} must set output_version")
    TEACHERS.register(cls)
    cls.name = cls.__module__.rpartition(".")[2]
    return cls
