"""Where and in what arithmetic a command runs when the user does not say: one copy of each rule.

Device: CUDA when there is one, else the CPU. Precision: ``"bf16"`` on a CUDA device that
supports bfloat16, else ``"fp32"``. A precision other than ``"fp32"`` means *autocast*: the
networks' matrix products and convolutions run in the lower precision, while the parameters,
the losses, the metrics and every stored value stay float32 (callers cast outputs with
``.float()`` before using them).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

#: The precisions a user may ask for, and the autocast dtype of each (``None``: no autocast).
PRECISIONS: dict[str, torch.dtype | None] = {
    "bf16": torch.bfloat16,
    "fp16": torch.float16,
    "fp32": None,
}
AUTO = "auto"


def resolve_device(device: str | torch.device | None = None) -> torch.device:
    """``device`` as a :class:`torch.device`; ``None`` or ``""``: CUDA if there is one, else CPU."""
    return torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))


def resolve_precision(
    precision: str | None = None, device: str | torch.device | None = None
) -> str:
    """The precision to run at: ``precision`` checked, or the default for ``device``.

    Parameters
    ----------
    precision : {"bf16", "fp16", "fp32", "auto"} or None
        ``None``, ``""`` and ``"auto"`` choose ``"bf16"`` on a CUDA device that supports it and
        ``"fp32"`` anywhere else (bfloat16 on a CPU without native support is slower, not
        faster).
    device : str or torch.device or None
        As :func:`resolve_device`.

    Returns
    -------
    str
        One of :data:`PRECISIONS`.

    Raises
    ------
    ValueError
        For a name that is not a precision.
    """
    if precision in (None, "", AUTO):
        dev = resolve_device(device)
        capable = dev.type == "cuda" and torch.cuda.is_bf16_supported(including_emulation=False)
        return "bf16" if capable else "fp32"
    if precision not in PRECISIONS:
        raise ValueError(
            f"unknown precision {precision!r}: choose one of {', '.join(PRECISIONS)} or auto"
        )
    return str(precision)


@contextlib.contextmanager
def autocast(precision: str, device: str | torch.device) -> Iterator[None]:
    """Run the block under autocast at ``precision`` on ``device`` (``"fp32"``: no autocast).

    Parameters
    ----------
    precision : str
        A resolved precision (see :func:`resolve_precision`).
    device : str or torch.device
        The device the block's tensors are on.
    """
    dtype = PRECISIONS[resolve_precision(precision, device)]
    if dtype is None:
        yield
        return
    with torch.autocast(torch.device(device).type, dtype=dtype):
        yield
