"""PR-<teacher>: a teacher's clips/s with its network at bf16 ÷ at fp32, and how far they agree.

One row per teacher that can be built here: musicnn and aisfx with the weights their wheels
carry; PANNs Cnn14, VGGish (raw network output, ``postprocess=False``: no PCA file needed),
OpenL3 and PaSST with random weights in each package's own format, written once under
``ctx.root/precision/`` (a benchmark of cost needs no trained weights, but the agreement figure
is then that of random weights). A HEAR module is named at run time with its own weights, so
"PR-hear" is a row saying it was not measured.

Each teacher embeds ``ctx.size(32, minimum=2)`` mono clips of 10 s (:func:`synth_clip`: noise
and tones, at the teacher's own rate) in batches of 8 clips, once untimed at each precision,
then ``ctx.repeats`` timed passes at each, the two precisions taking turns so that a change in
the machine's load hits both alike. The figure is median bf16 clips/s ÷ median fp32 clips/s,
reported without a target ("report": on a CPU without native bfloat16 it is below 1, on a
recent GPU above). Details add both rates and the least per-frame cosine similarity between the
bf16 and fp32 embeddings of the same clips (after the fingerprint's ``load_shift``), next to the
bar :data:`~pipeline.teachers.base.AGREEMENT_MIN_COSINE` and the teacher's ``bf16_agrees``.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from pipeline.bench import BenchContext, Figure, device_name, measure_cases
from pipeline.bench.corpus import synth_clip
from pipeline.bench.teachers import random_cnn14_weights
from pipeline.fileio import atomic_path
from pipeline.teachers import Teacher, create_teacher
from pipeline.teachers.base import AGREEMENT_MIN_COSINE, frame_cosines

FULL_CLIPS = 32
MIN_CLIPS = 2
BATCH_SIZE = 8
CLIP_S = 10.0
PRECISIONS = ("fp32", "bf16")
WHAT = "clips/s of the teacher with its network at bf16 ÷ at fp32 (autocast), same clips"
HEAR_SKIPPED = (
    "a HEAR module is named at run time (hear:<module>) with its own weights file; the "
    "benchmark has none to run"
)


@dataclass(frozen=True)
class Case:
    """One row: figure ``id``, the ``teacher``, ``"wheel"`` or ``"random"`` weights, and the
    teacher's further keyword ``options``."""

    id: str
    teacher: str
    weights: str
    options: dict[str, Any] = field(default_factory=dict)


CASES = (
    Case("PR-musicnn", "musicnn", "wheel"),
    Case("PR-aisfx", "aisfx", "wheel"),
    Case("PR-panns", "panns", "random"),
    Case("PR-vggish", "vggish", "random", {"postprocess": False}),
    Case("PR-openl3", "openl3", "random"),
    Case("PR-passt", "passt", "random"),
)


def _he_initialised(network: nn.Module) -> nn.Module:
    """``network`` with He-initialised convolutions and linear layers: with PyTorch's default
    initialisation VGGish's activations die out by its last layer, every embedding zero."""
    for module in network.modules():
        if isinstance(module, nn.Conv2d | nn.Linear):
            nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
    return network


def _random_network(teacher: str) -> tuple[str, Callable[[], nn.Module]]:
    """The file name ``teacher``'s loader expects, and a builder of its network (random weights)."""
    if teacher == "vggish":
        from pipeline.teachers.vggish import WEIGHTS_FILE, build_vggish

        return WEIGHTS_FILE, lambda: _he_initialised(build_vggish())
    if teacher == "openl3":
        from pipeline.teachers.openl3 import build_openl3, weights_filename

        variant = ("mel128", "music", 512)  # the teacher's defaults
        return weights_filename(*variant), lambda: build_openl3(*variant)
    if teacher == "passt":
        from pipeline.teachers.passt import WEIGHTS_FILE, build_passt

        return WEIGHTS_FILE, build_passt
    raise ValueError(f"no random weights for the teacher {teacher!r}")


def random_weights(teacher: str, folder: Path, seed: int = 0) -> Path:
    """A weights file of ``teacher`` with random weights, in its package's format, written once.

    Parameters
    ----------
    teacher : str -- "panns", "vggish", "openl3" or "passt"
    folder : Path -- where the files go (one subfolder per teacher, created if missing)
    seed : int -- torch seed of the initialisation

    Returns
    -------
    Path -- the file, reused when already there.
    """
    if teacher == "panns":
        return random_cnn14_weights(folder / teacher, seed)
    filename, build = _random_network(teacher)
    path = folder / teacher / filename
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        with torch.random.fork_rng(), atomic_path(path) as tmp:
            torch.manual_seed(seed)
            torch.save(build().state_dict(), tmp)
    return path


