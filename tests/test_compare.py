"""Comparisons over seeds: arms from run folders (``pipeline.evaluate.arms``), their report
(``pipeline.evaluate.comparison_report``), the configs of ``make compare``
(``pipeline.evaluate.compare``) and, slow, the ``compare`` command end to end on a tiny rendered
demo dataset."""

from __future__ import annotations

import json
import os
import re
import time
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
from command_line import run_cli

import pipeline
from pipeline.evaluate.arms import collect_arms, compare_runs, context_title
from pipeline.evaluate.compare import check_settings, comparison_configs
from pipeline.evaluate.comparison_report import HEADER, comparison_json, verdict, write_comparison
from pipeline.evaluate.evaluation import probe_folder
from pipeline.evaluate.metrics import mean_average_precision
from pipeline.evaluate.report import write_report
from pipeline.evaluate.scoring import PREDICTIONS, load_predictions, save_predictions, score_report
from pipeline.train.config import RECIPE, ConfigError, train_config

CLASSES = ["bass", "drums", "piano", "voice"]
CLIPS = 60
BASE_SEED = train_config("demo").seed
SEEDS = (BASE_SEED, BASE_SEED + 1, BASE_SEED + 2)
FRACTIONS = (0.25, 1.0)
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

# Separation of positives from negatives per arm (scores = labels · d + noise): EAsT has a
# large planted advantage, EAsT-KD is the baseline's distribution with other noise.
D_BASELINE, D_EAST, D_KD, D_PROBE = 0.8, 3.0, 0.8, 1.5


# -- fake run folders --------------------------------------------------------------------------


def _labels(fraction: float) -> tuple[list[str], np.ndarray, np.ndarray]:
    """The test clips of one fraction's runs: ids, labels (every class has both kinds), mask."""
    rng = np.random.default_rng(int(fraction * 1000))
    labels = (rng.random((CLIPS, len(CLASSES))) < 0.35).astype(np.float32)
    labels[:3] = 1.0
    labels[3:6] = 0.0
    mask = rng.random((CLIPS, len(CLASSES))) < 0.9
    mask[:6] = True
    labels[~mask] = 0.0
    return [f"clip{k:03d}" for k in range(CLIPS)], labels, mask


def _scores(labels: np.ndarray, d: float, noise_seed: int) -> np.ndarray:
    noise = np.random.default_rng(noise_seed).normal(size=labels.shape)
    return 1.0 / (1.0 + np.exp(-(labels * d + noise - d / 2)))


def student_config(
    *,
    teacher: str,
    seed: int,
    fraction: float,
    kd: bool = False,
    lam: float | None = None,
    run: str,
    recipe: int = RECIPE,
    **settings,
) -> dict:
    """A config.json as training writes it (the same keys and resolved values)."""
    cfg = train_config(
        "demo",
        teacher=teacher,
        seed=seed,
        label_fraction=fraction,
        kd=kd,
        lam=lam,
        workers=0,
        **settings,
    )
    return {
        **cfg.as_dict(),
        "lam": cfg.regulariser_weight,
        "time_factors": list(cfg.time_factors),
        "probe_lrs": list(cfg.probe_lrs),
        "precision": cfg.resolved_precision,
        "run": run,
        "classes": CLASSES,
        "n_mels": 96,
        "mel_frames": 500,
        "pipeline_version": pipeline.__version__,
        "recipe": recipe,
        "labelled_train_clips": round(200 * fraction) + seed % 3,
    }


def make_student(
    runs: Path,
    *,
    teacher: str,
    seed: int,
    fraction: float,
    d: float,
    kd: bool = False,
    name: str | None = None,
    noise_seed: int | None = None,
    recipe: int = RECIPE,
    **settings,
) -> Path:
    """An evaluated student run folder: config.json and predictions.npz."""
    kind = f"{teacher}{'-kd' if kd else ''}"
    name = name or f"cp_resnet-{kind}-f{fraction:g}-s{seed}"
    folder = runs / name
    folder.mkdir(parents=True)
    config = student_config(
        teacher=teacher, seed=seed, fraction=fraction, kd=kd, run=name, recipe=recipe, **settings
    )
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    ids, labels, mask = _labels(fraction)
    if noise_seed is None:
        noise_seed = zlib.crc32(f"{kind} {seed} {fraction} {settings}".encode())
    _evaluated(folder, "student", ids, _scores(labels, d, noise_seed), labels, mask)
    return folder


