"""Smoke runs of the benchmark modules on_the_fly (P1), extraction (P4), decoding (P7) and
scaling (P6, S1).

Each module's ``run`` is called as ``python -m pipeline.bench`` calls it, with a tiny context
and, where the full clips would take too long here, shorter clips and fewer of them (module
constants patched). The checks are on the rows: ids, finite positive ratios, details that say
what was measured. No timing is asserted: performance lives in the benchmark's results.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest

from pipeline.bench import BenchContext, Figure, decoding, extraction, on_the_fly, scaling, steps
from pipeline.bench.corpus import make_corpus
from pipeline.data.audio import load_audio
from pipeline.extract.decode import decode_ahead


def _ctx(tmp_path, **kwargs) -> BenchContext:
    return BenchContext(root=tmp_path, scale=0.002, repeats=1, workers=1, **kwargs)


def _check_ratio(figure: Figure) -> None:
    assert figure.target != "error", figure.details.get("traceback")
    assert figure.ratio is not None and math.isfinite(figure.ratio) and figure.ratio > 0
    assert figure.numerator and figure.denominator and figure.device


def test_decode_at_matches_load_audio(tmp_path):
    manifest = make_corpus(tmp_path, 3, duration_s=1.0)
    for path in manifest.clips["path"]:  # wav, ogg and mp3
        waves = on_the_fly.decode_at(path, (32_000, 16_000))
        for wave, rate in zip(waves, (32_000, 16_000), strict=True):
            np.testing.assert_array_equal(wave, load_audio(path, sr_hz=rate))


def test_on_the_fly_batches_match_the_cached_ones(tmp_path):
    manifest = make_corpus(tmp_path, 3, duration_s=1.0)
    frontend = on_the_fly.create_frontend("mobile_fcn")
    store = tmp_path / "mel.zarr"
    seconds, reused = on_the_fly.ensure_store(manifest, frontend, store, jobs=1)
    assert seconds > 0 and not reused
    frames = on_the_fly.max_frames_for(manifest, frontend, None)
    live = on_the_fly.collate_audio(list(on_the_fly.AudioClips(manifest, 32_000, frontend, frames)))
    cached = on_the_fly.collate(
        [on_the_fly.ClipDataset(manifest, "train", store)[i] for i in range(3)]
    )
    assert live["mel"].shape == cached["mel"].shape == (3, frontend.dim, frames)
    # The store keeps float16: equal up to its rounding.
    np.testing.assert_allclose(live["mel"], cached["mel"], rtol=2e-3, atol=2e-3)
    assert (live["labels"] == cached["labels"]).all() and (live["mask"] == cached["mask"]).all()
    assert [len(w) for w in live["waves"]] == [32_000] * 3


@pytest.mark.slow
def test_on_the_fly_rows(tmp_path, monkeypatch):
    monkeypatch.setattr(on_the_fly, "CLIP_S", 3.0)  # musicnn needs 2.976 s
    monkeypatch.setattr(on_the_fly, "MIN_CLIPS", 2)
    figures = on_the_fly.run(_ctx(tmp_path))
    assert [f.id for f in figures] == ["P1", "P1-musicnn"]
    for figure in figures:
        _check_ratio(figure)
        d = figure.details
        assert d["clips"] == 2 and d["batch_size"] == 2 and d["steps_per_epoch"] == 1
        assert figure.ratio == pytest.approx(d["on_the_fly_s"] / d["cached_s"])
        assert d["extraction_s"]["mel"] > 0 and d["extraction_s"]["teacher"] > 0
        assert d["loss"] == "dc" and d["lam"] > 0
        assert d["flop_bound_ratio"] > 1 and d["gflop_per_clip"]["teacher_forward"] > 0
    assert figures[0].target == ">= 20" and figures[1].target == "report"
    assert figures[0].details["teacher_frames"] == 1  # Cnn14's clip embedding
    # A later run reuses a store of the same fingerprint and clips, with its recorded time.
    manifest = make_corpus(tmp_path, 2, duration_s=3.0)
    frontend = on_the_fly.create_frontend("mobile_fcn")
    [store] = (tmp_path / "on_the_fly").glob("*/mel-mobile_fcn.zarr")
    seconds, reused = on_the_fly.ensure_store(manifest, frontend, store, jobs=1)
    assert reused and seconds == figures[0].details["extraction_s"]["mel"]


def test_extraction_row(tmp_path, monkeypatch):
    monkeypatch.setattr(extraction, "CLIP_S", 3.0)
    monkeypatch.setattr(extraction, "MIN_CLIPS", 8)
    monkeypatch.setattr(extraction, "BATCH_SIZE", 4)
    # Two decode jobs: extract() decodes in its pool, decoding alone in two plain processes.
    [figure] = extraction.run(dataclasses.replace(_ctx(tmp_path), workers=2))
    assert figure.id == "P4" and figure.target == ">= 0.8"
    _check_ratio(figure)
    d = figure.details
    assert d["clips"] == 8 and d["embedded"] == 8 and d["failed"] == 0
    assert d["decode_jobs"] == 2 and "2 plain spawned processes" in d["decode_in"]
    sides = {"teacher": d["embed_clips_per_s"], "decode": d["decode_clips_per_s"]}
    assert all(rate > 0 for rate in sides.values())
    assert d["bound"] == min(sides, key=sides.__getitem__)
    assert d["bound_clips_per_s"] == min(sides.values())
    assert figure.ratio == pytest.approx(d["extract_clips_per_s"] / min(sides.values()))
    assert d["bound"] in figure.denominator and "load_average_1min" in d
    assert len(d["decode_times_s"]) == len(d["extract_times_s"]) == 1
    assert extraction.run(_ctx(tmp_path, only=frozenset({"P1"}))) == []


def test_decoding_rows(tmp_path, monkeypatch):
    monkeypatch.setattr(decoding, "CLIP_S", 2.0)
    figures = decoding.run(_ctx(tmp_path))
    assert [f.id for f in figures] == ["P7-wav", "P7-flac", "P7-ogg", "P7-mp3"]
    for figure in figures:
        _check_ratio(figure)
        assert figure.target == "<= 1.3" and figure.details["calls"] == 5
        assert figure.ratio == pytest.approx(figure.details["ours_ms"] / figure.details["bare_ms"])
    # Both sides turn the same file into a waveform of the same rate and length.
    path = tmp_path / "decoding" / "clip.flac"
    assert len(load_audio(path, sr_hz=decoding.TARGET_HZ)) == len(
        decoding.bare_decode_resample(path)
    )
    assert [f.id for f in decoding.run(_ctx(tmp_path, only=frozenset({"P7-ogg"})))] == ["P7-ogg"]


@pytest.mark.slow
def test_scaling_rows(tmp_path, monkeypatch):
    monkeypatch.setattr(scaling, "CLIP_S", 2.0)  # mobile_fcn pools 96 frames (1.92 s) to one
    monkeypatch.setattr(scaling, "FULL_SIZES", (8, 24))
    monkeypatch.setattr(scaling, "MIN_SIZES", (8, 24))
    figures = scaling.run(_ctx(tmp_path))
    assert sorted(f.id for f in figures) == ["P6-extract", "P6-train", "S1-extract", "S1-train"]
    for figure in figures:
        _check_ratio(figure)
        assert figure.details["sizes"] == [8, 24]
        for n in ("8", "24"):
            [child] = figure.details["by_n"][n]["runs"]
            assert child["main_mib"] >= child["baseline_mib"] > 0
    by_id = {f.id: f for f in figures}
    assert by_id["P6-extract"].target == "<= 1.1" and by_id["S1-train"].target == "report"
    runs = by_id["S1-train"].details["by_n"]["24"]["runs"]
    assert runs[0]["clips"] == 24  # one batch size (8) for every N: three whole batches
    assert len(runs[0]["workers_mib"]) == 1  # the one DataLoader worker was measured


def test_step_rows(tmp_path, monkeypatch):
    small = [
        dataclasses.replace(case, n_mels=n_mels, frames=frames, teacher_frames=t)
        for case, (n_mels, frames, t) in zip(steps.CASES, [(128, 96, 1), (96, 200, 4)], strict=True)
    ]
    monkeypatch.setattr(steps, "CASES", tuple(small))
    monkeypatch.setattr(steps, "WARMUP_STEPS", 1)
    figures = steps.run(_ctx(tmp_path))
    assert [f.id for f in figures] == ["T1-cp_resnet", "T1-mobile_fcn"]
    for figure in figures:
        _check_ratio(figure)
        assert figure.target == "report" and figure.details["timed_steps"] == 2
    assert figures[0].details["parameters"] == 5_534_612  # the full-size student is reported
    assert figures[1].details["parameters"] == 314_098


def test_extract_decodes_a_bounded_number_of_batches_ahead(tmp_path):
    """A slow teacher must not let decoded batches pile up (P6's extraction peak grew with N)."""
    manifest = make_corpus(tmp_path, 2, duration_s=1.0)
    clips = list(zip(manifest.clip_ids, manifest.clips["path"], strict=True))
    taken = []

    def tasks():
        for i in range(12):
            taken.append(i)
            yield [clips[i % 2]], 16_000, 0.0, None

    results = decode_ahead(tasks(), jobs=2, ahead=4)
    for consumed in range(1, 13):
        [wave] = next(results)
        assert wave.shape == (16_000,)
        assert len(taken) <= consumed + 4  # submitted only as results are taken
    assert next(results, None) is None and len(taken) == 12


def _fake_run(n: int, seconds: float, mib: float) -> dict:
    return {"clips": n, "seconds": seconds, "total_mib": mib}


def test_scaling_figures_arithmetic():
    results = {
        job: {
            n: scaling._median_run([_fake_run(n, n * 0.01 * k, 100.0 + n / 10) for k in (1, 2, 3)])
            for n in (10, 100)
        }
        for job in scaling.JOBS
    }
    figures = {f.id: f for f in scaling.figures_from(_ctx("."), results)}
    assert figures["P6-extract"].ratio == pytest.approx(110 / 101)
    assert figures["S1-train"].ratio == pytest.approx(1.0)  # 0.02 s/clip at both sizes
    assert figures["S1-train"].details["s_per_clip"] == pytest.approx({"10": 0.02, "100": 0.02})
    assert "N=10: 20.0" in figures["S1-extract"].denominator
