"""Smoke run of the benchmark module feeding (P9, P9-cache) on a tiny corpus.

The check is on the rows: both ids, finite positive ratios against the same resident-batch
denominator, and details that say what was measured. No timing is asserted.
"""

from __future__ import annotations

import math

import pytest

from pipeline.bench import BenchContext, feeding


@pytest.mark.slow
def test_feeding_rows(tmp_path, monkeypatch):
    for name, value in (("BATCH_SIZE", 4), ("MIN_CLIPS", 16), ("CLIP_S", 2.0)):
        monkeypatch.setattr(feeding, name, value)
    ctx = BenchContext(root=tmp_path, scale=0.002, repeats=1, workers=1)
    figures = feeding.run(ctx)
    assert [f.id for f in figures] == ["P9", "P9-cache"]
    for figure in figures:
        assert figure.target == ">= 0.9", figure.details.get("traceback")
        assert figure.ratio is not None and math.isfinite(figure.ratio) and figure.ratio > 0
        assert figure.details["clips_per_pass"] == 16  # 16 clips, batches of 4
        assert figure.details["precision"] == "fp32"
        assert set(figure.details["seconds_per_pass"]) == {"resident", "P9", "P9-cache"}
    assert figures[0].denominator == figures[1].denominator
