"""Finding and reading teachers' published weights, and checking what a file holds.

Nothing is ever downloaded: a missing file raises :class:`MissingWeightsError` with where it
was looked for and how to fetch it on a machine with internet.
"""

from __future__ import annotations

import io
import os
import zipfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch


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