def _evaluated(folder: Path, kind: str, ids, scores, labels, mask) -> None:
    """predictions.npz and metrics.json as evaluation writes them (test doubles as valid)."""
    save_predictions(folder, ids, scores, labels, mask)
    summary, per_class = score_report((scores, labels, mask), (scores, labels, mask))
    metrics = {"run": folder.name, "kind": kind, "split": "test", "clips": len(ids)}
    metrics |= {"classes": CLASSES, "summary": summary, "per_class": per_class}
    (folder / "metrics.json").write_text(json.dumps(metrics))


def make_probe(runs: Path, *, teacher: str, seed: int, fraction: float, d: float) -> Path:
    folder = runs / probe_folder(teacher, label_fraction=fraction, seed=seed)
    folder.mkdir(parents=True)
    config = {
        "kind": "probe",
        "recipe": RECIPE,
        "teacher": teacher,
        "seed": seed,
        "label_fraction": fraction,
        "frontend": "mobile_fcn",
        "parameters": 204,
        "train_seconds": 1.5,
        "probe_valid_map": 0.7,
        "probe_steps": 400,
        "probe_best_step": 300,
        "probe_stopped_early": True,
    }
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    ids, labels, mask = _labels(fraction)
    _evaluated(folder, "probe", ids, _scores(labels, d, 7_000 + seed), labels, mask)
    return folder


def make_comparison(runs: Path, fractions=FRACTIONS, seeds=SEEDS) -> Path:
    """Baseline, EAsT (planted advantage), EAsT-KD (no advantage) and the probe per seed and
    label fraction."""
    for fraction in fractions:
        for i, seed in enumerate(seeds):
            make_student(runs, teacher="none", seed=seed, fraction=fraction, d=D_BASELINE,
                         noise_seed=100 + i)  # fmt: skip
            make_student(runs, teacher="musicnn", seed=seed, fraction=fraction, d=D_EAST,
                         noise_seed=200 + i)  # fmt: skip
            make_student(runs, teacher="musicnn", kd=True, seed=seed, fraction=fraction,
                         d=D_KD, noise_seed=300 + i)  # fmt: skip
            make_probe(runs, teacher="musicnn", seed=seed, fraction=fraction, d=D_PROBE)
    (runs / "junk").mkdir()
    (runs / "junk" / "notes.txt").write_text("not a run")
    # Trained, not evaluated yet: no predictions, so in no arm.
    unevaluated = runs / "cp_resnet-none-unevaluated"
    unevaluated.mkdir()
    config = student_config(teacher="none", seed=99, fraction=1.0, run=unevaluated.name)
    (unevaluated / "config.json").write_text(json.dumps(config))
    return runs


@pytest.fixture
def runs_dir(tmp_path: Path) -> Path:
    return make_comparison(tmp_path / "runs" / "demo")


@pytest.fixture
def contexts(runs_dir: Path):
    return compare_runs(runs_dir, draws=300)


def _row(context, label: str):
    matches = [r for r in context.rows if r.arm.label == label]
    assert len(matches) == 1, [r.arm.label for r in context.rows]
    return matches[0]


# -- A: arms, contexts, intervals ----------------------------------------------------------------


def test_contexts_are_sorted_by_fraction_with_baseline_teacher_arms_and_probe(contexts) -> None:
    assert [c.label_fraction for c in contexts] == [0.25, 1.0]
    for context in contexts:
        assert [r.arm.kind for r in context.rows] == ["baseline", "teacher", "teacher", "probe"]
        assert [r.arm.label for r in context.rows] == [
            "no teacher",
            "EAsT musicnn λ=0.5",
            "EAsT-KD musicnn λ=0.5",
            "linear probe musicnn",
        ]
        assert context.classes == CLASSES and context.clips == CLIPS and context.note == ""
        for row in context.rows:
            assert row.arm.seeds == SEEDS
            assert row.arm.label_fraction == context.label_fraction
            assert row.result.map.seeds == 3
            assert (row.difference is None) == (row.arm.kind == "baseline")