def build_teacher(ctx: BenchContext, case: Case) -> Teacher:
    """The case's teacher on ``ctx.device``, at fp32.

    Parameters
    ----------
    ctx : BenchContext -- ``device``, and ``root`` for random weights
    case : Case

    Returns
    -------
    Teacher
    """
    weights = (
        random_weights(case.teacher, ctx.root / "precision") if case.weights == "random" else None
    )
    return create_teacher(case.teacher, weights=weights, device=ctx.device, **case.options)


def timed_pass(teacher: Teacher, batches: list[list[np.ndarray]]) -> tuple[float, list[np.ndarray]]:
    """Seconds to embed every batch, and the embeddings (one (frames, dim) array per clip).

    Parameters
    ----------
    teacher : Teacher -- at the precision to time
    batches : list of list of np.ndarray -- mono clips at the teacher's rate

    Returns
    -------
    seconds : float
    embeddings : list of np.ndarray
    """
    if teacher.device.type == "cuda":
        torch.cuda.synchronize(teacher.device)
    started = time.perf_counter()
    embeddings = [e for batch in batches for e in teacher.embed(batch)]
    return time.perf_counter() - started, embeddings


def measure(ctx: BenchContext, case: Case) -> Figure:
    """One teacher's row.

    Parameters
    ----------
    ctx : BenchContext
    case : Case

    Returns
    -------
    Figure -- id ``case.id``, ratio bf16 clips/s ÷ fp32 clips/s, target "report"
    """
    teacher = build_teacher(ctx, case)
    n_clips = ctx.size(FULL_CLIPS, minimum=MIN_CLIPS)
    clips = [synth_clip(seed, CLIP_S, teacher.sample_rate_hz)[:, 0] for seed in range(n_clips)]
    batches = [clips[i : i + BATCH_SIZE] for i in range(0, n_clips, BATCH_SIZE)]
    times: dict[str, list[float]] = {p: [] for p in PRECISIONS}
    outputs: dict[str, list[np.ndarray]] = {}
    for precision in PRECISIONS:  # untimed: first calls set up kernels and caches
        teacher.choose_precision(precision, ctx.device)
        _, outputs[precision] = timed_pass(teacher, batches)
    for _ in range(ctx.repeats):
        for precision in PRECISIONS:
            teacher.choose_precision(precision, ctx.device)
            seconds, _ = timed_pass(teacher, batches)
            times[precision].append(seconds)
    rates = {p: n_clips / statistics.median(times[p]) for p in PRECISIONS}
    shift = teacher.fingerprint().get("load_shift")
    least = float(frame_cosines(outputs["fp32"], outputs["bf16"], shift).min())
    return Figure(
        id=case.id,
        what=WHAT,
        ratio=rates["bf16"] / rates["fp32"],
        target="report",
        numerator=f"{rates['bf16']:.2f} clips/s at bf16",
        denominator=f"{rates['fp32']:.2f} clips/s at fp32",
        details={
            "teacher": case.teacher,
            "weights": case.weights,
            "options": case.options,
            "clips": n_clips,
            "clip_s": CLIP_S,
            "batch_size": BATCH_SIZE,
            "bf16_clips_per_s": rates["bf16"],
            "fp32_clips_per_s": rates["fp32"],
            "bf16_s": times["bf16"],
            "fp32_s": times["fp32"],
            "min_cosine": least,
            "agreement_bar": AGREEMENT_MIN_COSINE,
            "bf16_agrees": teacher.bf16_agrees,
        },
        device=device_name(ctx.device),
    )


def run(ctx: BenchContext) -> list[Figure]:
    """The rows ``ctx`` asks for, in the order of :data:`CASES`, then "PR-hear" (not measured).

    Parameters
    ----------
    ctx : BenchContext

    Returns
    -------
    list of Figure -- a case that fails (missing wheel weights, …) becomes an error row.
    """
    figures = measure_cases(ctx, CASES, measure, lambda case: f"{WHAT} ({case.teacher})")
    if ctx.wants("PR-hear"):
        figures.append(
            Figure(
                id="PR-hear",
                what=WHAT,
                ratio=None,
                target="report",
                numerator="not measured",
                details={"skipped": HEAR_SKIPPED},
                device=device_name(ctx.device),
            )
        )
    return figures
