"""Benchmark runner: a smoke run of the loader figures, error rows, ``--only`` and defaults."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import types

import pytest

from pipeline.bench import Figure
from pipeline.bench.__main__ import main, parse_args


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    """One tiny run of P2 and P3 through ``python -m pipeline.bench``."""
    tmp = tmp_path_factory.mktemp("bench")
    command = [
        sys.executable, "-m", "pipeline.bench",
        "--scale", "0.005", "--repeats", "1", "--workers", "1", "--only", "P2,P3",
        "--root", str(tmp / "work"), "--out", str(tmp / "out"),
    ]  # fmt: skip
    proc = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    results = json.loads((tmp / "out" / "results.json").read_text())
    return proc, results, (tmp / "out" / "results.md").read_text()


def _figures(results: dict) -> dict[str, dict]:
    return {f["id"]: f for f in results["figures"]}


@pytest.mark.parametrize("figure_id", ["P2", "P3"])
def test_smoke_ratios_are_consistent(smoke, figure_id):
    _, results, _ = smoke
    f = _figures(results)[figure_id]
    d = f["details"]
    assert math.isfinite(f["ratio"]) and f["ratio"] > 0
    assert d["clips"] == 32 and d["batch_size"] == 32
    for side in ("ours", "baseline"):
        assert d[f"{side}_clips_per_s"] == pytest.approx(d["clips"] / d[f"{side}_median_s"])
        assert len(d[f"{side}_times_s"]) == 1
    assert f["ratio"] == pytest.approx(d["ours_clips_per_s"] / d["baseline_clips_per_s"])
    assert f["numerator"].startswith(f"{d['ours_clips_per_s']:.1f} clips/s")
    assert f["denominator"].startswith(f"{d['baseline_clips_per_s']:.1f} clips/s")
    assert f["met"] == (f["ratio"] >= float(f["target"].removeprefix(">=")))


def test_smoke_compares_the_same_values(smoke):
    _, results, _ = smoke
    figures = _figures(results)
    p2 = figures["P2"]["details"]["first_batch_max_abs_difference"]
    assert p2["embedding"] == 0.0
    assert 0.0 <= p2["mel"] < 0.01  # the store holds float16 mels; the audio side float32
    assert figures["P3"]["details"]["workers"] == 0
    assert figures["P3"]["details"]["with_1_workers"]["ratio"] > 0


def test_smoke_writes_metadata_and_table(smoke):
    proc, results, markdown = smoke
    assert results["scale"] == 0.005 and results["workers"] == 1 and results["repeats"] == 1
    assert results["cpu_count"] >= 1 and results["torch"] and results["date"]
    assert "--only P2,P3" in results["command"]
    assert results["failed"] == []
    ids = set(_figures(results))
    assert {"P2", "P3"} <= ids <= {"P2", "P3", "P3-h5"}  # --only P3 keeps its HDF5 variant
    for figure_id in ("P2", "P3"):
        assert f"| {figure_id} |" in markdown
        assert f"| {figure_id} |" in proc.stdout


def _fake_module(run) -> types.ModuleType:
    module = types.ModuleType("fake_bench")
    module.run = run
    return module


def _boom(ctx):
    raise RuntimeError("boom in P1")


def test_failing_and_missing_modules_become_error_rows(tmp_path, monkeypatch):
    p4 = Figure("P4", "fake extraction figure", 2.0, ">= 1", "2 s", "1 s")
    monkeypatch.setitem(sys.modules, "pipeline.bench.on_the_fly", _fake_module(_boom))
    monkeypatch.setitem(sys.modules, "pipeline.bench.extraction", _fake_module(lambda ctx: [p4]))
    monkeypatch.setitem(sys.modules, "pipeline.bench.scaling", None)  # import fails
    status = main(["--only", "P1,P4,S1", "--root", str(tmp_path / "w"), "--out", str(tmp_path)])
    assert status == 1
    results = json.loads((tmp_path / "results.json").read_text())
    figures = _figures(results)
    assert list(figures) == ["P4", "P1", "S1"]  # running order, loading not run at all
    assert figures["P4"]["ratio"] == 2.0 and figures["P4"]["met"] is True
    assert figures["P1"]["target"] == "error" and figures["P1"]["ratio"] is None
    assert "boom in P1" in figures["P1"]["details"]["error"]
    assert "boom in P1" in figures["P1"]["numerator"]
    assert figures["S1"]["target"] == "error"
    assert "pipeline.bench.scaling" in figures["S1"]["details"]["error"]
    assert results["failed"] == ["P1", "S1"]
    assert "| P1 |" in (tmp_path / "results.md").read_text()


def test_only_filters_figures_within_a_module(tmp_path, monkeypatch):
    seen = []

    def run(ctx):
        seen.append(ctx.only)
        return [Figure("P6", "six", 1.0, ">= 1"), Figure("S1", "report", None, "report")]

    monkeypatch.setitem(sys.modules, "pipeline.bench.scaling", _fake_module(run))
    monkeypatch.setitem(sys.modules, "pipeline.bench.loading", _fake_module(_boom))
    assert main(["--only", "S1", "--root", str(tmp_path / "w"), "--out", str(tmp_path)]) == 0
    results = json.loads((tmp_path / "results.json").read_text())
    assert [f["id"] for f in results["figures"]] == ["S1"]
    assert seen == [frozenset({"S1"})]


def test_defaults_and_argument_checks(monkeypatch):
    monkeypatch.setenv("BENCH_SCALE", "0.1")
    args = parse_args([])
    assert args.scale == 0.1 and args.workers >= 1 and args.only is None
    assert parse_args(["--scale", "2"]).scale == 2.0
    assert parse_args(["--only", "P2, P3-h5"]).only == frozenset({"P2", "P3-h5"})
    for bad in (["--only", "P99"], ["--scale", "0"], ["--repeats", "0"]):
        with pytest.raises(SystemExit):
            parse_args(bad)
