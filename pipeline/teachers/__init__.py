"""Teachers: pre-trained audio models whose embeddings the students learn from.

Each teacher lives in one self-contained file of this package, named after it (``panns.py``
is the teacher ``panns``), on the interface of :class:`~pipeline.teachers.base.Teacher`::

    teacher = create_teacher("musicnn", device="cpu")
    [emb] = teacher.embed([waveform])        # (n_frames, teacher.dim) float32

Every teacher takes ``precision=`` ("fp32" by default, "bf16", "fp16" or "auto"): the arithmetic
of its network under autocast (:meth:`~pipeline.teachers.base.Teacher.choose_precision`); its
embeddings stay float32 and its fingerprint does not change.

Teachers run only in stage one (extraction); training reads their cached output. Listing them
imports none of them: some of their packages read files or start runtimes on import.
"""

from __future__ import annotations

import inspect
from typing import Any

from pipeline.fileio import file_sha256
from pipeline.teachers.base import HEAR_PREFIX, TEACHERS, Teacher, register_teacher
from pipeline.teachers.weights import (
    InvalidWeightsError,
    MissingWeightsError,
    describe,
    read_checkpoint,
    resolve_weights,
    state_problems,
)

__all__ = [
    "HEAR_PREFIX",
    "InvalidWeightsError",
    "MissingWeightsError",
    "Teacher",
    "check_teacher_name",
    "create_teacher",
    "describe",
    "file_sha256",
    "list_teachers",
    "read_checkpoint",
    "register_teacher",
    "resolve_weights",
    "state_problems",
]


def list_teachers() -> list[str]:
    """Registered teacher names, and ``hear:<module>`` for any HEAR-API module."""
    return [*TEACHERS.names(), f"{HEAR_PREFIX}<module>"]


def check_teacher_name(name: str) -> str:
    """``name`` if it names a teacher (``hear:`` needs a module name after it), else ValueError."""
    if name in TEACHERS.names():
        return name
    module = name.removeprefix(HEAR_PREFIX)
    if name.startswith(HEAR_PREFIX) and module and all(p.isidentifier() for p in module.split(".")):
        return name
    raise ValueError(f"unknown teacher {name!r}; choose one of {', '.join(list_teachers())}")


def create_teacher(name: str, **options: Any) -> Teacher:
    """Build a teacher by name.

    Parameters
    ----------
    name : a registered teacher (:func:`list_teachers`) or ``hear:<module>``
    **options : the teacher's keyword options; ``None`` values are dropped so defaults apply

    Returns
    -------
    Teacher

    Raises
    ------
    ValueError
        For an unknown teacher, or an option the teacher does not take (naming those it takes).
    """
    options = {k: v for k, v in options.items() if v is not None}
    if check_teacher_name(name).startswith(HEAR_PREFIX):
        from pipeline.teachers.hear import HearTeacher

        cls: type[Teacher] = HearTeacher
        options["module"] = name.removeprefix(HEAR_PREFIX)
    else:
        cls = TEACHERS.get(name)
    accepted = [p for p in inspect.signature(cls.__init__).parameters if p != "self"]
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise ValueError(
            f"teacher {name} has no option {', '.join(unknown)}; its options: "
            f"{', '.join(p for p in accepted if p != 'module')}"
        )
    return cls(**options)
