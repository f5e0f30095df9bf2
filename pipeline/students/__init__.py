"""Student registry: the small classifiers trained on log-mels with the EAsT regulariser.

Each student lives in one self-contained file of this package and registers a builder with
``@register_student("name")``. Every student maps a batch of log-mel spectrograms to logits and
to the feature sequence the embedding-distance regulariser acts on::

    model = create_student("cp_resnet", n_classes=20, n_mels=128)
    logits, features = model(mel)   # mel (N, n_mels, T) → (N, n_classes), (N, T_s, C)

``features`` is the output of the last conv stage averaged over frequency, with time kept;
``C == model.feature_dim`` and ``T_s == model.frames_out(T)``.
"""

from __future__ import annotations

import importlib
from abc import abstractmethod
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

StudentBuilder = Callable[..., "Student"]

STUDENTS: dict[str, StudentBuilder] = {}

# Imported lazily by ``create_student`` so that listing students imports no model file.
_STUDENT_MODULES = {
    "cp_resnet": "cp_resnet",
    "mobile_fcn": "mobile_fcn",
    "mobilenet_v3": "mobilenet_v3",
}


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
        if mel.ndim != 3 or mel.shape[1] != self.n_mels:
            raise ValueError(
                f"{type(self).__name__}: expected mel of shape (N, {self.n_mels}, T), "
                f"got {tuple(mel.shape)}"
            )
        features = self.forward_features(mel)
        return self.forward_head(features), features


def register_student(name: str) -> Callable[[StudentBuilder], StudentBuilder]:
    def add(builder: StudentBuilder) -> StudentBuilder:
        STUDENTS[name] = builder
        return builder

    return add


def list_students() -> list[str]:
    return sorted(_STUDENT_MODULES)


def create_student(name: str, *, n_classes: int, n_mels: int, **options: Any) -> Student:
    """Build a registered student; ``None``-valued options are dropped so defaults apply."""
    if name not in _STUDENT_MODULES:
        raise ValueError(f"unknown student {name!r}; choose one of {', '.join(list_students())}")
    importlib.import_module(f"{__name__}.{_STUDENT_MODULES[name]}")
    kwargs = {k: v for k, v in options.items() if v is not None}
    return STUDENTS[name](n_classes=n_classes, n_mels=n_mels, **kwargs)


def count_parameters(model: nn.Module) -> int:
    """Trainable parameters (buffers such as BatchNorm running statistics excluded)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
