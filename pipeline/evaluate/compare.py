"""``make compare``: the arms of a comparison over seeds (× label fractions × λ), trained where
missing, evaluated, and compared with their uncertainty in the report.

The arms are the student without a teacher, EAsT with the teacher(s) and EAsT-KD, each with
``seeds`` seeds (the config's seed, then the next ones: ``seeds=5`` after ``seeds=3`` trains
seeds 4 and 5 only, since finished runs are found by their configuration and reused). Label
fractions and λ values multiply the arms. Training goes through :func:`pipeline.train.loop.train`
one run after the other, so ``torchrun`` and a GPU work as for one run.

:func:`compare_stage` is the whole of ``make compare``; :func:`report_stage` is ``make report``,
the report of every run of a dataset with the same comparison of arms.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from pipeline.devices import resolve_device
from pipeline.evaluate.arms import compare_runs
from pipeline.evaluate.comparison_report import comparison_text
from pipeline.evaluate.evaluation import evaluate_all
from pipeline.evaluate.report import collect_runs, comparison_table, write_report
from pipeline.paths import runs_path
from pipeline.train.config import ConfigError, TrainConfig, train_config
from pipeline.train.distributed import process_device, process_group, processes_from_env
from pipeline.train.loop import train

# Settings a comparison sets itself, and the options that set them instead.
SET_BY_COMPARISON = {
    "teacher": "the TEACHER argument",
    "lam": "--lambdas (LAMBDAS=)",
    "kd": "--no-kd (KD=0)",
    "label_fraction": "--label-fractions (LABEL_FRACTIONS=)",
    "seeds": "--seeds (SEEDS=)",
    "preset": "--preset",
    "teachers": "--teachers (make paper)",
}


def check_settings(settings: Mapping[str, Any]) -> None:
    """Refuse settings that a comparison varies itself, naming the option to use instead.

    Raises
    ------
    ConfigError
    """
    clashes = [f"{k} (use {SET_BY_COMPARISON[k]})" for k in settings if k in SET_BY_COMPARISON]
    if clashes:
        raise ConfigError("a comparison sets these itself: " + "; ".join(clashes))


def comparison_configs(
    dataset: str,
    *,
    teacher: str,
    seeds: int = 3,
    label_fractions: Sequence[float] = (1.0,),
    lambdas: Sequence[float | None] = (None,),
    kd: bool = True,
    preset: str | None = None,
    **settings: Any,
) -> list[TrainConfig]:
    """The training configs of a comparison, baseline first within each fraction and seed.

    Parameters
    ----------
    dataset : manifest name
    teacher : teacher store name(s), ``+``-joined for several teachers in one arm
    seeds : number of seeds per arm: the preset's (or ``settings``') seed and the next ones
    label_fractions : fractions of labelled training clips, each in (0, 1]
    lambdas : λ values of the teacher arms; ``None`` = the preset's or the paper's
    kd : add the EAsT-KD arm
    preset, settings : as :func:`pipeline.train.config.train_config` (``teacher``, ``lam``, ``kd``,
        ``seed`` and ``label_fraction`` are set here)

    Raises
    ------
    ConfigError
        For an invalid setting, a fraction outside (0, 1] or a teacher of ``none``.
    """
    check_settings(settings)
    if seeds < 1:
        raise ConfigError(f"seeds must be ≥ 1, not {seeds}")
    if teacher in ("", "none"):
        raise ConfigError("a comparison needs a teacher (the baseline arm is added by itself)")
    first = train_config(dataset, preset=preset, **settings)
    configs = []
    for fraction in label_fractions:
        for k in range(seeds):
            common = {**settings, "seed": first.seed + k, "label_fraction": float(fraction)}
            configs.append(train_config(dataset, preset=preset, **common, teacher="none"))
            for lam in lambdas:
                arm = {**common, "teacher": teacher, "lam": lam}
                configs.append(train_config(dataset, preset=preset, **arm))
                if kd:
                    configs.append(train_config(dataset, preset=preset, **arm, kd=True))
    return configs


def run_comparison(
    data_dir: str | os.PathLike,
    configs: Sequence[TrainConfig],
    *,
    device: str | None = None,
    progress: bool = True,
    say: Callable[[str], None] = print,
) -> str:
    """Train the runs of ``configs`` that are not finished, evaluate, write the report.

    Returns the comparison's tables (markdown) for printing; under ``torchrun`` the
    processes other than the first train and return an empty string.
    """
    data_dir = Path(data_dir)
    procs = processes_from_env()
    # With several processes, one process group for all the runs.
    device_of_runs = process_device(procs, resolve_device(configs[0].device))
    with process_group(procs, device_of_runs):
        for i, cfg in enumerate(configs, 1):
            arm = "no teacher" if not cfg.teachers else f"{cfg.teacher}{' KD' if cfg.kd else ''}"
            if procs.main:
                say(
                    f"[{i}/{len(configs)}] {arm}, λ={cfg.regulariser_weight:g}, "
                    f"seed {cfg.seed}, label fraction {cfg.label_fraction:g}"
                )
            train(cfg, data_dir, progress=progress)
    if not procs.main:
        return ""
    dataset = configs[0].dataset
    for line in evaluate_all(data_dir, dataset, device=device):
        say(line)
    report = write_report(runs_path(data_dir, dataset), data_dir / "reports" / dataset)
    say(f"report: {report}")
    return comparison_text(compare_runs(runs_path(data_dir, dataset)))


def compare_stage(
    data_dir: str | os.PathLike,
    dataset: str,
    teacher: str,
    *,
    settings: Mapping[str, Any],
    seeds: int = 3,
    label_fractions: Sequence[float] = (1.0,),
    lambdas: Sequence[float] | None = None,
    kd: bool = True,
    preset: str | None = None,
    device: str | None = None,
    progress: bool = True,
    say: Callable[[str], None] = print,
) -> str:
    """``make compare``: build the mel store if needed, train the missing runs of the arms,
    evaluate them and write the report.

    Parameters
    ----------
    data_dir : path
        Root of everything generated.
    dataset, teacher, seeds, label_fractions, kd, preset :
        as for :func:`comparison_configs`
    settings : mapping
        Training settings (KEY=VALUE) other than those a comparison sets
        (:func:`check_settings`).
    lambdas : sequence of float, optional
        λ values of the teacher arms; None or empty: the preset's (or the paper's).
    device : str, optional
        Torch device of the evaluation; default: :func:`pipeline.devices.resolve_device`'s.
    progress : bool
        Show progress bars.
    say : callable
        Where the lines about progress go.

    Returns
    -------
    str
        The comparison's tables (markdown); "" on processes other than the first.
    """
    from pipeline.extract.mels import ensure_mel_store

    check_settings(settings)
    configs = comparison_configs(
        dataset,
        teacher=teacher,
        seeds=seeds,
        label_fractions=label_fractions,
        lambdas=lambdas or [None],
        kd=kd,
        preset=preset,
        **settings,
    )
    data_dir = Path(data_dir)
    ensure_mel_store(data_dir, configs[0].dataset, configs[0].frontend, progress=progress, say=say)
    return run_comparison(data_dir, configs, device=device, progress=progress, say=say)


def report_stage(data_dir: str | os.PathLike, dataset: str) -> str:
    """``make report``: write a dataset's report and return what to print of it.

    Parameters
    ----------
    data_dir : path
        Root of everything generated; the report goes to ``reports/<dataset>/``.
    dataset : str
        The dataset whose runs are compared.

    Returns
    -------
    str
        The table of runs (paths relative to the working folder), the comparison of arms if
        there is one, and the report's path.
    """
    data_dir = Path(data_dir)
    runs = runs_path(data_dir, dataset)
    if not runs.is_dir():
        raise FileNotFoundError(f"no runs for dataset {dataset!r} in {runs}: train first")
    out = write_report(runs, data_dir / "reports" / dataset)
    parts = [comparison_table(collect_runs(runs), base=Path.cwd())]
    comparison = comparison_text(compare_runs(runs))
    if comparison:
        parts.append(comparison)
    parts.append(f"report: {out}")
    return "\n\n".join(parts)
