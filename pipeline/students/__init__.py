"""Student registry: the small classifiers trained on log-mels with the EAsT regulariser.

Each student lives in one self-contained file of this package and registers its builder with
``@STUDENTS.register``; the student's name is the file name (``cp_resnet.py`` → ``cp_resnet``).
Every student maps a batch of log-mel spectrograms to logits and
to the feature sequence the embedding-distance regulariser acts on::

    model = create_student("cp_resnet", n_classes=20, n_mels=128)
    logits, features = model(mel)   # mel (N, n_mels, T) → (N, n_classes), (N, T_s, C)

``features`` is the output of the last conv stage averaged over frequency, with time kept;
``C == model.feature_dim`` and ``T_s == model.frames_out(T)``.
"""

from __future__ import annotations

import inspect
from abc import abstractmethod
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from pipeline.registry import Registry

StudentBuilder = Callable[..., "Student"]

# Model files are imported lazily by ``create_student``: listing students imports none.
STUDENTS: Registry[StudentBuilder] = Registry("student", __name__)


class Student(nn.Module):
    """What every student offers.

    Attributes
    ----------
    n_classes : int
        Width of the logits.
    n_mels : int
        Mel bands the input must have.
    feature_dim : int
        Channels C of the feature sequence returned next to the logits.
    """

    n_classes: int
    n_mels: int
    feature_dim: int

    @abstractmethod
    def forward_features(self, mel: torch.Tensor) -> torch.Tensor:
        """(N, n_mels, T) log-mels → (N, T_s, feature_dim) last-stage features."""

    @abstractmethod
    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        """(N, T_s, feature_dim) features → (N, n_classes) logits (no sigmoid)."""

    @abstractmethod
    def frames_out(self, n_frames: int) -> int:
        """Feature frames T_s for an input of ``n_frames`` mel frames."""

    def forward(self, mel: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits and last-stage features of a batch of log-mels.

        Parameters
        ----------
        mel : torch.Tensor, shape (N, n_mels, T)
            Log-mel spectrograms.

        Returns
        -------
        logits : torch.Tensor, shape (N, n_classes)
            No sigmoid applied.
        features : torch.Tensor, shape (N, T_s, feature_dim)
            ``T_s == self.frames_out(T)``; what the embedding-distance regulariser acts on.

        Raises
        ------
        ValueError
            If ``mel`` is not 3-D with ``n_mels`` bands.
        """
        if mel.ndim != 3 or mel.shape[1] != self.n_mels:
            raise ValueError(
                f"{type(self).__name__}: expected mel of shape (N, {self.n_mels}, T), "
                f"got {tuple(mel.shape)}"
            )
        features = self.forward_features(mel)
        return self.forward_head(features), features


def list_students() -> list[str]:
    """The students' names, sorted, without importing their modules.

    Returns
    -------
    list of str
        Names accepted by :func:`create_student`.
    """
    return STUDENTS.names()


# Keywords every builder takes; a student's own options are the others.
COMMON_ARGUMENTS = frozenset({"n_classes", "n_mels"})


def student_options(name: str) -> dict[str, Any]:
    """A student's own options and their defaults, read from its builder's signature.

    A builder that forwards ``**kwargs`` to a model class (its return annotation) takes the
    keywords of that class's constructor; ``n_classes`` and ``n_mels`` are not options.

    Parameters
    ----------
    name : str
        A name from :func:`list_students`.

    Returns
    -------
    dict
        Option name → default value (``inspect.Parameter.empty`` where there is none), in the
        order of the signature.

    Raises
    ------
    ValueError
        If ``name`` is not a student.
    """
    signature = inspect.signature(STUDENTS.get(name), eval_str=True)
    forwards = any(p.kind is p.VAR_KEYWORD for p in signature.parameters.values())
    if forwards and inspect.isclass(signature.return_annotation):
        signature = inspect.signature(signature.return_annotation)
    keywords = (inspect.Parameter.KEYWORD_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    return {
        p.name: p.default
        for p in signature.parameters.values()
        if p.kind in keywords and p.name not in COMMON_ARGUMENTS
    }


def create_student(name: str, *, n_classes: int, n_mels: int, **options: Any) -> Student:
    """Build a registered student; ``None``-valued options are dropped so defaults apply.

    Parameters
    ----------
    name : str
        A name from :func:`list_students`.
    n_classes : int
        Width of the logits.
    n_mels : int
        Mel bands of the input.
    **options
        The student's own options (e.g. ``rho`` and ``base_channels`` of ``cp_resnet``).

    Returns
    -------
    Student
        A freshly initialised model.

    Raises
    ------
    ValueError
        If ``name`` is not a student (the message lists the choices) or an option is invalid.
    """
    kwargs = {k: v for k, v in options.items() if v is not None}
    return STUDENTS.get(name)(n_classes=n_classes, n_mels=n_mels, **kwargs)


def count_parameters(model: nn.Module) -> int:
    """Trainable parameters (buffers such as BatchNorm running statistics excluded).

    Parameters
    ----------
    model : nn.Module
        Any model.

    Returns
    -------
    int
        Elements of the parameters with ``requires_grad``.
    """
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def on_device(model: Student, device: torch.device) -> Student:
    """``model`` moved to ``device``; on CUDA its 4-d weights in ``channels_last`` layout.

    Convolutions on CUDA's tensor cores run faster on channels-last tensors, and a convolution
    whose weight has that layout gives its output in it too, so the whole network follows. The
    values are the same; checkpoints load into a model of either layout.

    Parameters
    ----------
    model : Student
        Moved in place.
    device : torch.device
        Where it goes.

    Returns
    -------
    Student
        ``model``.
    """
    model = model.to(device)
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    return model
