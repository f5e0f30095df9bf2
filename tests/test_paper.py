"""``make paper`` (:mod:`pipeline.evaluate.paper`): the configs of the paper's table, the table
itself, and the whole command on a miniature OpenMIC release with random-weight teachers."""

from __future__ import annotations

import json
import math
import re
import shutil
from pathlib import Path

import pytest
from command_line import run_cli
from stand_ins import WRITE_WEIGHTS, write_openmic_release

from pipeline.evaluate.arms import Arm, Context, Row
from pipeline.evaluate.paper import PAPER_TEACHERS, PUBLISHED, paper_configs, paper_table
from pipeline.evaluate.stats import ArmResult, Estimate
from pipeline.train.config import ConfigError

# -- A: the runs of the table ------------------------------------------------------------------


def test_paper_configs_baseline_once_per_seed_then_east_and_kd_per_teacher() -> None:
    configs = paper_configs("openmic", seeds=2)

    assert len(configs) == 2 * (1 + 4 * 2) == 18
    assert len({c.digest() for c in configs}) == 18
    assert len({c.run_name() for c in configs}) == 18
    first = configs[0].seed
    assert {c.seed for c in configs} == {first, first + 1}
    for seed in (first, first + 1):
        mine = [c for c in configs if c.seed == seed]
        assert len(mine) == 9
        baselines = [c for c in mine if not c.teachers]
        assert len(baselines) == 1 and not baselines[0].kd
        for teacher in PAPER_TEACHERS:
            arms = sorted(c.kd for c in mine if c.teachers == (teacher,))
            assert arms == [False, True], teacher
    # Per seed the baseline first (sorted by seed, then teacher or not, teacher, kd).
    assert [bool(c.teachers) for c in configs[:9]] == [False, *[True] * 8]
    assert [c.seed for c in configs] == sorted(c.seed for c in configs)
    # The paper's λ per teacher, the preset's student, nothing else changed between arms.
    lams = {c.teacher: c.regulariser_weight for c in configs if c.teachers}
    assert lams == {"vggish": 0.8, "openl3": 0.8, "passt": 0.9, "panns": 0.9}
    assert {(c.student, c.frontend, c.label_fraction) for c in configs} == {
        ("cp_resnet", "cp_resnet", 1.0)
    }


def test_paper_configs_of_a_teacher_subset_with_settings() -> None:
    configs = paper_configs("magnatagatune", seeds=1, teachers=("vggish", "panns"), max_steps=7)
    assert len(configs) == 1 + 2 * 2
    assert {c.max_steps for c in configs} == {7}
    assert {c.student for c in configs} == {"mobile_fcn"}
    assert {c.regulariser_weight for c in configs if c.teachers} == {0.6}


@pytest.mark.parametrize("dataset", ["demo", "mydata", "OpenMIC"])
def test_paper_configs_refuse_other_datasets(dataset: str) -> None:
    with pytest.raises(ConfigError, match="openmic or magnatagatune"):
        paper_configs(dataset, seeds=1)


def test_paper_configs_refuse_unknown_settings() -> None:
    with pytest.raises(ConfigError, match="unknown setting"):
        paper_configs("openmic", seeds=1, no_such_setting=1)


# -- B: the table, from made-up contexts ---------------------------------------------------------


def _estimate(mean: float) -> Estimate:
    return Estimate(mean, math.nan, mean - 0.05, mean + 0.05, 0.02, math.inf, 1, math.nan)


def _row(folder: Path, kind: str, teacher: str, kd: bool, test: float, valid: float | None) -> Row:
    """A row whose one run folder holds the figure :func:`paper_table` reads for validation."""
    folder.mkdir(parents=True)
    if kind == "probe":
        (folder / "config.json").write_text(json.dumps({"kind": "probe", "probe_valid_map": valid}))
        label = f"linear probe {teacher}"
    else:
        (folder / "train.json").write_text(json.dumps({"best_valid_map": valid}))
        label = "no teacher" if kind == "baseline" else f"{'EAsT-KD' if kd else 'EAsT'} {teacher}"
    arm = Arm(label, kind, teacher, None, kd, 1.0, {}, {1: folder})
    return Row(arm, ArmResult(_estimate(test), (), {1: test}), None)


