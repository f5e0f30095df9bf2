"""The embedded demo dataset: rendering, determinism, labels, splits and reruns."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf

from pipeline.data.datasets import build_manifest
from pipeline.data.datasets.demo import (
    DEMO_CLASSES,
    KNOWN_NEGATIVE_P,
    SR_HZ,
    compose_part,
    label_arrays,
    plan_clips,
    random_song,
    render_instruments,
)
from pipeline.data.manifest import SPLITS, Manifest

N_CLIPS = 12
CYMBAL_KEYS = {49, 51, 52, 53, 55, 57, 59}


def _decode(path: str) -> np.ndarray:
    audio, sr_hz = sf.read(path, dtype="float32")
    assert sr_hz == SR_HZ
    return audio


def _without_paths(manifest: Manifest) -> pd.DataFrame:
    return manifest.clips.drop(columns="path")


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Manifest]:
    out_dir = tmp_path_factory.mktemp("demo_a")
    return out_dir, build_manifest("demo", out_dir=out_dir, clips=N_CLIPS, seed=7, jobs=2)


def test_render_shape_level_and_determinism() -> None:
    a = render_instruments(["piano", "drums"], seed=3)
    assert a.dtype == np.float32 and a.shape == (10 * SR_HZ,)
    assert np.isfinite(a).all()
    peaks_db = [
        20 * np.log10(np.abs(render_instruments(["organ"], duration_s=1.0, seed=s)).max())
        for s in range(8)
    ]
    assert all(-12.001 <= p <= -0.999 for p in peaks_db), peaks_db
    np.testing.assert_array_equal(a, render_instruments(["piano", "drums"], seed=3))
    assert not np.array_equal(a, render_instruments(["piano", "drums"], seed=4))
    short = render_instruments(["flute"], duration_s=1.5, sr_hz=16000, seed=0)
    assert short.shape == (24000,)


@pytest.mark.parametrize("names", [[], ["mandolin"], ["ukulele"], ["kazoo"], ["bass", "bass"]])
def test_render_rejects_what_it_cannot_play(names: list[str]) -> None:
    with pytest.raises(ValueError):
        render_instruments(names)


def _centroid_hz(audio: np.ndarray) -> float:
    magnitude = np.abs(np.fft.rfft(audio))
    freqs = np.fft.rfftfreq(len(audio), 1 / SR_HZ)
    return float((magnitude * freqs).sum() / magnitude.sum())


def test_instruments_have_distinct_spectra() -> None:
    centroid = {
        name: np.median([_centroid_hz(render_instruments([name], seed=s)) for s in range(3)])
        for name in ("bass", "flute", "cymbals")
    }
    assert 1.5 * centroid["bass"] < centroid["flute"], centroid
    assert 1.5 * centroid["flute"] < centroid["cymbals"], centroid


def test_every_class_renders_audibly() -> None:
    for name in DEMO_CLASSES:
        audio = render_instruments([name], duration_s=4.0, seed=1)
        seconds = audio.reshape(4, -1)
        assert np.sqrt(np.mean(audio**2)) > 1e-3, name
        assert (np.abs(seconds).max(axis=1) > 1e-3).sum() >= 2, name


def test_drums_and_cymbals_use_disjoint_notes() -> None:
    for seed in range(30):
        rng = np.random.default_rng(seed)
        song = random_song(rng, duration_s=10.0)
        drum_keys = {n.key for n in compose_part("drums", song, rng).notes}
        cymbal_keys = {n.key for n in compose_part("cymbals", song, rng).notes}
        assert drum_keys and cymbal_keys
        assert not drum_keys & CYMBAL_KEYS, seed
        assert cymbal_keys <= CYMBAL_KEYS, seed


def test_bass_sits_below_flute() -> None:
    for seed in range(10):
        rng = np.random.default_rng(seed)
        song = random_song(rng, duration_s=10.0)
        bass = [n.key for n in compose_part("bass", song, rng).notes]
        flute = [n.key for n in compose_part("flute", song, rng).notes]
        assert max(bass) < min(flute), seed


def test_files_are_10s_mono_ogg_at_32khz(built: tuple[Path, Manifest]) -> None:
    out_dir, manifest = built
    assert len(manifest) == N_CLIPS
    assert manifest.classes == DEMO_CLASSES
    assert (manifest.clips["duration_s"] == 10.0).all()
    for clip_id, path in zip(manifest.clip_ids, manifest.clips["path"], strict=True):
        assert Path(path) == (out_dir / "audio" / f"{clip_id}.ogg").absolute()
        info = sf.info(path)
        assert (info.format, info.subtype) == ("OGG", "VORBIS")
        assert (info.samplerate, info.channels, info.frames) == (SR_HZ, 1, 10 * SR_HZ)
        assert np.sqrt(np.mean(_decode(path) ** 2)) > 1e-3
    assert not list((out_dir / "audio").glob("*.partial"))


def test_same_seed_gives_identical_manifest_and_audio(
    built: tuple[Path, Manifest], tmp_path: Path
) -> None:
    _, first = built
    second = build_manifest("demo", out_dir=tmp_path, clips=N_CLIPS, seed=7, jobs=1)
    pd.testing.assert_frame_equal(_without_paths(first), _without_paths(second))
    for a, b in zip(first.clips["path"], second.clips["path"], strict=True):
        np.testing.assert_array_equal(_decode(a), _decode(b))


def test_clip_does_not_depend_on_clip_count(built: tuple[Path, Manifest], tmp_path: Path) -> None:
    _, full = built
    fewer = build_manifest("demo", out_dir=tmp_path, clips=5, seed=7, jobs=1)
    pd.testing.assert_frame_equal(_without_paths(fewer), _without_paths(full).head(5))
    np.testing.assert_array_equal(_decode(fewer.clips["path"][4]), _decode(full.clips["path"][4]))


def test_other_seed_gives_other_clips() -> None:
    a, b = plan_clips(N_CLIPS, seed=7), plan_clips(N_CLIPS, seed=8)
    assert [p.render_seed for p in a] != [p.render_seed for p in b]
    assert [p.instruments for p in a] != [p.instruments for p in b]


def test_rerun_renders_nothing(built: tuple[Path, Manifest]) -> None:
    out_dir, manifest = built
    before = {p: Path(p).stat().st_mtime_ns for p in manifest.clips["path"]}
    again = build_manifest("demo", out_dir=out_dir, clips=N_CLIPS, seed=7, jobs=2)
    pd.testing.assert_frame_equal(manifest.clips, again.clips)
    assert {p: Path(p).stat().st_mtime_ns for p in again.clips["path"]} == before


def test_broken_or_foreign_files_are_rendered_again(tmp_path: Path) -> None:
    manifest = build_manifest("demo", out_dir=tmp_path, clips=3, seed=7, jobs=1)
    broken, foreign, kept = (Path(p) for p in manifest.clips["path"])
    originals = {path: _decode(str(path)) for path in (broken, foreign)}
    broken.write_bytes(b"not audio")
    foreign.write_bytes(kept.read_bytes())  # a valid file, but of another clip
    kept_mtime = kept.stat().st_mtime_ns
    build_manifest("demo", out_dir=tmp_path, clips=3, seed=7, jobs=1)
    for path, audio in originals.items():
        np.testing.assert_array_equal(_decode(str(path)), audio)
    assert kept.stat().st_mtime_ns == kept_mtime


def test_splits_present_and_balanced(built: tuple[Path, Manifest]) -> None:
    _, manifest = built
    assert set(manifest.clips["split"]) == set(SPLITS)
    splits = pd.Series([p.split for p in plan_clips(360, seed=0)]).value_counts()
    assert splits.to_dict() == {"train": 252, "valid": 54, "test": 54}


def test_labels_follow_openmic_semantics(built: tuple[Path, Manifest]) -> None:
    _, manifest = built
    labels, mask = manifest.labels(), manifest.mask()
    positives = labels == 1
    assert mask[positives].all()
    assert ((positives.sum(axis=1) >= 1) & (positives.sum(axis=1) <= 3)).all()
    assert (~mask).any()


def test_unknown_fraction_and_class_balance() -> None:
    plans = plan_clips(2000, seed=1)
    labels, mask = label_arrays(plans)
    negatives = labels == 0
    unknown = 1 - mask[negatives].mean()
    assert abs(unknown - (1 - KNOWN_NEGATIVE_P)) < 0.02
    per_class = labels.sum(axis=0)
    assert per_class.min() > 0.8 * per_class.mean()
    counts = np.bincount(labels.sum(axis=1), minlength=4)
    assert counts[0] == 0 and (counts[1:] > 0.2 * len(plans)).all()
