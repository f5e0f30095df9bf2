"""The teacher interface and its registry; each teacher is one module of this package.

A teacher turns a batch of mono waveforms at its own sample rate into one embedding sequence
per clip. ``pipeline/teachers/<name>.py`` defines the teacher ``<name>`` with
``@register_teacher`` on its class; nothing else names it.
"""

from __future__ import annotations

import contextlib
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from types import MappingProxyType
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from pipeline.devices import AUTO, PRECISIONS, autocast, resolve_precision
from pipeline.registry import Registry

# Modules of this package that are not teachers. ``hear`` wraps any HEAR-API module, named at
# run time as ``hear:<module>``.
TEACHERS: Registry[type[Teacher]] = Registry(
    "teacher", "pipeline.teachers", not_entries={"base", "weights", "tf_checkpoint", "hear"}
)
HEAR_PREFIX = "hear:"
#: The agreement bar of :attr:`Teacher.bf16_agrees`: the least per-frame cosine similarity
#: between a teacher's bf16 and fp32 embeddings of the same clip (see :func:`frame_cosines`).
AGREEMENT_MIN_COSINE = 0.999


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
    bf16_agrees : bool
        Whether the teacher's embeddings at ``"bf16"`` agree with those at ``"fp32"``: a
        per-frame cosine of at least :data:`AGREEMENT_MIN_COSINE` on every frame of the
        agreement tests (``tests/test_teacher_precision.py``, which also fail when it is False
        but the embeddings agree). ``"auto"`` picks bf16 only for a teacher where it is True.
    refused_precisions : mapping of str to str
        Precisions the teacher cannot run at, each with the reason; asking for one raises
        ValueError in ``__init__``.
    precision : str
        The precision the teacher runs its network at (see :meth:`choose_precision`). Its
        front end (spectrograms, framing) and whatever follows the network (projections,
        quantisation) stay float32, and so does every embedding :meth:`embed` returns. It does
        not enter the fingerprint: the agreement tests bound the difference it makes.
    """

    name: str
    sample_rate_hz: int
    hop_s: float | None
    dim: int
    min_duration_s: float = 0.0
    pad_below_s: float = 0.0
    output_version: int
    bf16_agrees: bool = False
    refused_precisions: ClassVar[Mapping[str, str]] = MappingProxyType({})
    precision: str = "fp32"
    device: torch.device

    def choose_precision(self, precision: str | None, device: str | torch.device) -> str:
        """The precision to run at, set as :attr:`precision` and returned; or a one-line refusal.

        Parameters
        ----------
        precision : {"bf16", "fp16", "fp32", "auto"} or None
            ``None``, ``""`` and ``"auto"`` give :func:`pipeline.devices.resolve_precision`'s
            default for ``device`` ("bf16" on a bf16-capable GPU), except that a teacher whose
            :attr:`bf16_agrees` is False, or that refuses bf16, runs at "fp32" instead.
        device : str or torch.device
            The device the network runs on.

        Returns
        -------
        str
            One of :data:`pipeline.devices.PRECISIONS`.

        Raises
        ------
        ValueError
            For an unknown name, or a precision in :attr:`refused_precisions`; the message
            names the teacher, the precision and what to use instead.
        """
        if precision not in (None, "", AUTO, *PRECISIONS):
            raise ValueError(
                f"{self.name}: unknown precision {precision!r}; use one of "
                f"{', '.join(PRECISIONS)} or {AUTO}"
            )
        chosen = resolve_precision(precision, device)
        if precision in (None, "", AUTO) and (
            not self.bf16_agrees or chosen in self.refused_precisions
        ):
            chosen = "fp32"
        if chosen in self.refused_precisions:
            usable = [p for p in PRECISIONS if p not in self.refused_precisions]
            raise ValueError(
                f"{self.name} cannot run at precision {chosen} "
                f"({self.refused_precisions[chosen]}); use {' or '.join(usable)} instead"
            )
        self.precision = chosen
        return chosen

    def autocast(self) -> contextlib.AbstractContextManager[None]:
        """Context in which the teacher's network runs: autocast at :attr:`precision` on
        :attr:`device` (none at "fp32")."""
        return autocast(self.precision, self.device)

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


def option_bool(name: str, value: bool | int | str) -> bool:
    """A teacher's boolean option, also from its text form (``-o center=false``).

    Parameters
    ----------
    name : str
        The option, for the error message.
    value : bool, int or str
        ``True``/``False``, 1/0, or one of "true", "1", "yes", "on", "false", "0", "no", "off"
        (any case, surrounding spaces ignored).

    Returns
    -------
    bool

    Raises
    ------
    ValueError
        For any other value.
    """
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("true", "1", "yes", "on"):
        return True
    if text in ("false", "0", "no", "off"):
        return False
    raise ValueError(f"{name} must be true or false, got {value!r}")


def keep_float32(module: nn.Module, device: str | torch.device) -> nn.Module:
    """Make ``module`` (a spectrogram layer inside a network) compute in float32 under autocast.

    Its ``forward`` is wrapped in place, so its parameters and buffers keep their names in the
    network's state dict; outside autocast nothing changes.

    Parameters
    ----------
    module : nn.Module
        A module whose inputs are float32.
    device : str or torch.device
        The device it runs on (autocast is switched off for that device's type).

    Returns
    -------
    nn.Module
        ``module`` itself.
    """
    forward: Callable[..., Any] = module.forward
    device_type = torch.device(device).type

    def float32_forward(*args: Any, **kwargs: Any) -> Any:
        with torch.autocast(device_type, enabled=False):
            return forward(*args, **kwargs)

    module.forward = float32_forward  # type: ignore[method-assign]
    return module


def frame_cosines(
    reference: Sequence[np.ndarray], other: Sequence[np.ndarray], shift: Any = None
) -> np.ndarray:
    """Cosine similarity of each frame of ``other`` with the same frame of ``reference``.

    Parameters
    ----------
    reference, other : sequence of np.ndarray
        One (n_frames, dim) array per clip each, of equal shapes (e.g. a teacher's embeddings
        at fp32 and at bf16).
    shift : float or array of shape (dim,), optional
        Subtracted from both first: the fingerprint's ``load_shift``, so that the embeddings
        are compared as training sees them (an offset common to both would hide differences).

    Returns
    -------
    np.ndarray
        (total frames,) float64 cosines, clip after clip; a pair of zero frames counts as 1.
    """
    cosines = []
    for a, b in zip(reference, other, strict=True):
        if a.shape != b.shape:
            raise ValueError(f"frames of shape {a.shape} and {b.shape} cannot be compared")
        a = np.asarray(a, np.float64) - (0.0 if shift is None else np.asarray(shift, np.float64))
        b = np.asarray(b, np.float64) - (0.0 if shift is None else np.asarray(shift, np.float64))
        norms = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
        dots = (a * b).sum(axis=1)
        both_zero = (norms == 0) & ~(a.any(axis=1) | b.any(axis=1))
        cosines.append(np.where(both_zero, 1.0, dots / np.where(norms > 0, norms, 1.0)))
    return np.concatenate(cosines) if cosines else np.zeros(0)