def test_per_seed_map_is_the_map_of_that_seeds_saved_predictions(contexts) -> None:
    for context in contexts:
        for row in context.rows:
            assert sorted(row.result.per_seed) == list(SEEDS)
            for seed, value in row.result.per_seed.items():
                saved = load_predictions(row.arm.folders[seed])
                expected = mean_average_precision(saved["scores"], saved["labels"], saved["mask"])
                assert abs(value - expected) < 1e-12, (row.arm.label, seed)
                metrics = json.loads((row.arm.folders[seed] / "metrics.json").read_text())
                assert abs(value - metrics["summary"]["map"]) < 1e-12
            m = row.result.map
            assert m.mean == pytest.approx(np.mean(list(row.result.per_seed.values())), abs=1e-12)
            assert m.low < m.mean < m.high


def test_difference_pairs_the_seeds_of_arm_and_baseline(contexts) -> None:
    for context in contexts:
        baseline = _row(context, "no teacher")
        east = _row(context, "EAsT musicnn λ=0.5")
        diff = east.difference
        assert sorted(diff.per_seed) == list(SEEDS)
        for seed in SEEDS:
            assert diff.per_seed[seed] == pytest.approx(
                east.result.per_seed[seed] - baseline.result.per_seed[seed], abs=1e-12
            )
        assert diff.map.seeds == 3
        assert diff.map.mean == pytest.approx(np.mean(list(diff.per_seed.values())), abs=1e-12)
        assert len(diff.per_class) == len(CLASSES)


def test_planted_advantage_is_better_and_no_advantage_cannot_be_told_apart(contexts) -> None:
    for context in contexts:
        east = _row(context, "EAsT musicnn λ=0.5")
        assert east.difference.map.low > 0 and east.difference.map.excludes_zero
        assert east.difference.map.p < 0.05
        assert "better than no teacher" in verdict(east)
        kd = _row(context, "EAsT-KD musicnn λ=0.5")
        assert kd.difference.map.low < 0 < kd.difference.map.high
        assert "cannot be told apart" in verdict(kd)
        assert verdict(_row(context, "no teacher")) == "the reference"
        for row in context.rows:
            if row.difference is None:
                continue
            d = row.difference.map
            words = verdict(row)
            if d.low > 0:
                assert words.startswith("better")
            elif d.high < 0:
                assert words.startswith("worse")
            else:
                assert not d.excludes_zero and words.startswith("cannot be told apart")


