"""T1: what one training step of the paper's students costs, under bf16 autocast ÷ in float32.

Each case is a student as the paper trains it (batch 16, whole clips, the EAsT distance-correlation
objective against a PaSST-sized teacher sequence with the official time factors, Adam, gradient
clipping), timed on random inputs after a warm-up, float32 and bf16 autocast side by side on the
same model size. The ratio is bf16 clips/s ÷ float32 clips/s (a report: above 1 means autocast
helps). The details carry ms per step and what the paper's step count takes at that rate.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from pipeline.bench import BenchContext, Figure, device_name, measure_cases
from pipeline.evaluate.paper import training_step_seconds
from pipeline.students import count_parameters, create_student, on_device

BATCH = 16
WARMUP_STEPS = 20
FULL_STEPS = 200  # timed steps at scale 1


@dataclass(frozen=True)
class Case:
    """One student of T1, with the input and teacher sizes and the step count the paper used."""

    id: str
    student: str
    n_classes: int
    n_mels: int
    frames: int
    teacher_frames: int
    time_factors: tuple[int, int]
    paper_steps: int


CASES = (
    Case("T1-cp_resnet", "cp_resnet", 20, 128, 1000, 10, (1, 6), 80_000),  # OpenMIC, PaSST
    Case("T1-mobile_fcn", "mobile_fcn", 50, 96, 1455, 30, (2, 1), 100_000),  # MTAT, PaSST
)


def step_seconds(case: Case, *, device: str, bf16: bool, steps: int, warmup: int) -> float:
    """Seconds per training step of ``case`` (total over ``steps`` ÷ steps).

    Parameters
    ----------
    case : Case
    device : str -- torch device
    bf16 : bool -- under bf16 autocast, else float32
    steps : int >= 1 -- timed steps
    warmup : int >= 0 -- untimed steps first

    Returns
    -------
    float -- seconds per step.
    """
    dev = torch.device(device)
    torch.manual_seed(0)
    model = on_device(
        create_student(case.student, n_classes=case.n_classes, n_mels=case.n_mels), dev
    )
    return training_step_seconds(
        model,
        n_classes=case.n_classes,
        n_mels=case.n_mels,
        frames=case.frames,
        batch_size=BATCH,
        device=dev,
        teacher_frames=case.teacher_frames,
        time_factors=case.time_factors,
        bf16=bf16,
        steps=steps,
        warmup=warmup,
    )


def measure(ctx: BenchContext, case: Case) -> Figure:
    """Time ``case``'s step in float32 and under bf16 autocast.

    Parameters
    ----------
    ctx : BenchContext -- ``scale`` sets the steps (200 at scale 1, at least 2)
    case : Case

    Returns
    -------
    Figure -- the row ``case.id``: bf16 clips/s ÷ float32 clips/s.
    """
    steps = max(2, round(FULL_STEPS * ctx.scale))
    warmup = max(1, round(WARMUP_STEPS * min(ctx.scale, 1.0)))
    seconds = {
        mode: step_seconds(case, device=ctx.device, bf16=mode == "bf16", steps=steps, warmup=warmup)
        for mode in ("fp32", "bf16")
    }
    rate = {mode: BATCH / s for mode, s in seconds.items()}
    parameters = count_parameters(
        create_student(case.student, n_classes=case.n_classes, n_mels=case.n_mels)
    )
    return Figure(
        id=case.id,
        what=f"{case.student} training step (batch {BATCH}, {case.n_mels}×{case.frames}), "
        "bf16 autocast ÷ float32",
        ratio=rate["bf16"] / rate["fp32"],
        target="report",
        numerator=f"{rate['bf16']:.1f} clips/s",
        denominator=f"{rate['fp32']:.1f} clips/s",
        details={
            "parameters": parameters,
            "timed_steps": steps,
            "ms_per_step": {m: round(s * 1000, 2) for m, s in seconds.items()},
            "paper_steps": case.paper_steps,
            "hours_for_paper_steps_fp32": round(seconds["fp32"] * case.paper_steps / 3600, 2),
        },
        device=device_name(ctx.device),
    )


def run(ctx: BenchContext) -> list[Figure]:
    """T1 for each student that ``ctx`` asks for; a failing case becomes an error row.

    Parameters
    ----------
    ctx : BenchContext

    Returns
    -------
    list of Figure
    """
    return measure_cases(ctx, CASES, measure, lambda case: f"{case.student} training step")
