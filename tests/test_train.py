"""Stage two end to end on the rendered demo dataset, with the real musicnn teacher's store.

Trains for a few epochs on 192 clips: the loss falls and validation mAP clears the
label-frequency baseline; the same seed gives the same metrics; a SIGKILL'd run started again
ends exactly where an uninterrupted one does; no teacher code is imported while training.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from command_line import pipeline_command, run_cli, run_metrics, sibling_data_dir

from pipeline.train.config import train_config
from pipeline.train.loop import train

pytestmark = pytest.mark.slow

CLIPS = 192


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    data = tmp_path_factory.mktemp("data")
    run_cli(data, "data", "demo", "--clips", str(CLIPS))
    run_cli(data, "mels", "demo", "--frontend", "mobile_fcn", "--quiet")
    run_cli(data, "extract", "demo", "musicnn", "--quiet")
    return data


BASELINE = {"teacher": "none", "max_epochs": 6, "workers": 0}


@pytest.fixture(scope="module")
def baseline(data_dir: Path):
    return train(train_config("demo", **BASELINE), data_dir, progress=False)


def test_training_lowers_the_loss_and_beats_label_frequency(baseline) -> None:
    metrics = run_metrics(baseline.run_dir)
    summary = json.loads((baseline.run_dir / "train.json").read_text())
    assert len(metrics) == 6
    assert metrics["train_total"].iloc[-1] < 0.8 * metrics["train_total"].iloc[0]
    chance = summary["label_frequency_valid_map"]
    print(f"best valid mAP {baseline.best_valid_map:.3f}, label frequency {chance:.3f}")
    assert baseline.best_valid_map > chance + 0.15
    for name in ("config.json", "stores.json", "last.pt", "best.pt", "metrics.csv"):
        assert (baseline.run_dir / name).is_file()
    assert list((baseline.run_dir / "tb").glob("events.out.tfevents.*"))
    best = torch.load(baseline.run_dir / "best.pt", weights_only=True)
    assert best["epoch"] == summary["best_epoch"]
    assert best["config"]["classes"] and best["config"]["frontend"] == "mobile_fcn"


def test_trained_student_tags_new_rendered_audio(baseline, tmp_path: Path) -> None:
    import soundfile as sf

    from pipeline.data.datasets.demo import render_instruments
    from pipeline.inference.predict import load_run

    solos = ["piano", "drums", "flute", "trumpet"]
    paths = []
    for k, instrument in enumerate(solos):
        # Seeds the dataset does not use, and 25 s: several sliding windows per file.
        audio = render_instruments([instrument], duration_s=25, seed=90_000 + k)
        paths.append(tmp_path / f"{instrument}.wav")
        sf.write(paths[-1], audio, 32000)
    result = load_run(baseline.run_dir, device="cpu").predict_files(paths)
    assert not result.failures
    print(result.format_table(3))
    # A student trained for 6 epochs on 134 clips is weak, so ask for clearly better than
    # chance: the played instrument ranks, on average, in the top 4 of 18 tags (chance: 9.5).
    classes = list(result.table.columns[3:])
    ranks = []
    for path, instrument in zip(paths, solos, strict=True):
        row = result.table.loc[result.table["file"] == str(path), classes].iloc[0]
        ranks.append(1 + int((row > row[instrument]).sum()))
    assert sum(ranks) / len(ranks) <= 4.0, dict(zip(solos, ranks, strict=True))


def test_finished_run_is_not_trained_again(data_dir: Path, baseline) -> None:
    before = (baseline.run_dir / "last.pt").stat().st_mtime_ns
    again = train(train_config("demo", **BASELINE), data_dir, progress=False)
    assert again.run_dir == baseline.run_dir and again.resumed_from == -1
    assert (baseline.run_dir / "last.pt").stat().st_mtime_ns == before


def test_same_seed_gives_identical_metrics(data_dir: Path, baseline, tmp_path: Path) -> None:
    other = train(
        train_config("demo", **BASELINE),
        sibling_data_dir(data_dir, tmp_path / "data"),
        progress=False,
    )
    assert other.run_dir.name == baseline.run_dir.name
    pd.testing.assert_frame_equal(run_metrics(other.run_dir), run_metrics(baseline.run_dir))


def test_east_kd_trains_with_teacher_terms_and_a_probe(data_dir: Path) -> None:
    cfg = train_config("demo", teacher="musicnn", kd=True, max_epochs=2, workers=0)
    result = train(cfg, data_dir, progress=False)
    metrics = run_metrics(result.run_dir)
    assert {"train_bce", "train_dc", "train_kd", "train_reg"} <= set(metrics.columns)
    assert metrics["train_dc"].between(0, 1).all()
    config = json.loads((result.run_dir / "config.json").read_text())
    assert config["lam"] == 0.5 and config["kd"] is True  # the demo preset's λ
    stores = json.loads((result.run_dir / "stores.json").read_text())
    assert any(s["fingerprint"].get("teacher") == "musicnn" for s in stores.values())
    probe = json.loads((result.run_dir / "probe-musicnn.json").read_text())
    assert probe["valid_map"] > 0.3
    # Validation computes the whole objective (KD included); its total drives the schedule.
    assert {"valid_bce", "valid_dc", "valid_kd", "valid_reg"} <= set(metrics.columns)
    lam = config["lam"]
    np.testing.assert_allclose(
        metrics["valid_loss"], (1 - lam) * metrics["valid_bce"] + lam * metrics["valid_reg"]
    )
    np.testing.assert_allclose(
        metrics["valid_reg"], 0.3 * metrics["valid_kd"] + 0.7 * metrics["valid_dc"]
    )


def test_max_steps_ends_a_run_inside_an_epoch_without_validating_it(data_dir: Path) -> None:
    cfg = train_config("demo", teacher="musicnn", max_steps=12, workers=0)
    result = train(cfg, data_dir, progress=False)
    metrics = run_metrics(result.run_dir)
    summary = json.loads((result.run_dir / "train.json").read_text())
    steps_per_epoch = metrics["step"].iloc[0]
    assert steps_per_epoch < 12 < 2 * steps_per_epoch  # the second epoch is cut
    assert len(metrics) == 1 and summary["epochs"] == 1 and result.epochs == 1
    assert (summary["steps"], summary["stopped_by"]) == (12, "max_steps")


def test_several_teachers_each_get_a_term(data_dir: Path) -> None:
    store = data_dir / "cache" / "demo" / "musicnn.zarr"
    (store.parent / "musicnn-again.zarr").symlink_to(store)
    cfg = train_config("demo", teacher="musicnn+musicnn-again", max_epochs=1, workers=0)
    result = train(cfg, data_dir, progress=False)
    metrics = run_metrics(result.run_dir)
    # The same embeddings twice: both terms are equal and equal to their mean.
    assert metrics["train_dc/0"].iloc[0] == pytest.approx(metrics["train_dc/1"].iloc[0])
    assert metrics["train_dc"].iloc[0] == pytest.approx(metrics["train_dc/0"].iloc[0])
    assert result.run_dir.name.startswith("cp_resnet-musicnn+musicnn-again-")


def test_sigkill_then_rerun_ends_with_the_uninterrupted_metrics(
    data_dir: Path, tmp_path: Path
) -> None:
    settings = ["teacher=musicnn", "max_epochs=4"]
    reference = train(
        train_config("demo", teacher="musicnn", max_epochs=4, workers=0), data_dir, progress=False
    )
    killed_dir = sibling_data_dir(data_dir, tmp_path / "data")
    run_dir = killed_dir / "runs" / "demo" / reference.run_dir.name
    proc = subprocess.Popen(
        pipeline_command(killed_dir, "train", "demo", *settings, "--workers", "2", "-q"),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline and proc.poll() is None:
        if (run_dir / "metrics.csv").is_file():
            break
        time.sleep(0.01)
    time.sleep(1.0)  # into the second epoch
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (run_dir / "train.json").exists(), "the kill should land mid-run"
    epochs_before = len(pd.read_csv(run_dir / "metrics.csv"))
    assert 1 <= epochs_before < 4

    out = run_cli(killed_dir, "train", "demo", *settings, "--workers", "2", "-q")
    assert f"resuming after epoch {epochs_before}" in out.stdout
    pd.testing.assert_frame_equal(run_metrics(run_dir), run_metrics(reference.run_dir))
    resumed = torch.load(run_dir / "best.pt", weights_only=True)["model"]
    uninterrupted = torch.load(reference.run_dir / "best.pt", weights_only=True)["model"]
    for name, tensor in uninterrupted.items():
        assert torch.equal(resumed[name], tensor), name
    assert not list(run_dir.glob("*.partial"))


def test_training_imports_no_teacher_code(data_dir: Path, tmp_path: Path) -> None:
    script = textwrap.dedent(
        f"""
        import sys
        from pipeline.train.config import train_config
        from pipeline.train.loop import train
        train(train_config("demo", teacher="musicnn", kd=True, max_epochs=1, workers=2),
              {str(sibling_data_dir(data_dir, tmp_path / "data"))!r}, progress=False)
        banned = ("pipeline.teachers", "pipeline.extract.local", "musicnn", "panns_inference",
                  "_pipeline_panns_inference", "torchvggish", "torchopenl3", "openl3",
                  "hear21passt")
        print("IMPORTED", sorted(m for m in sys.modules if m.split(".")[0] in banned
                                 or m.startswith(banned)))
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=600, check=True
    )
    assert "IMPORTED []" in out.stdout, out.stdout


