"""The extraction driver, with a small deterministic teacher defined here."""

import numpy as np
import pytest
import soundfile as sf

from pipeline.data.manifest import make_manifest
from pipeline.extract.local import ExtractionError, extract
from pipeline.stores import markers, read_store
from pipeline.teachers import Teacher


class FrameStats(Teacher):
    """RMS and mean of each 0.5 s frame; refuses clips whose first sample is exactly 0.25."""

    name = "frame-stats"
    sample_rate_hz = 8000
    hop_s = 0.5
    dim = 2
    min_duration_s = 0.1
    output_version = 1

    def __init__(self):
        self.calls = 0

    def num_frames(self, n_samples):
        return n_samples // 4000

    def embed(self, waveforms):
        self.calls += 1
        out = []
        for w in waveforms:
            if w[0] == np.float32(0.25):
                raise RuntimeError("unsupported waveform")
            frames = w[: self.num_frames(len(w)) * 4000].reshape(-1, 4000)
            out.append(np.stack([np.sqrt((frames**2).mean(1)), frames.mean(1)], 1))
        return out


def _write(path, seconds, sr=8000, first=None, seed=0):
    audio = np.random.default_rng(seed).uniform(-0.5, 0.5, int(seconds * sr)).astype(np.float32)
    if first is not None:
        audio[0] = first
    sf.write(path, audio, sr)
    return path


def _manifest(tmp_path, specs):
    paths = []
    for i, (seconds, kind) in enumerate(specs):
        path = tmp_path / f"{i}.wav"
        if kind == "garbage":
            path.write_bytes(b"not audio at all")
        else:
            _write(path, seconds, first=0.25 if kind == "model-error" else None, seed=i)
        paths.append(path)
    n = len(specs)
    return make_manifest(
        "toy",
        clip_ids=[f"c{i}" for i in range(n)],
        paths=paths,
        splits=["train"] * n,
        classes=["a"],
        labels=np.zeros((n, 1)),
    )


def test_extract_writes_every_clip_in_manifest_order(tmp_path):
    manifest = _manifest(
        tmp_path, [(2.0, "ok"), (1.2, "ok"), (3.0, "ok"), (2.5, "ok"), (1.0, "ok")]
    )
    teacher = FrameStats()
    summary = extract(
        manifest, teacher, tmp_path / "s.zarr", batch_size=2, shard_size=2, jobs=1, progress=False
    )
    store = read_store(tmp_path / "s.zarr")
    assert store.clip_ids == manifest.clip_ids
    assert store.n_frames.tolist() == [4, 2, 6, 5, 2]
    expected = teacher.embed([sf.read(p, dtype="float32")[0] for p in manifest.clips["path"]])
    for clip, want in zip(manifest.clip_ids, expected, strict=True):
        np.testing.assert_allclose(store.read(clip), want, atol=2e-3)
    assert (summary.embedded, summary.failed, summary.shards_written) == (5, {}, 3)

    calls = teacher.calls
    again = extract(manifest, teacher, tmp_path / "s.zarr", shard_size=2, jobs=1, progress=False)
    assert teacher.calls == calls and again.shards_written == 0 and again.shards_skipped == 3


def test_bad_clips_are_recorded_and_the_run_goes_on(tmp_path):
    specs = (
        [(2.0, "ok"), (1.0, "garbage"), (0.05, "ok"), (2.0, "model-error"), (2.0, "ok")]
        + [(0.2, "ok")]
        + [(1.0, "ok")] * 20
    )
    manifest = _manifest(tmp_path, specs)
    (tmp_path / "0.wav").unlink()  # vanished after the manifest was made
    summary = extract(
        manifest,
        FrameStats(),
        tmp_path / "s.zarr",
        batch_size=4,
        shard_size=8,
        jobs=2,
        progress=False,
    )
    assert set(summary.failed) == {"c0", "c1", "c2", "c3", "c5"}
    assert "file not found" in summary.failed["c0"]
    assert "cannot decode" in summary.failed["c1"]
    assert "0.050 s long, needs at least 0.1 s" in summary.failed["c2"]
    assert summary.failed["c5"] == "frame-stats produced no frames"
    assert "unsupported waveform" in summary.failed["c3"]
    store = read_store(tmp_path / "s.zarr")
    assert store.failures() == summary.failed
    assert store.n_frames[:7].tolist() == [0, 0, 0, 0, 4, 0, 2]
    assert "failed c3: frame-stats failed: RuntimeError" in str(summary)


def test_too_many_failures_abort_without_completing(tmp_path):
    manifest = _manifest(tmp_path, [(1.0, "garbage")] * 3 + [(1.0, "ok")])
    with pytest.raises(ExtractionError, match="3 of 4 clips failed"):
        extract(manifest, FrameStats(), tmp_path / "s.zarr", jobs=1, progress=False)
    assert not markers.is_complete(tmp_path / "s.zarr")


class PaddedFrameStats(FrameStats):
    """FrameStats that zero-pads clips shorter than one 0.5 s frame instead of refusing them."""

    min_duration_s = 0.0
    pad_below_s = 0.5

    def num_frames(self, n_samples):
        return max(1, n_samples // 4000)

    def embed(self, waveforms):
        return super().embed([np.pad(w, (0, max(0, 4000 - len(w)))) for w in waveforms])


def test_clips_a_teacher_pads_are_named_in_the_summary(tmp_path):
    manifest = _manifest(tmp_path, [(2.0, "ok"), (0.3, "ok"), (1.0, "ok")])
    summary = extract(
        manifest, PaddedFrameStats(), tmp_path / "s.zarr", batch_size=2, jobs=1, progress=False
    )
    assert summary.failed == {} and summary.embedded == 3
    assert list(summary.padded) == [manifest.clip_ids[1]]
    assert "0.300 s is shorter than frame-stats's 0.5 s: zero-padded" in str(summary)
    assert read_store(tmp_path / "s.zarr").n_frames.tolist() == [4, 1, 2]


def test_decode_workers_leave_joblib_parallel_usable(tmp_path):
    from joblib import Parallel, delayed

    manifest = _manifest(tmp_path, [(1.0, "ok")] * 4)
    summary = extract(
        manifest, FrameStats(), tmp_path / "s.zarr", batch_size=1, jobs=2, progress=False
    )
    assert summary.embedded == 4
    assert Parallel(n_jobs=2)(delayed(abs)(-i) for i in range(3)) == [0, 1, 2]
