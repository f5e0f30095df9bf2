"""A trained run read back for inference: its checkpoint, its student and its mel front end.

    trained = load_student("data/runs/openmic/cp_resnet-panns-1a2b3c4d", device="cpu")
    trained.model, trained.frontend, trained.classes, trained.mel_frames

A run folder holds ``best.pt`` (``{"model": state_dict, "config": resolved training config}``)
and ``stores.json``, the fingerprints of the stores it was trained on. The mel front end's
recorded fingerprint is compared with the current one: a front end that now computes other
spectrograms gives :class:`FrontEndChangedWarning`. :func:`pipeline.inference.predict.load_run`
wraps the result into a :class:`~pipeline.inference.predict.Predictor`.
"""

from __future__ import annotations

import json
import logging
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from pipeline.devices import resolve_device
from pipeline.extract.frontends import MelFrontEnd, create_frontend
from pipeline.paths import mel_store_name
from pipeline.stores import read_store
from pipeline.stores.fingerprint import fingerprint_diff
from pipeline.students import Student, create_student

__all__ = [
    "CHECKPOINT_NAME",
    "FrontEndChangedWarning",
    "RunError",
    "TrainedStudent",
    "check_frontend",
    "checkpoint_path",
    "load_student",
    "mel_frames_from_store",
    "mel_store_entry",
]

log = logging.getLogger(__name__)

CHECKPOINT_NAME = "best.pt"


class RunError(ValueError):
    """A checkpoint that cannot be turned into a predictor (missing keys, wrong shapes)."""


class FrontEndChangedWarning(UserWarning):
    """The mel front end now computes other spectrograms than the ones the run was trained on."""


@dataclass(frozen=True)
class TrainedStudent:
    """What a predictor is made of, as read from a run.

    Attributes
    ----------
    model : the student with its trained weights, in eval mode, on the requested device
    frontend : the run's mel front end, on the same device
    classes : names of the student's outputs, in output order
    mel_frames : frames of every training item
    config : the run's resolved training config
    """

    model: Student
    frontend: MelFrontEnd
    classes: Sequence[str]
    mel_frames: int
    config: dict[str, Any]


def checkpoint_path(run: Path) -> Path:
    """The checkpoint of a run folder (its ``best.pt``), or ``run`` itself when it is a file.

    Parameters
    ----------
    run : run folder or checkpoint file

    Returns
    -------
    Path -- an existing file

    Raises
    ------
    FileNotFoundError
        When there is no checkpoint there; the message says how to train the run.
    """
    path = run / CHECKPOINT_NAME if run.is_dir() else run
    if not path.is_file():
        dataset = run.parent.name if run.is_dir() and run.parent.parent.name == "runs" else "..."
        raise FileNotFoundError(
            f"no checkpoint at {path}: train it first with `make train DATASET={dataset} ...`"
        )
    return path


def mel_store_entry(stores: dict[str, Any], frontend: str) -> tuple[str, dict[str, Any]] | None:
    """The ``stores.json`` entry of the run's mel store (by name, else by the recorded front end).

    Parameters
    ----------
    stores : the run's ``stores.json``: store path → ``{"fingerprint": {...}, ...}``
    frontend : the front end preset, e.g. ``"mobile_fcn"``

    Returns
    -------
    tuple[str, dict] or None -- (store path, its entry); ``None`` when no entry is the mel store
    """
    name = f"{mel_store_name(frontend)}.zarr"
    for key, entry in stores.items():
        if Path(key).name == name:
            return key, entry
    for key, entry in stores.items():
        if entry.get("fingerprint", {}).get("frontend") == frontend:
            return key, entry
    return None


def _is_code_or_version(key: str) -> bool:
    return key == "code" or key.endswith("version")


