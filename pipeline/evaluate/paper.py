"""``make paper``: the paper's whole table for OpenMIC or MagnaTagATune, with seeds and intervals.

For each of the paper's four teachers (VGGish, OpenL3, PaSST, PANNs): the teacher's linear
probe, EAsT and EAsT-KD; and the student without a teacher once — all through the comparison
machinery (:mod:`pipeline.evaluate.compare`), so every arm gets its seeds, its 95 % interval and its
paired difference to the baseline. Before training starts, :func:`estimate_hours` times a few
training steps of the preset's student on the device and prints what the plan costs at most.
Afterwards :func:`paper_table` puts the published figures beside ours.

The published figures (Ding & Lerch, ISMIR 2023): test mAP / PR-AUC for PaSST only, validation
figures for all four teachers from the official checkpoint names. Our validation column is the
mean over seeds of each run's best validation mAP, which is how those checkpoints were chosen.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from pipeline.data.manifest import Manifest
from pipeline.devices import autocast, resolve_device
from pipeline.evaluate.arms import Context, Row, compare_runs
from pipeline.fileio import write_text
from pipeline.paths import locate_store, manifest_path, mel_store_name, runs_path
from pipeline.stores import read_store
from pipeline.students import create_student
from pipeline.train.config import ConfigError, TrainConfig
from pipeline.train.losses import east_loss

PAPER_TEACHERS = ("vggish", "openl3", "passt", "panns")

# (arm, teacher) → published value; arms "probe", "east", "kd". MTAT's metric is PR-AUC, which
# is our mAP (macro average precision over the 50 tags).
PUBLISHED: dict[str, dict[str, dict[tuple[str, str], float]]] = {
    "openmic": {
        "valid": {
            ("probe", "vggish"): 0.817,
            ("probe", "openl3"): 0.808,
            ("probe", "passt"): 0.865,
            ("probe", "panns"): 0.865,
            ("east", "vggish"): 0.854,
            ("east", "openl3"): 0.851,
            ("east", "passt"): 0.864,
            ("east", "panns"): 0.860,
            ("kd", "vggish"): 0.857,
            ("kd", "openl3"): 0.847,
        },
        "test": {("east", "passt"): 0.847, ("kd", "passt"): 0.852},
    },
    "magnatagatune": {
        "valid": {
            ("probe", "vggish"): 0.414,
            ("probe", "openl3"): 0.417,
            ("probe", "passt"): 0.464,
            ("probe", "panns"): 0.442,
            ("east", "vggish"): 0.451,
            ("east", "openl3"): 0.448,
            ("east", "passt"): 0.466,
            ("east", "panns"): 0.450,
        },
        "test": {("east", "passt"): 0.459, ("kd", "passt"): 0.461},
    },
}
TIMED_STEPS = 5
TEACHER_FRAMES, TEACHER_DIM = 10, 768  # a PaSST-sized teacher sequence for the timing


def paper_configs(
    dataset: str,
    *,
    seeds: int,
    teachers: Sequence[str] = PAPER_TEACHERS,
    **settings: object,
) -> list[TrainConfig]:
    """Every training run of the paper's table: per seed the baseline once, then EAsT and
    EAsT-KD per teacher (:func:`pipeline.evaluate.compare.comparison_configs`, duplicates
    dropped)."""
    from pipeline.evaluate.compare import comparison_configs

    if dataset not in PUBLISHED:
        raise ConfigError(f"make paper needs openmic or magnatagatune, not {dataset!r}")
    configs: dict[str, TrainConfig] = {}
    for teacher in teachers:
        for cfg in comparison_configs(dataset, teacher=teacher, seeds=seeds, **settings):
            configs.setdefault(cfg.digest(), cfg)
    return sorted(configs.values(), key=lambda c: (c.seed, bool(c.teachers), c.teacher, c.kd))


def training_step_seconds(
    model: torch.nn.Module,
    *,
    n_classes: int,
    n_mels: int,
    frames: int,
    batch_size: int,
    device: torch.device,
    teacher_frames: int = TEACHER_FRAMES,
    time_factors: tuple[int, int] | None = None,
    bf16: bool = False,
    steps: int = TIMED_STEPS,
    warmup: int = 1,
) -> float:
    """Seconds per training step of ``model`` on random inputs of the given shape.

    A step as stage two takes it: forward (under bf16 autocast if asked), the EAsT objective
    against a PaSST-sized teacher sequence of ``teacher_frames`` frames, backward, gradient
    clipping, Adam. Timed over ``steps`` steps after ``warmup`` (CUDA synchronised).
    """
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4, weight_decay=1e-4)
    mel = torch.randn(batch_size, n_mels, frames, device=device)
    teacher = torch.randn(batch_size, teacher_frames, TEACHER_DIM, device=device)
    labels = (torch.rand(batch_size, n_classes, device=device) > 0.8).float()
    mask = torch.ones_like(labels, dtype=torch.bool)

    def step() -> None:
        with autocast("bf16" if bf16 else "fp32", device):
            logits, features = model(mel)
        loss, _ = east_loss(
            logits.float(),
            labels,
            mask,
            features.float(),
            [teacher],
            lam=0.9,
            time_factors=[time_factors],
        )
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()

    for _ in range(warmup):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    started = time.perf_counter()
    for _ in range(steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return (time.perf_counter() - started) / steps


def estimate_hours(
    data_dir: str | os.PathLike, configs: Sequence[TrainConfig]
) -> tuple[float, str]:
    """Upper bound of the training time of the runs not yet finished, in hours, and a line
    saying how it was reached (early stopping usually ends runs sooner)."""
    from pipeline.train.checkpoints import run_dir_for

    data_dir = Path(data_dir)
    todo = [c for c in configs if not (run_dir_for(c, data_dir) / "train.json").is_file()]
    if not todo:
        return 0.0, "every run of the table is trained already"
    cfg = todo[0]
    manifest = Manifest.read(manifest_path(data_dir, cfg.dataset))
    mels = read_store(locate_store(data_dir, cfg.dataset, mel_store_name(cfg.frontend)))
    device = resolve_device(cfg.device)
    torch.manual_seed(0)
    n_classes = len(manifest.classes)
    model = create_student(
        cfg.student, n_classes=n_classes, n_mels=mels.dim, **cfg.student_options
    ).to(device)
    seconds = training_step_seconds(
        model,
        n_classes=n_classes,
        n_mels=mels.dim,
        frames=mels.max_frames,
        batch_size=cfg.batch_size,
        device=device,
    )
    per_epoch = max(1, len(manifest.split("train")) // cfg.batch_size)
    limits = [n for n in (cfg.max_steps, cfg.max_epochs and cfg.max_epochs * per_epoch) if n]
    steps = min(limits)
    hours = len(todo) * steps * seconds / 3600
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else "the CPU"
    line = (
        f"{len(todo)} runs to train × at most {steps:,} steps × {seconds * 1000:.0f} ms a step "
        f"({cfg.student}, batch {cfg.batch_size}, measured on {where}) = at most "
        f"{hours:.1f} hours; early stopping usually ends runs sooner"
    )
    return hours, line


def _arm_key(row: Row) -> tuple[str, str]:
    kind = {"probe": "probe", "baseline": "baseline"}.get(row.arm.kind)
    return (kind or ("kd" if row.arm.kd else "east"), row.arm.teacher)


def _valid_map(row: Row) -> float:
    values = []
    for folder in row.arm.folders.values():
        if row.arm.kind == "probe":
            value = json.loads((folder / "config.json").read_text()).get("probe_valid_map")
        else:
            value = json.loads((folder / "train.json").read_text()).get("best_valid_map")
        if value is not None:
            values.append(float(value))
    return sum(values) / len(values) if values else math.nan


def _fmt(value: float | None) -> str:
    return "–" if value is None or not math.isfinite(value) else f"{value:.3f}"


def _shared_runs(context: Context, runs: set[str]) -> int:
    return sum(f.name in runs for row in context.rows for f in row.arm.folders.values())


def paper_table(dataset: str, contexts: list[Context], runs: set[str] | None = None) -> str:
    """Markdown: per arm our test mAP with its interval and our validation mAP, the published
    figures beside them, and ours − published (test where published, else validation).

    The table shows the context holding most of the run folders named in ``runs`` (the runs of
    this table; other runs of the dataset may share the folder), else the first one with every
    label.
    """
    published = PUBLISHED[dataset]
    metric = "PR-AUC (= mAP)" if dataset == "magnatagatune" else "mAP"
    full = [c for c in contexts if c.label_fraction == 1.0]
    if runs:
        full.sort(
            key=lambda c: -sum(f.name in runs for r in c.rows for f in r.arm.folders.values())
        )
    context = full[0] if full else None
    if context is None:
        return "No evaluated runs with all labels yet."
    lines = [
        f"| arm | seeds | ours: test {metric} [95 % CI] | ours: valid | paper: valid | "
        "paper: test | ours − paper |",
        "|---|--:|--:|--:|--:|--:|--:|",
    ]
    for row in context.rows:
        key = _arm_key(row)
        ours_test, ours_valid = row.result.map, _valid_map(row)
        paper_valid, paper_test = published["valid"].get(key), published["test"].get(key)
        if paper_test is not None:
            gap = f"{ours_test.mean - paper_test:+.3f} (test)"
        elif paper_valid is not None and math.isfinite(ours_valid):
            gap = f"{ours_valid - paper_valid:+.3f} (valid)"
        else:
            gap = "–"
        lines.append(
            f"| {row.arm.label} | {ours_test.seeds} | {ours_test.mean:.3f} "
            f"[{ours_test.low:.3f}, {ours_test.high:.3f}] | {_fmt(ours_valid)} | "
            f"{_fmt(paper_valid)} | {_fmt(paper_test)} | {gap} |"
        )
    return "\n".join(lines)


def write_paper_table(
    data_dir: str | os.PathLike, dataset: str, configs: Sequence[TrainConfig]
) -> tuple[Path, str]:
    """``data/reports/<dataset>/paper.md`` from the evaluated runs of ``configs``; returns its
    path and text."""
    from pipeline.train.checkpoints import run_dir_for

    data_dir = Path(data_dir)
    runs = {run_dir_for(c, data_dir).name for c in configs}
    contexts = compare_runs(runs_path(data_dir, dataset))
    text = (
        f"# The paper's table on {dataset}: ours beside the published figures\n\n"
        + paper_table(dataset, contexts, runs)
        + "\n\nPublished: Ding & Lerch, ISMIR 2023 (test: PaSST only; validation: the official "
        "checkpoints' names). Ours: mean over seeds; the interval covers seeds and test clips.\n"
    )
    out = write_text(Path(data_dir) / "reports" / dataset / "paper.md", text)
    return out, text


def paper_stage(
    data_dir: str | os.PathLike,
    dataset: str,
    *,
    settings: Mapping[str, Any],
    seeds: int = 3,
    teachers: Sequence[str] | None = None,
    preset: str | None = None,
    device: str | None = None,
    estimate_only: bool = False,
    progress: bool = True,
    say: Callable[[str], None] = print,
) -> str:
    """``make paper``: build the mel store if needed, say what training the table costs, train
    and evaluate its missing runs and write the table beside the published figures.

    Parameters
    ----------
    data_dir : path
        Root of everything generated.
    dataset : str
        ``openmic`` or ``magnatagatune``.
    settings : mapping
        Training settings (KEY=VALUE) other than those a comparison sets
        (:func:`pipeline.evaluate.compare.check_settings`).
    seeds : int
        Seeds per arm.
    teachers : sequence of str, optional
        A subset of :data:`PAPER_TEACHERS`; default: all four.
    preset : str, optional
        Hyper-parameter preset; default: the dataset's.
    device : str, optional
        Torch device of the evaluation; default: :func:`pipeline.devices.resolve_device`'s.
    estimate_only : bool
        Stop after saying the estimate of the training time.
    progress : bool
        Show progress bars.
    say : callable
        Where the lines about progress go.

    Returns
    -------
    str
        The table (markdown) and its file's path; "" with ``estimate_only`` and on processes
        other than the first.
    """
    from pipeline.evaluate.compare import check_settings, run_comparison
    from pipeline.extract.mels import ensure_mel_store

    check_settings(settings)
    configs = paper_configs(
        dataset, seeds=seeds, teachers=teachers or PAPER_TEACHERS, preset=preset, **settings
    )
    data_dir = Path(data_dir)
    ensure_mel_store(data_dir, configs[0].dataset, configs[0].frontend, progress=progress, say=say)
    first_process = os.environ.get("RANK", "0") == "0"
    if first_process:
        _, line = estimate_hours(data_dir, configs)
        say(f"training plan: {line}")
    if estimate_only:
        return ""
    run_comparison(data_dir, configs, device=device, progress=progress, say=say)
    if not first_process:
        return ""
    out, text = write_paper_table(data_dir, dataset, configs)
    return f"{text}\n{out}"