def test_paper_table_sets_published_figures_beside_ours(tmp_path: Path) -> None:
    rows = [
        _row(tmp_path / "base", "baseline", "none", False, 0.800, 0.810),
        _row(tmp_path / "east-passt", "teacher", "passt", False, 0.840, 0.850),
        _row(tmp_path / "kd-passt", "teacher", "passt", True, 0.860, 0.870),
        _row(tmp_path / "east-vggish", "teacher", "vggish", False, 0.830, 0.844),
        _row(tmp_path / "kd-panns", "teacher", "panns", True, 0.830, 0.844),
        _row(tmp_path / "probe-openl3", "probe", "openl3", False, 0.790, 0.818),
        _row(tmp_path / "probe-panns", "probe", "panns", False, 0.790, None),
    ]
    other = Context({"label_fraction": 0.5}, [], [], 8)
    table = paper_table("openmic", [other, Context({"label_fraction": 1.0}, rows, [], 8)])
    lines = table.splitlines()
    assert "test mAP [95 % CI]" in lines[0]
    cells = {line.split(" | ")[0].lstrip("| "): line.split(" | ") for line in lines[2:]}
    assert len(cells) == len(rows)
    # arm | seeds | ours test [CI] | ours valid | paper valid | paper test | gap
    assert cells["no teacher"][2:] == ["0.800 [0.750, 0.850]", "0.810", "–", "–", "– |"]
    assert cells["EAsT passt"][4:] == ["0.864", "0.847", "-0.007 (test) |"]
    assert cells["EAsT-KD passt"][4:] == ["–", "0.852", "+0.008 (test) |"]
    assert cells["EAsT vggish"][3:] == ["0.844", "0.854", "–", "-0.010 (valid) |"]
    assert cells["EAsT-KD panns"][4:] == ["–", "–", "– |"]  # no published figure
    assert cells["linear probe openl3"][3:] == ["0.818", "0.808", "–", "+0.010 (valid) |"]
    assert cells["linear probe panns"][3:] == ["–", "0.865", "–", "– |"]  # no valid figure


def test_paper_table_of_magnatagatune_names_pr_auc_and_needs_all_labels(tmp_path: Path) -> None:
    row = _row(tmp_path / "east", "teacher", "passt", False, 0.45, 0.46)
    table = paper_table("magnatagatune", [Context({"label_fraction": 1.0}, [row], [], 8)])
    assert "PR-AUC (= mAP)" in table.splitlines()[0]
    assert "| 0.466 | 0.459 | -0.009 (test) |" in table
    assert paper_table("openmic", []) == "No evaluated runs with all labels yet."
    only_half = [Context({"label_fraction": 0.5}, [row], [], 8)]
    assert paper_table("openmic", only_half) == "No evaluated runs with all labels yet."


# -- C: `paper` end to end on a miniature OpenMIC release ----------------------------------------

# Teachers of the main end-to-end test. All four take too long on a CPU: extracting 38 clips of
# 10 s took OpenL3 about 140 s and PaSST about 180 s (VGGish 30 s, PANNs 40 s) on two busy cores;
# the four together are the torture test below.
FAST_TEACHERS = ("vggish", "panns")


def _prepare(root: Path, teachers: tuple[str, ...]) -> tuple[Path, dict[str, list[str]]]:
    """A data dir with the OpenMIC manifest of a miniature release and the teachers' stores
    (``extract --weights`` of random weights in each package's format); no mels, no runs."""
    splits = write_openmic_release(root / "release")
    assert all(splits.values()), {k: len(v) for k, v in splits.items()}
    data = root / "data"
    run_cli(data, "data", "openmic", "--root", str(root / "release"))
    for teacher in teachers:
        weights = WRITE_WEIGHTS[teacher](root / "weights" / teacher)
        run_cli(data, "extract", "openmic", teacher, "--weights", str(weights), "-q")
    shutil.rmtree(root / "weights")  # PaSST and PANNs are 300+ MB each
    return data, splits


def _settings(splits: dict[str, list[str]]) -> list[str]:
    """Runs of seconds: a narrow CP ResNet, two steps that make one whole (validated) epoch."""
    batch_size = len(splits["train"]) // 2
    return [
        "max_steps=2",
        f"batch_size={batch_size}",
        "probe_max_steps=5",
        "workers=0",
        "student_options={'base_channels': 8}",
    ]


@pytest.fixture(scope="module")
def openmic_data(tmp_path_factory) -> tuple[Path, dict[str, list[str]]]:
    return _prepare(tmp_path_factory.mktemp("openmic"), FAST_TEACHERS)


