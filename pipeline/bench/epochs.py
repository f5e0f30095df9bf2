"""Training epochs as the benchmarks time them, and the FLOPs that bound their time.

:func:`epoch_runner` trains a student for one pass with the step of
:func:`pipeline.train.steps.train_one_epoch`, whatever the batches come from (stores or a teacher
run on the fly); :func:`flops_per_clip` counts what a teacher's forward and a student's training
step cost per clip, the floor under each side's time that no data path can remove.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode
from tqdm.auto import tqdm

from pipeline.students import Student
from pipeline.teachers import Teacher
from pipeline.train.config import TrainConfig
from pipeline.train.steps import train_one_epoch


def epoch_runner(
    model: Student,
    optimizer: torch.optim.Optimizer,
    cfg: TrainConfig,
    batches: Callable[[], Iterable[dict[str, Any]]],
    device: torch.device,
) -> Callable[[], None]:
    """A function that trains ``model`` for one pass over ``batches()`` with stage two's step.

    Parameters
    ----------
    model : Student -- on ``device``; trained in place
    optimizer : torch.optim.Optimizer -- over ``model``'s parameters
    cfg : TrainConfig -- loss, regulariser weight and seed of the step
    batches : callable -- returns a fresh iterable of batches for each epoch
    device : torch.device -- where the step runs; CUDA work is waited for before returning

    Returns
    -------
    callable -- runs one epoch per call.
    """
    generator = torch.Generator().manual_seed(cfg.seed)

    def run_epoch() -> None:
        with tqdm(disable=True) as bar:
            train_one_epoch(model, batches(), optimizer, cfg, [], generator, device, bar)
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    return run_epoch


def flops_per_clip(
    teacher: Teacher, model: Student, mel_frames: int, clip_s: float
) -> dict[str, float]:
    """GFLOP per clip of the teacher's forward and of the student's forward + backward.

    Counted by torch's FlopCounterMode (convolutions and matrix products; the rest is small):
    the floor under each side's time that no data path can remove.

    Parameters
    ----------
    teacher : Teacher -- run on ``clip_s`` seconds of silence
    model : Student -- copied, then run on zero mels (n_mels, mel_frames) in training mode
    mel_frames : int -- mel frames per clip
    clip_s : float -- clip length in seconds

    Returns
    -------
    dict -- ``teacher_forward`` and ``student_step``, GFLOP per clip.
    """
    wave = np.zeros(int(clip_s * teacher.sample_rate_hz), dtype=np.float32)
    with FlopCounterMode(display=False) as counter:
        teacher.embed([wave])
    teacher_gflop = counter.get_total_flops() / 1e9
    student = copy.deepcopy(model).train()
    device = next(student.parameters()).device
    mel = torch.zeros(2, student.n_mels, mel_frames, device=device)  # 2: BatchNorm trains
    with FlopCounterMode(display=False) as counter:
        logits, features = student(mel)
        (logits.sum() + features.sum()).backward()
    return {"teacher_forward": teacher_gflop, "student_step": counter.get_total_flops() / 2e9}
