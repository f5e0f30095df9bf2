"""R2: training SIGKILLed at random moments, then resumed: the metrics and best.pt of an
uninterrupted run with the same seed."""

from __future__ import annotations

import json
import shutil
import time

import numpy as np
import pandas as pd
import pytest
import torch
from command_line import pipeline_command, run_cli, run_metrics, sibling_data_dir
from harness import SEED, kill_figures, kill_repeatedly, temporary_files

EPOCHS = 10


@pytest.mark.torture
def test_r2_torture_killed_training_ends_as_an_uninterrupted_run(tmp_path, reliability_figures):
    """(The fast version is tests/test_train.py::test_sigkill_then_rerun_ends_with_the_
    uninterrupted_metrics: one kill.) Three or more kills at random moments, the killed runs
    with a loader worker process, the uninterrupted one without."""
    data = tmp_path / "data"
    run_cli(data, "data", "demo", "--clips", "64")
    run_cli(data, "extract", "demo", "musicnn", "--quiet")
    run_cli(data, "mels", "demo", "--frontend", "mobile_fcn", "--quiet")
    settings = ["train", "demo", "teacher=musicnn", f"max_epochs={EPOCHS}", "-q"]
    started = time.perf_counter()
    run_cli(sibling_data_dir(data, tmp_path / "uninterrupted"), *settings, "--workers", "0")
    seconds = time.perf_counter() - started
    [reference] = (tmp_path / "uninterrupted" / "runs" / "demo").iterdir()

    killed = sibling_data_dir(data, tmp_path / "killed")
    run_dir = killed / "runs" / "demo" / reference.name

    def epochs() -> int:
        metrics = run_dir / "metrics.csv"
        return len(pd.read_csv(metrics)) if metrics.is_file() else 0

    def restart() -> None:  # a run that ended before its kill: check it, start afresh
        pd.testing.assert_frame_equal(run_metrics(run_dir), run_metrics(reference))
        shutil.rmtree(run_dir)

    attempts = kill_repeatedly(
        f"R2: {EPOCHS} epochs",
        pipeline_command(killed, *settings, "--workers", "1"),
        kills=4,
        duration_s=seconds,
        finished=lambda: (run_dir / "train.json").exists(),
        restart=restart,
        progress=lambda: f"{epochs()}/{EPOCHS} epochs done",
        rng=np.random.default_rng([SEED, 10]),
        log=tmp_path / "train.log",
    )
    run_cli(killed, *settings, "--workers", "1")
    pd.testing.assert_frame_equal(run_metrics(run_dir), run_metrics(reference))
    resumed = torch.load(run_dir / "best.pt", weights_only=True)
    uninterrupted = torch.load(reference / "best.pt", weights_only=True)
    assert resumed["epoch"] == uninterrupted["epoch"]
    for name, tensor in uninterrupted["model"].items():
        assert torch.equal(resumed["model"][name], tensor), name
    assert (
        json.loads((run_dir / "train.json").read_text())["best_valid_map"]
        == json.loads((reference / "train.json").read_text())["best_valid_map"]
    )
    assert not temporary_files(run_dir)
    reliability_figures.append(
        kill_figures(f"R2 training ({EPOCHS} epochs, 64 clips, seed {SEED})", attempts)
    )