def _fresh_copy(data: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "data"
    shutil.copytree(data, copy)
    assert not (copy / "runs").exists()
    return copy


def _table_rows(text: str) -> dict[str, list[str]]:
    """The paper table's cells by arm (the label without its λ)."""
    rows = {}
    for line in text.splitlines():
        if line.startswith("| ") and not line.startswith("| arm "):
            cells = [c.strip() for c in line.strip("|").split("|")]
            rows[re.sub(r" λ=[\d.]+$", "", cells[0])] = cells[1:]
    return rows


def _check_paper(data: Path, teachers: tuple[str, ...], splits: dict[str, list[str]]) -> None:
    """Train and evaluate the table for ``teachers``; check the output, paper.md and report.md."""
    n_runs = 1 + 2 * len(teachers)
    args = ["paper", "openmic", *_settings(splits), "--seeds", "1"]
    out = run_cli(data, *args, "--teachers", "+".join(teachers), "-q").stdout
    lines = out.splitlines()

    plan = [i for i, line in enumerate(lines) if line.startswith("training plan: ")]
    first_run = next(i for i, line in enumerate(lines) if line.startswith(f"[1/{n_runs}] "))
    assert len(plan) == 1 and plan[0] < first_run, out
    assert f"{n_runs} runs to train × at most 2 steps" in lines[plan[0]]
    assert "already trained" not in out

    runs = data / "runs" / "openmic"
    students = sorted(p.parent.name for p in runs.glob("cp_resnet-*/train.json"))
    assert len(students) == n_runs
    for teacher in teachers:
        assert (runs / f"probe-{teacher}" / "metrics.json").is_file()
    for name in students:
        assert (runs / name / "metrics.json").is_file()

    reports = data / "reports" / "openmic"
    assert (reports / "report.md").is_file()
    paper = (reports / "paper.md").read_text()
    assert paper.startswith("# The paper's table on openmic")
    assert paper.strip() in out  # printed as written
    rows = _table_rows(paper)
    expected = {"no teacher"}
    for teacher in teachers:
        expected |= {f"EAsT {teacher}", f"EAsT-KD {teacher}", f"linear probe {teacher}"}
    assert set(rows) == expected and len(rows) == len(expected) == n_runs + len(teachers)

    published = PUBLISHED["openmic"]
    kinds = {"EAsT": "east", "EAsT-KD": "kd", "linear probe": "probe"}
    for arm, (seeds, test, valid, paper_valid, paper_test, gap) in rows.items():
        assert seeds == "1", arm
        assert re.fullmatch(r"0\.\d{3} \[0\.\d{3}, [01]\.\d{3}\]", test), (arm, test)
        assert re.fullmatch(r"0\.\d{3}", valid), (arm, valid)  # one validated epoch each
        if arm == "no teacher":
            assert (paper_valid, paper_test, gap) == ("–", "–", "–")
            continue
        kind, teacher = arm.rsplit(" ", 1)
        key = (kinds[kind], teacher)
        want_valid, want_test = published["valid"].get(key), published["test"].get(key)
        assert paper_valid == (f"{want_valid:.3f}" if want_valid else "–"), arm
        assert paper_test == (f"{want_test:.3f}" if want_test else "–"), arm
        ours = float(test.split()[0]) if want_test else float(valid)
        reference = want_test or want_valid
        if reference:
            which = "test" if want_test else "valid"
            assert gap == f"{ours - reference:+.3f} ({which})", arm
        else:
            assert gap == "–", arm
    # The figures the brief names: the paper's validation mAP of EAsT with VGGish, and the test
    # mAP of EAsT with PaSST (the only teacher with published test figures).
    assert rows["EAsT vggish"][3] == "0.854"
    if "passt" in teachers:
        assert rows["EAsT passt"][4] == "0.847" and rows["EAsT-KD passt"][4] == "0.852"

    # Everything is trained: the plan says so, and trains and times nothing.
    again = run_cli(data, *args, "--teachers", "+".join(teachers), "--estimate-only", "-q").stdout
    assert "training plan: every run of the table is trained already" in again


@pytest.mark.slow
def test_paper_estimate_only_trains_nothing(openmic_data, tmp_path: Path) -> None:
    base, splits = openmic_data
    data = _fresh_copy(base, tmp_path)
    args = ["paper", "openmic", *_settings(splits), "--seeds", "2", "--estimate-only", "-q"]
    out = run_cli(data, *args, "--teachers", "+".join(FAST_TEACHERS)).stdout

    [plan] = [line for line in out.splitlines() if line.startswith("training plan: ")]
    assert re.match(r"training plan: 10 runs to train × at most 2 steps × \d+ ms a step", plan)
    assert f"(cp_resnet, batch {len(splits['train']) // 2}, measured on " in plan
    assert "[1/" not in out
    assert not (data / "runs").exists() or not any((data / "runs").rglob("*"))
    assert not (data / "reports").exists()


@pytest.mark.slow
def test_paper_with_a_teacher_store_missing_stops_before_training(
    openmic_data, tmp_path: Path
) -> None:
    base, splits = openmic_data
    data = _fresh_copy(base, tmp_path)
    shutil.rmtree(data / "cache" / "openmic" / "panns.zarr")
    args = ["paper", "openmic", *_settings(splits), "--seeds", "1", "-q"]
    result = run_cli(data, *args, "--teachers", "+".join(FAST_TEACHERS), expect=2)
    assert "no clip store at" in result.stderr and "panns.zarr" in result.stderr
    assert "training plan" not in result.stdout
    assert not (data / "runs").exists()


@pytest.mark.slow
def test_paper_trains_evaluates_and_sets_published_figures_beside_ours(
    openmic_data, tmp_path: Path
) -> None:
    base, splits = openmic_data
    _check_paper(_fresh_copy(base, tmp_path), FAST_TEACHERS, splits)


@pytest.mark.torture
def test_paper_with_all_four_teachers(tmp_path: Path) -> None:
    data, splits = _prepare(tmp_path, PAPER_TEACHERS)
    _check_paper(data, PAPER_TEACHERS, splits)