def test_missing_teacher_store_names_the_command(data_dir: Path) -> None:
    out = run_cli(data_dir, "train", "demo", "teacher=panns", expect=None)
    assert out.returncode == 2
    assert "panns.zarr" in out.stderr and "make extract" in out.stderr


def test_a_run_shorter_than_an_epoch_has_no_best_and_evaluation_leaves_it_out(
    data_dir: Path, tmp_path: Path, capsys
) -> None:
    from pipeline.evaluate.evaluation import evaluate_all

    other = sibling_data_dir(data_dir, tmp_path / "data")
    result = train(train_config("demo", teacher="none", max_steps=1, workers=0), other)
    summary = json.loads((result.run_dir / "train.json").read_text())
    assert summary["best_epoch"] == 0 and summary["best_valid_map"] is None
    assert not (result.run_dir / "best.pt").exists()
    assert "no epoch was validated (max_steps 1 ends inside the first epoch" in (
        capsys.readouterr().out
    )
    assert evaluate_all(other, "demo", probes=False) == [
        f"{result.run_dir}: left out, no validated epoch (no best.pt)"
    ]


def test_device_cache_trains_exactly_as_streaming(data_dir: Path, tmp_path: Path) -> None:
    settings = {
        "teacher": "musicnn",
        "max_epochs": 1,
        "workers": 0,
        "mixup_alpha": 0.3,
        "student_options": {"base_channels": 8},  # a small student: the loaders are under test
    }
    streamed = train(
        train_config("demo", **settings, cache_on_device="off"), data_dir, progress=False
    )
    cached = train(
        train_config("demo", **settings, cache_on_device="on"),
        sibling_data_dir(data_dir, tmp_path / "data"),
        progress=False,
    )
    assert cached.run_dir.name == streamed.run_dir.name
    pd.testing.assert_frame_equal(run_metrics(cached.run_dir), run_metrics(streamed.run_dir))


