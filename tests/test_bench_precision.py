"""Smoke runs of the benchmark module precision (PR-<teacher>: bf16 ÷ fp32 clips/s).

As in tests/test_bench_modules.py: ``run`` is called as ``python -m pipeline.bench`` calls it,
with a tiny context and shorter clips; the checks are on the rows, never on the timings.
"""

from __future__ import annotations

import math

import pytest

from pipeline.bench import BenchContext, precision
from pipeline.teachers import create_teacher
from pipeline.teachers.base import AGREEMENT_MIN_COSINE

WHEEL_ROWS = frozenset({"PR-musicnn", "PR-aisfx"})


def _ctx(tmp_path, **kwargs) -> BenchContext:
    return BenchContext(root=tmp_path, scale=0.002, repeats=1, workers=1, **kwargs)


def _check_row(figure, teacher: str) -> None:
    assert figure.target == "report", figure.details.get("traceback")
    assert figure.ratio is not None and math.isfinite(figure.ratio) and figure.ratio > 0
    assert figure.numerator.endswith("clips/s at bf16")
    assert figure.denominator.endswith("clips/s at fp32") and figure.device
    d = figure.details
    assert d["teacher"] == teacher and d["clips"] == 2 and d["clip_s"] == precision.CLIP_S
    assert figure.ratio == pytest.approx(d["bf16_clips_per_s"] / d["fp32_clips_per_s"])
    assert len(d["bf16_s"]) == len(d["fp32_s"]) == 1
    assert d["agreement_bar"] == AGREEMENT_MIN_COSINE and -1 <= d["min_cosine"] <= 1 + 1e-9


def test_rows_of_the_teachers_with_wheel_weights(tmp_path, monkeypatch):
    monkeypatch.setattr(precision, "CLIP_S", 3.0)  # musicnn needs 2.976 s
    figures = precision.run(_ctx(tmp_path, only=WHEEL_ROWS | {"PR-hear"}))
    assert [f.id for f in figures] == ["PR-musicnn", "PR-aisfx", "PR-hear"]
    for figure, teacher in zip(figures, ("musicnn", "aisfx"), strict=False):
        _check_row(figure, teacher)
        assert figure.details["weights"] == "wheel"
        # Trained weights, music-like clips: the flag holds here too.
        assert figure.details["bf16_agrees"] == (
            figure.details["min_cosine"] >= AGREEMENT_MIN_COSINE
        )
    hear = figures[-1]
    assert hear.ratio is None and hear.target == "report" and "HEAR" in hear.details["skipped"]
    assert precision.run(_ctx(tmp_path, only=frozenset({"P1"}))) == []


def test_random_weights_are_written_once_and_load(tmp_path):
    path = precision.random_weights("openl3", tmp_path)
    written = path.stat().st_mtime_ns
    assert precision.random_weights("openl3", tmp_path) == path
    assert path.stat().st_mtime_ns == written
    assert create_teacher("openl3", weights=path).weights == path


@pytest.mark.slow
def test_row_of_a_teacher_with_random_weights(tmp_path, monkeypatch):
    # One of the four (the smallest network): the others take the same path, and their
    # agreement is tested in tests/test_teacher_precision.py.
    monkeypatch.setattr(precision, "CLIP_S", 3.0)
    [figure] = precision.run(_ctx(tmp_path, only=frozenset({"PR-openl3"})))
    assert figure.id == "PR-openl3"
    _check_row(figure, "openl3")
    assert figure.details["weights"] == "random"