def test_worse_arm_reads_worse(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    for i, seed in enumerate(SEEDS):
        make_student(runs, teacher="none", seed=seed, fraction=1.0, d=3.0, noise_seed=i)
        make_student(runs, teacher="musicnn", seed=seed, fraction=1.0, d=0.3, noise_seed=50 + i)
    (context,) = compare_runs(runs, draws=200)
    east = _row(context, "EAsT musicnn λ=0.5")
    assert east.difference.map.high < 0
    assert verdict(east).startswith("worse than no teacher")


def test_one_seed_verdict_says_seed_variation_is_not_included(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    make_student(runs, teacher="none", seed=BASE_SEED, fraction=1.0, d=0.8, noise_seed=1)
    make_student(runs, teacher="musicnn", seed=BASE_SEED, fraction=1.0, d=3.0, noise_seed=2)
    (context,) = compare_runs(runs, draws=200)
    east = _row(context, "EAsT musicnn λ=0.5")
    assert east.result.map.seeds == 1 and np.isnan(east.result.map.sd)
    assert "one seed" in verdict(east)


def test_context_without_baseline_has_a_note_and_no_differences(runs_dir: Path) -> None:
    # Another learning rate is another context; it has only teacher runs.
    for i, seed in enumerate(SEEDS):
        make_student(runs_dir, teacher="musicnn", seed=seed, fraction=1.0, d=D_EAST,
                     name=f"cp_resnet-musicnn-lr-s{seed}", noise_seed=900 + i, lr=3e-4)  # fmt: skip
    contexts = compare_runs(runs_dir, draws=100)
    assert len(contexts) == 3
    (lonely,) = [c for c in contexts if c.settings["lr"] == 3e-4]
    assert "no run without a teacher" in lonely.note
    assert [r.arm.kind for r in lonely.rows] == ["teacher", "probe"]  # the probe joins it
    assert all(r.difference is None for r in lonely.rows)
    assert verdict(lonely.rows[0]) == "no baseline to compare with"
    # The other contexts are untouched.
    assert all(c.note == "" for c in contexts if c is not lonely)
    titles = {context_title(c, contexts) for c in contexts}
    assert "label fraction 1, lr 0.0003" in titles


def test_old_recipe_runs_are_left_out(runs_dir: Path) -> None:
    before = {a.label: a.seeds for a in collect_arms(runs_dir)}
    make_student(runs_dir, teacher="none", seed=4242, fraction=1.0, d=0.8, recipe=1,
                 name="cp_resnet-none-old")  # fmt: skip
    # Recorded before the recipe was: counts as recipe 1.
    folder = make_student(runs_dir, teacher="none", seed=4243, fraction=1.0, d=0.8,
                          name="cp_resnet-none-older")  # fmt: skip
    config = json.loads((folder / "config.json").read_text())
    del config["recipe"]
    (folder / "config.json").write_text(json.dumps(config))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        after = {a.label: a.seeds for a in collect_arms(runs_dir)}
    assert after == before
    contexts = compare_runs(runs_dir, draws=50)
    used = {f.name for c in contexts for r in c.rows for f in r.arm.folders.values()}
    assert not used & {"cp_resnet-none-old", "cp_resnet-none-older"}


def test_precision_makes_a_context_of_its_own_and_speed_settings_do_not(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    for seed in (1, 2):
        make_student(runs, teacher="none", seed=seed, fraction=1.0, d=0.8, cache_on_device="on")
        folder = make_student(runs, teacher="musicnn", seed=seed, fraction=1.0, d=1.0)
        # A run recorded before the settings existed: a float32 run, streamed.
        config = json.loads((folder / "config.json").read_text())
        del config["precision"], config["cache_on_device"]
        (folder / "config.json").write_text(json.dumps(config))
        for teacher, d in (("none", 0.8), ("musicnn", 1.0)):
            make_student(runs, teacher=teacher, seed=seed, fraction=1.0, d=d, precision="bf16",
                         name=f"cp_resnet-{teacher}-bf16-s{seed}")  # fmt: skip
    contexts = compare_runs(runs, draws=50)
    assert len(contexts) == 2
    titles = sorted(context_title(c, contexts) for c in contexts)
    assert titles == ["precision bf16", "precision fp32"]
    for context in contexts:
        assert [r.arm.label for r in context.rows] == ["no teacher", "EAsT musicnn λ=0.5"]
        assert all(r.arm.seeds == (1, 2) for r in context.rows)


def test_two_runs_of_one_arm_and_seed_warn_and_the_newer_is_used(runs_dir: Path) -> None:
    original = runs_dir / f"cp_resnet-none-f1-s{BASE_SEED}"
    # Sorts before the original, so only the time of evaluation can pick it.
    again = make_student(runs_dir, teacher="none", seed=BASE_SEED, fraction=1.0, d=2.0,
                         name="cp_resnet-none-again", noise_seed=123)  # fmt: skip
    assert again.name < original.name
    now = time.time()
    os.utime(original / PREDICTIONS, (now - 100, now - 100))
    os.utime(again / PREDICTIONS, (now, now))
    with pytest.warns(UserWarning, match=rf"seed {BASE_SEED}.*using cp_resnet-none-again"):
        arms = collect_arms(runs_dir)
    (baseline,) = [a for a in arms if a.kind == "baseline" and a.label_fraction == 1.0]
    assert baseline.folders[BASE_SEED] == again
    assert baseline.seeds == SEEDS
    # Evaluated the other way round: the original wins.
    os.utime(again / PREDICTIONS, (now - 200, now - 200))
    with pytest.warns(UserWarning, match=f"using {original.name}"):
        arms = collect_arms(runs_dir)
    (baseline,) = [a for a in arms if a.kind == "baseline" and a.label_fraction == 1.0]
    assert baseline.folders[BASE_SEED] == original


def test_seeds_are_paired_only_where_both_arms_have_them(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    for i, seed in enumerate(SEEDS):
        make_student(runs, teacher="none", seed=seed, fraction=1.0, d=0.8, noise_seed=i)
    for i, seed in enumerate((*SEEDS[1:], BASE_SEED + 7)):
        make_student(runs, teacher="musicnn", seed=seed, fraction=1.0, d=3.0, noise_seed=50 + i)
    (context,) = compare_runs(runs, draws=100)
    east = _row(context, "EAsT musicnn λ=0.5")
    assert east.arm.seeds == (*SEEDS[1:], BASE_SEED + 7)
    assert sorted(east.difference.per_seed) == list(SEEDS[1:])
    assert east.difference.map.seeds == 2


def test_context_title_names_the_setting_that_differs(contexts) -> None:
    assert [context_title(c, contexts) for c in contexts] == [
        "label fraction 0.25",
        "label fraction 1",
    ]
    assert context_title(contexts[0], contexts[:1]) == "all runs"


def test_write_comparison_writes_json_markdown_and_figures(contexts, tmp_path: Path) -> None:
    out = tmp_path / "report"
    text = write_comparison(contexts, out)
    assert text.startswith("## Did the teacher help?")
    assert (out / "comparison.md").read_text() == text + "\n"
    assert HEADER in text
    assert "### label fraction 0.25 (60 test clips)" in text
    assert "### label fraction 1 (60 test clips)" in text
    assert "better than no teacher" in text and "cannot be told apart" in text
    assert "Per class: EAsT musicnn λ=0.5 − no teacher" in text
    assert "learning_curve.png" in text and "seeds.png" in text
    for name in ("seeds.png", "learning_curve.png"):
        assert (out / name).read_bytes()[:8] == PNG_SIGNATURE
    assert not list(out.glob("*.partial"))

    saved = json.loads((out / "comparison.json").read_text())
    assert saved == json.loads(json.dumps(comparison_json(contexts)))
    assert [c["settings"]["label_fraction"] for c in saved] == [0.25, 1.0]
    for context, item in zip(contexts, saved, strict=True):
        assert item["clips"] == CLIPS and "classes" not in item["settings"]
        assert [a["arm"] for a in item["arms"]] == [r.arm.label for r in context.rows]
        for row, arm in zip(context.rows, item["arms"], strict=True):
            assert arm["kind"] == row.arm.kind
            assert arm["runs"] == {str(s): f.name for s, f in row.arm.folders.items()}
            assert arm["map"]["mean"] == pytest.approx(row.result.map.mean)
            assert arm["map"]["low"] < arm["map"]["mean"] < arm["map"]["high"]
            assert arm["map_per_seed"] == {str(s): v for s, v in row.result.per_seed.items()}
            if row.difference is None:
                assert "delta_map" not in arm
                continue
            delta = arm["delta_map"]
            assert (delta["low"], delta["high"]) == pytest.approx(
                (row.difference.map.low, row.difference.map.high)
            )
            assert set(arm["delta_per_class"]) == set(CLASSES)
            assert set(arm["delta_per_seed"]) == {str(s) for s in SEEDS}
        east = next(a for a in item["arms"] if a["arm"] == "EAsT musicnn λ=0.5")
        assert east["delta_map"]["low"] > 0


def test_one_fraction_writes_no_learning_curve(tmp_path: Path) -> None:
    runs = make_comparison(tmp_path / "runs", fractions=(1.0,))
    out = tmp_path / "report"
    text = write_comparison(compare_runs(runs, draws=100), out)
    assert (out / "seeds.png").is_file() and (out / "comparison.json").is_file()
    assert not (out / "learning_curve.png").exists()
    assert "learning_curve.png" not in text
    assert "### all runs (60 test clips)" in text


def test_no_contexts_write_nothing(tmp_path: Path) -> None:
    assert write_comparison([], tmp_path / "report") == ""
    assert not (tmp_path / "report").exists()


def test_report_includes_the_comparison_section(runs_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "reports" / "demo"
    report = write_report(runs_dir, out).read_text()
    assert "## Did the teacher help?" in report
    assert report.index("## Did the teacher help?") < report.index("## Every run")
    assert HEADER in report
    for name in ("comparison.json", "comparison.md", "seeds.png", "learning_curve.png"):
        assert (out / name).is_file(), name


def test_comparison_is_deterministic(runs_dir: Path, tmp_path: Path) -> None:
    a = comparison_json(compare_runs(runs_dir, draws=100))
    b = comparison_json(compare_runs(runs_dir, draws=100))
    assert a == b


# -- B: the configs of a comparison -------------------------------------------------------------


def _names(configs) -> set[str]:
    return {cfg.run_name() for cfg in configs}


def test_comparison_configs_three_arms_per_seed() -> None:
    configs = comparison_configs("demo", teacher="musicnn", seeds=3)
    assert len(configs) == 9
    assert len(_names(configs)) == 9
    arms = [(c.teacher, c.kd) for c in configs]
    assert arms == [("none", False), ("musicnn", False), ("musicnn", True)] * 3
    assert [c.seed for c in configs] == [s for s in SEEDS for _ in range(3)]
    assert {c.label_fraction for c in configs} == {1.0}
    default_lam = train_config("demo", teacher="musicnn").regulariser_weight
    assert {c.regulariser_weight for c in configs if c.teachers} == {default_lam}
    # The arm at the first seed is the run `make train` would make.
    assert configs[1].run_name() == train_config("demo", teacher="musicnn").run_name()
    assert configs[0].run_name() == train_config("demo", teacher="none").run_name()


def test_more_seeds_reuse_every_run_of_fewer() -> None:
    three = comparison_configs("demo", teacher="musicnn", seeds=3)
    five = comparison_configs("demo", teacher="musicnn", seeds=5)
    assert len(five) == 15
    assert _names(three) < _names(five)
    assert {c.seed for c in five} - {c.seed for c in three} == {BASE_SEED + 3, BASE_SEED + 4}


def test_fractions_and_lambdas_multiply_the_arms_and_no_kd_drops_kd() -> None:
    configs = comparison_configs(
        "demo", teacher="musicnn", seeds=2, label_fractions=(0.25, 1), lambdas=(0.3, 0.7)
    )
    assert len(configs) == 2 * 2 * (1 + 2 * 2)
    assert len(_names(configs)) == len(configs)
    assert {c.label_fraction for c in configs} == {0.25, 1.0}
    assert all(isinstance(c.label_fraction, float) for c in configs)
    assert {c.regulariser_weight for c in configs if c.teachers} == {0.3, 0.7}
    assert sum(not c.teachers for c in configs) == 4
    assert sum(c.kd for c in configs) == 8

    no_kd = comparison_configs(
        "demo", teacher="musicnn", seeds=2, label_fractions=(0.25, 1), lambdas=(0.3, 0.7), kd=False
    )
    assert len(no_kd) == 2 * 2 * (1 + 2)
    assert not any(c.kd for c in no_kd)
    assert _names(no_kd) < _names(configs)


def test_settings_reach_every_config_and_seed_sets_the_first_seed() -> None:
    configs = comparison_configs("demo", teacher="musicnn", seeds=2, max_steps=2, seed=100)
    assert {c.max_steps for c in configs} == {2}
    assert sorted({c.seed for c in configs}) == [100, 101]


@pytest.mark.parametrize("teacher", ["none", ""])
def test_comparison_needs_a_teacher(teacher: str) -> None:
    with pytest.raises(ConfigError, match="needs a teacher"):
        comparison_configs("demo", teacher=teacher)


@pytest.mark.parametrize("seeds", [0, -1])
def test_comparison_needs_a_seed(seeds: int) -> None:
    with pytest.raises(ConfigError, match="seeds"):
        comparison_configs("demo", teacher="musicnn", seeds=seeds)


def test_invalid_fraction_and_setting_raise_config_errors() -> None:
    with pytest.raises(ConfigError, match="label_fraction"):
        comparison_configs("demo", teacher="musicnn", label_fractions=(0.5, 1.5))
    with pytest.raises(ConfigError, match="unknown setting"):
        comparison_configs("demo", teacher="musicnn", no_such_setting=1)


# -- C: `compare` end to end -------------------------------------------------------------------

E2E_CLIPS = 40
E2E_SETTINGS = ("max_steps=1", "workers=0", "student_options={'base_channels': 8}")


@pytest.fixture(scope="module")
def demo_data(tmp_path_factory) -> Path:
    data = tmp_path_factory.mktemp("data")
    run_cli(data, "data", "demo", "--clips", str(E2E_CLIPS))
    run_cli(data, "mels", "demo", "--frontend", "mobile_fcn", "--quiet")
    run_cli(data, "extract", "demo", "musicnn", "--quiet")
    from pipeline.data.manifest import Manifest
    from pipeline.paths import manifest_path

    manifest = Manifest.read(manifest_path(data, "demo"))
    splits = {s: len(manifest.split(s)) for s in ("train", "valid", "test")}
    assert all(n > 0 for n in splits.values()), splits
    return data


def _student_runs(runs: Path) -> set[str]:
    return {p.parent.name for p in runs.glob("cp_resnet-*/train.json")}


@pytest.mark.slow
def test_compare_trains_evaluates_reports_and_reuses_finished_runs(demo_data: Path) -> None:
    runs = demo_data / "runs" / "demo"
    compare = ("compare", "demo", "musicnn", *E2E_SETTINGS, "--no-kd", "--label-fractions")
    out = run_cli(demo_data, *compare, "0.5", "1", "--seeds", "2", "-q")
    assert HEADER in out.stdout and "no teacher" in out.stdout
    assert "EAsT musicnn" in out.stdout and "linear probe musicnn" in out.stdout
    assert "already trained" not in out.stdout
    report_dir = demo_data / "reports" / "demo"
    assert "## Did the teacher help?" in (report_dir / "report.md").read_text()
    assert (report_dir / "learning_curve.png").is_file()
    first = _student_runs(runs)
    assert len(first) == 2 * 2 * 2  # (baseline, EAsT) × 2 seeds × 2 fractions

    saved = json.loads((report_dir / "comparison.json").read_text())
    assert [c["settings"]["label_fraction"] for c in saved] == [0.5, 1.0]
    seeds = {str(BASE_SEED), str(BASE_SEED + 1)}
    checked = 0
    for context in saved:
        assert [a["arm"] for a in context["arms"]] == [
            "no teacher",
            "EAsT musicnn λ=0.5",
            "linear probe musicnn",
        ]
        for arm in context["arms"]:
            assert set(arm["runs"]) == seeds
            for seed, name in arm["runs"].items():
                # The same figure as `make eval` wrote for that run.
                metrics = json.loads((runs / name / "metrics.json").read_text())
                assert arm["map_per_seed"][seed] == pytest.approx(
                    metrics["summary"]["map"], abs=1e-9
                )
                config = json.loads((runs / name / "config.json").read_text())
                assert config["seed"] == int(seed)
                assert config["label_fraction"] == context["settings"]["label_fraction"]
                checked += 1
    assert checked == 2 * 3 * 2
    for fraction in (0.5, 1.0):
        for seed in (BASE_SEED, BASE_SEED + 1):
            folder = runs / probe_folder("musicnn", label_fraction=fraction, seed=seed)
            assert (folder / "metrics.json").is_file() and (folder / PREDICTIONS).is_file()

    again = run_cli(demo_data, *compare, "0.5", "1", "--seeds", "3", "-q")
    assert len(re.findall(r"already trained", again.stdout)) == len(first)
    # The old runs and probes are not evaluated again either.
    assert len(re.findall(r"metrics up to date", again.stdout)) == len(first) + 4
    after = _student_runs(runs)
    assert first < after and len(after - first) == 4
    for name in after - first:
        assert json.loads((runs / name / "config.json").read_text())["seed"] == BASE_SEED + 2
    saved = json.loads((report_dir / "comparison.json").read_text())
    for context in saved:
        for arm in context["arms"]:
            assert set(arm["runs"]) == seeds | {str(BASE_SEED + 2)}
            assert arm["map"]["seeds"] == 3


@pytest.mark.parametrize("name", ["lam", "kd", "label_fraction", "teacher", "seeds"])
def test_settings_a_comparison_varies_are_refused_with_the_option_to_use(name: str) -> None:
    with pytest.raises(ConfigError, match=f"{name} \\(use "):
        check_settings({name: 0.3})


def test_compare_command_refuses_them_with_status_2(tmp_path: Path) -> None:
    result = run_cli(
        tmp_path, "compare", "demo", "musicnn", "--seeds", "2", "lam=0.3", expect=None, timeout=120
    )
    # The setting comes after an option: it is still read as a setting.
    assert result.returncode == 2 and "lam (use --lambdas" in result.stderr
    assert "Traceback" not in result.stderr
    result = run_cli(
        tmp_path, "compare", "demo", "musicnn", "--seeds", "2", "stray", expect=None, timeout=120
    )
    assert result.returncode == 2 and "unrecognized arguments: stray" in result.stderr


def test_report_command_prints_the_comparison(tmp_path: Path) -> None:
    data = tmp_path / "data"
    make_comparison(data / "runs" / "demo")
    result = run_cli(data, "report", "demo", expect=None, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "label fraction 0.25 (60 test clips):" in result.stdout
    assert HEADER in result.stdout and "better than no teacher" in result.stdout
    assert (data / "reports" / "demo" / "comparison.json").is_file()
