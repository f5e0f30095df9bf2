"""Teachers of the benchmarks: registered ones by name, and PANNs Cnn14 with random weights.

A benchmark that times a teacher needs its cost, not its accuracy: :func:`make_teacher` gives
Cnn14 ("panns") random weights saved once as a checkpoint, so no download is needed, and any
other registered teacher its real weights.
"""

from __future__ import annotations

from pathlib import Path

import torch

from pipeline.bench import BenchContext
from pipeline.fileio import atomic_path
from pipeline.teachers import Teacher, create_teacher


def random_cnn14_weights(folder: Path, seed: int = 0) -> Path:
    """A Cnn14 checkpoint (``{'model': state_dict}``) with random weights, written once.

    Parameters
    ----------
    folder : Path -- where the checkpoint goes (created if missing)
    seed : int -- torch seed of the initialisation

    Returns
    -------
    Path -- ``folder / f"cnn14-random-seed{seed}.pth"``, reused when already there.
    """
    from pipeline.teachers.panns import build_cnn14

    path = folder / f"cnn14-random-seed{seed}.pth"
    if not path.is_file():
        torch.manual_seed(seed)
        with atomic_path(path) as tmp:
            torch.save({"model": build_cnn14().state_dict()}, tmp)
    return path


def make_teacher(name: str, ctx: BenchContext) -> Teacher:
    """Teacher ``name`` on ``ctx.device``; "panns" is Cnn14 with random weights and its clip layer.

    Parameters
    ----------
    name : str -- "panns" or a registered teacher name
    ctx : BenchContext -- ``device``, and ``root`` for Cnn14's checkpoint (``on_the_fly/``)

    Returns
    -------
    Teacher
    """
    if name == "panns":
        weights = random_cnn14_weights(Path(ctx.root) / "on_the_fly")
        return create_teacher("panns", weights=weights, device=ctx.device, layer="clip")
    return create_teacher(name, device=ctx.device)