def check_frontend(
    recorded: dict[str, Any], frontend: MelFrontEnd, where: Path, *, stacklevel: int = 1
) -> None:
    """Warn when the front end differs from the training one in anything but code or versions.

    Parameters
    ----------
    recorded : the mel store's fingerprint recorded at training time
    frontend : the front end as built now
    where : the run folder, named in the message
    stacklevel : frame the :class:`FrontEndChangedWarning` points to; 1 is the caller of this
        function, 2 its caller, and so on

    Returns
    -------
    None -- code or library version drift alone is only logged (level INFO)
    """
    current = frontend.fingerprint()
    changed = [
        line
        for line in fingerprint_diff(recorded, current)
        if not _is_code_or_version(line.split(":", 1)[0])
    ]
    if changed:
        keys = [line.split(":", 1)[0] for line in changed]
        warnings.warn(
            f"{where}: front end {frontend.preset!r} changed since training in "
            f"{', '.join(keys)} ({'; '.join(changed)}); predictions may be off",
            FrontEndChangedWarning,
            stacklevel=stacklevel + 1,
        )
    else:
        drift = fingerprint_diff(recorded, current)
        if drift:
            log.info("%s: front end code or versions changed since training: %s", where, drift)


def mel_frames_from_store(entry: tuple[str, dict[str, Any]] | None, checkpoint: Path) -> int:
    """Runs trained before ``mel_frames`` entered the config: the mel store's ``max_frames``.

    Parameters
    ----------
    entry : the run's mel store entry (:func:`mel_store_entry`), or ``None``
    checkpoint : the checkpoint file, named in the error

    Returns
    -------
    int -- frames of every training item

    Raises
    ------
    RunError
        When the store is not recorded or cannot be read.
    """
    if entry is not None and Path(entry[0]).exists():
        return read_store(entry[0], require_complete=False).max_frames
    raise RunError(
        f"{checkpoint}: the config has no mel_frames and the run's mel store "
        f"({entry[0] if entry else 'not recorded'}) cannot be read to recover it"
    )


def load_student(
    run: str | os.PathLike, *, device: str | torch.device | None = None, stacklevel: int = 1
) -> TrainedStudent:
    """The student, front end, classes and window length of a run.

    Parameters
    ----------
    run : run folder (its ``best.pt``) or checkpoint file
    device : where the student and the front end run (default:
        :func:`pipeline.devices.resolve_device`, CUDA if available, else CPU)
    stacklevel : frame a :class:`FrontEndChangedWarning` points to; 1 is the caller of this
        function

    Returns
    -------
    TrainedStudent -- warns with :class:`FrontEndChangedWarning` when the run's ``stores.json``
    records a mel front end that differs from the current one in anything but code or library
    versions

    Raises
    ------
    FileNotFoundError
        When there is no checkpoint.
    RunError
        When the checkpoint is not a student's or its weights do not fit the student.
    """
    path = checkpoint_path(Path(run))
    device = resolve_device(device)
    checkpoint = torch.load(path, map_location=device, weights_only=True)
    if not isinstance(checkpoint, dict) or not {"model", "config"} <= set(checkpoint):
        raise RunError(f"{path}: not a student checkpoint (expected 'model' and 'config' entries)")
    config = dict(checkpoint["config"])
    missing = [k for k in ("student", "frontend", "classes") if k not in config]
    if missing:
        raise RunError(f"{path}: the checkpoint's config lacks {', '.join(missing)}")

    frontend = create_frontend(config["frontend"], device=device)
    stores_json = path.parent / "stores.json"
    entry = None
    if stores_json.is_file():
        entry = mel_store_entry(json.loads(stores_json.read_text()), frontend.preset)
        if entry is not None and "fingerprint" in entry[1]:
            check_frontend(
                entry[1]["fingerprint"], frontend, path.parent, stacklevel=stacklevel + 1
            )

    n_mels = int(config.get("n_mels", frontend.dim))
    if "mel_frames" in config:
        mel_frames = int(config["mel_frames"])
    else:
        mel_frames = mel_frames_from_store(entry, path)
    model = create_student(
        config["student"],
        n_classes=len(config["classes"]),
        n_mels=n_mels,
        **dict(config.get("student_options") or {}),
    )
    try:
        model.load_state_dict(checkpoint["model"])
    except RuntimeError as err:
        raise RunError(f"{path}: weights do not fit student {config['student']!r}: {err}") from None
    model = model.to(device).eval()
    return TrainedStudent(model, frontend, config["classes"], mel_frames, config)
