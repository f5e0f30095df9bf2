"""Which device a command runs on when the user does not say: the one copy of that rule."""

from __future__ import annotations

import torch


def resolve_device(device: str | torch.device | None = None) -> torch.device:
    """``device`` as a :class:`torch.device`; ``None`` or ``""``: CUDA if there is one, else CPU."""
    return torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