def test_bf16_run_autocasts_the_student_and_keeps_losses_and_weights_float32(
    data_dir: Path, monkeypatch
) -> None:
    from pipeline.train import loop, steps

    seen: dict[str, set] = {"conv": set(), "loss": set(), "total": set()}
    real_student, real_loss = loop.create_student, steps.east_loss

    def student(*args, **kwargs):
        model = real_student(*args, **kwargs)
        convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
        convs[-1].register_forward_hook(lambda m, i, out: seen["conv"].add(out.dtype))
        return model

    def loss(logits, labels, mask, features, teachers, **kwargs):
        seen["loss"].update({logits.dtype, features.dtype, *(t.dtype for t in teachers)})
        total, logs = real_loss(logits, labels, mask, features, teachers, **kwargs)
        seen["total"].add(total.dtype)
        return total, logs

    monkeypatch.setattr(loop, "create_student", student)
    monkeypatch.setattr(steps, "east_loss", loss)
    # bfloat16 on a CPU without native support is slow: a small student.
    small = {"base_channels": 8}
    settings = {"teacher": "musicnn", "max_epochs": 1, "workers": 0, "student_options": small}
    cfg = train_config("demo", **settings, precision="bf16")
    assert cfg.run_name() != train_config("demo", **settings).run_name()
    result = train(cfg, data_dir, progress=False)
    assert seen == {"conv": {torch.bfloat16}, "loss": {torch.float32}, "total": {torch.float32}}
    config = json.loads((result.run_dir / "config.json").read_text())
    assert config["precision"] == "bf16"
    metrics = run_metrics(result.run_dir)
    assert np.isfinite(metrics.select_dtypes("number").to_numpy()).all()
    for name in ("best.pt", "last.pt"):
        weights = torch.load(result.run_dir / name, weights_only=True)["model"]
        assert all(t.dtype == torch.float32 for t in weights.values() if t.is_floating_point())


def test_fp16_run_scales_gradients_and_keeps_the_scale_for_a_resume(data_dir: Path) -> None:
    cfg = train_config(
        "demo",
        teacher="none",
        max_epochs=1,
        workers=0,
        precision="fp16",
        student_options={"base_channels": 8},
    )
    result = train(cfg, data_dir, progress=False)
    state = torch.load(result.run_dir / "last.pt", weights_only=True)["state"]
    assert state["grad_scaler"]["scale"] > 0
    assert json.loads((result.run_dir / "config.json").read_text())["precision"] == "fp16"
    assert np.isfinite(run_metrics(result.run_dir)["train_total"]).all()
