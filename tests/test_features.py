"""Mel front ends: agreement with librosa, frame counts, the encoder interface, caching."""

import dataclasses
import subprocess
import sys

import librosa
import numpy as np
import pytest
import soundfile as sf
import torch

from pipeline.audio import load_audio
from pipeline.extract import extract
from pipeline.features import (
    FRONTENDS,
    MelConfig,
    MelFrontEnd,
    MelSpectrogram,
    create_frontend,
    frontend_config,
    list_frontends,
    num_frames,
)
from pipeline.manifest import make_manifest
from pipeline.store import read_store


def _noise(n_samples, seed=0):
    return np.random.default_rng(seed).uniform(-0.5, 0.5, n_samples).astype(np.float32)


def _sine(freq_hz, seconds, sr_hz):
    t = np.arange(int(seconds * sr_hz)) / sr_hz
    return (0.5 * np.sin(2 * np.pi * freq_hz * t)).astype(np.float32)


def _librosa_reference(waveform, cfg):
    """The same front end written with numpy and librosa only, in float64."""
    x = waveform.astype(np.float64)
    if cfg.preemphasis:
        x = np.concatenate([x[:1], x[1:] - cfg.preemphasis * x[:-1]])
    spec = librosa.stft(
        x,
        n_fft=cfg.n_fft,
        hop_length=cfg.hop_length,
        win_length=cfg.win_length,
        window="hann",
        center=True,
        pad_mode="reflect",
    )
    fb = librosa.filters.mel(
        sr=cfg.sample_rate_hz,
        n_fft=cfg.n_fft,
        n_mels=cfg.n_mels,
        fmin=cfg.f_min_hz,
        fmax=cfg.f_max_hz,
        dtype=np.float64,
    )
    mel = fb @ (np.abs(spec) ** cfg.power)
    return (np.log(mel + cfg.log_offset) + cfg.norm_shift) / cfg.norm_scale


@pytest.mark.parametrize("preset", ["cp_resnet", "mobile_fcn"])
@pytest.mark.parametrize("signal", ["noise", "sine"])
def test_matches_librosa(preset, signal):
    cfg = frontend_config(preset)
    sr = cfg.sample_rate_hz
    wave = _noise(sr // 2 + 123) if signal == "noise" else _sine(440.0, 0.5, sr)
    got = MelSpectrogram(cfg)(torch.from_numpy(wave)).numpy()
    want = _librosa_reference(wave, cfg)
    assert got.shape == want.shape == (cfg.n_mels, num_frames(len(wave), cfg.hop_length))
    np.testing.assert_allclose(got, want, atol=1e-4, rtol=0)


def test_ten_second_clips_give_the_documented_frame_counts():
    for preset, frames in [("cp_resnet", 1001), ("mobile_fcn", 501)]:
        cfg = frontend_config(preset)
        batch = torch.zeros(2, 10 * cfg.sample_rate_hz)
        assert MelSpectrogram(cfg)(batch).shape == (2, cfg.n_mels, frames)
        assert MelFrontEnd(preset).num_frames(10 * cfg.sample_rate_hz) == frames


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_gpu_matches_cpu():
    waves = [_noise(20_000, seed=1), _noise(7_000, seed=2)]
    cpu = MelFrontEnd("cp_resnet").embed(waves)
    gpu = MelFrontEnd("cp_resnet", device="cuda").embed(waves)
    for a, b in zip(cpu, gpu, strict=True):
        np.testing.assert_allclose(a, b, atol=1e-4, rtol=0)


def test_buffers_are_float32_and_not_saved():
    module = MelSpectrogram(FRONTENDS["cp_resnet"])
    assert module.filterbank.dtype == module.window.dtype == torch.float32
    assert module.filterbank.shape == (128, 513) and module.window.shape == (800,)
    assert dict(module.state_dict()) == {}


@pytest.mark.parametrize("preset", ["cp_resnet", "mobile_fcn"])
def test_a_1khz_sine_peaks_in_the_band_that_holds_1khz(preset):
    cfg = frontend_config(preset)
    [mel] = MelFrontEnd(preset).embed([_sine(1000.0, 1.0, cfg.sample_rate_hz)])
    peak_band = int(mel.mean(axis=0).argmax())
    fb = librosa.filters.mel(
        sr=cfg.sample_rate_hz, n_fft=cfg.n_fft, n_mels=cfg.n_mels, fmax=cfg.f_max_hz
    )
    bin_1khz = round(1000.0 * cfg.n_fft / cfg.sample_rate_hz)
    assert fb[peak_band, bin_1khz] > 0
    assert peak_band == int(fb[:, bin_1khz].argmax())


def test_batch_results_equal_single_clip_results():
    frontend = MelFrontEnd("mobile_fcn")
    waves = [_noise(n, seed=n) for n in (16_000, 5_000, 23_456, 1_024)]
    batch = frontend.embed(waves)
    for wave, got in zip(waves, batch, strict=True):
        [alone] = frontend.embed([wave])
        assert got.dtype == np.float32 and got.shape == (frontend.num_frames(len(wave)), 96)
        np.testing.assert_array_equal(got, alone)


def test_frontend_attributes():
    frontend = MelFrontEnd("cp_resnet")
    assert frontend.name == "mel-cp_resnet"
    assert (frontend.sample_rate_hz, frontend.dim) == (32_000, 128)
    assert frontend.hop_s == pytest.approx(0.01)
    assert frontend.min_duration_s == pytest.approx(1024 / 32_000)
    assert list_frontends() == ["cp_resnet", "mobile_fcn"]
    assert create_frontend("mel-mobile_fcn", n_mels=None).config == FRONTENDS["mobile_fcn"]


def test_overrides_change_the_fingerprint():
    base = MelFrontEnd("cp_resnet")
    small = MelFrontEnd("cp_resnet", n_mels=64)
    assert small.dim == 64 and small.embed([_noise(4000)])[0].shape == (13, 64)
    assert base.fingerprint() == MelFrontEnd("cp_resnet").fingerprint()
    assert base.fingerprint()["n_mels"] == 128 and small.fingerprint()["n_mels"] == 64
    fingerprint = base.fingerprint()
    assert fingerprint["frontend"] == "cp_resnet"
    assert {f.name for f in dataclasses.fields(MelConfig)} <= set(fingerprint)
    assert {"librosa_version", "code", "pipeline_version"} <= set(fingerprint)
    assert MelFrontEnd("cp_resnet", preemphasis=0).fingerprint()["preemphasis"] is None


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"f_max_hz": 20_000.0}, "f_max_hz"),
        ({"f_min_hz": 9_000.0, "f_max_hz": 8_000.0}, "f_min_hz"),
        ({"win_length": 2048}, "win_length"),
        ({"hop_length": 0}, "hop_length"),
        ({"n_mels": 64.0}, "n_mels"),
        ({"preemphasis": 1.5}, "preemphasis"),
        ({"log_offset": 0.0}, "log_offset"),
        ({"norm_scale": -1.0}, "norm_scale"),
        ({"n_bands": 64}, "unknown MelConfig fields"),
    ],
)
def test_invalid_configs_raise(overrides, message):
    with pytest.raises(ValueError, match=message):
        MelFrontEnd("cp_resnet", **overrides)


def test_unknown_preset_and_too_short_clips_raise():
    with pytest.raises(ValueError, match="cp_resnet, mobile_fcn"):
        frontend_config("vggish")
    with pytest.raises(ValueError, match="too few"):
        MelFrontEnd("mobile_fcn").embed([np.zeros(512, np.float32)])


def test_extract_caches_spectrograms_in_a_clip_store(tmp_path):
    specs = [(1.0, 16_000), (0.7, 22_050), (1.3, 16_000), (0.03, 16_000)]  # last: too short
    paths = []
    for i, (seconds, sr) in enumerate(specs):
        paths.append(tmp_path / f"{i}.wav")
        sf.write(paths[-1], _noise(int(seconds * sr), seed=i), sr)
    manifest = make_manifest(
        "toy",
        clip_ids=[f"c{i}" for i in range(len(specs))],
        paths=paths,
        splits=["train"] * len(specs),
        classes=["a"],
        labels=np.zeros((len(specs), 1)),
    )
    frontend = MelFrontEnd("mobile_fcn")
    out = tmp_path / "mel-mobile_fcn.zarr"
    summary = extract(
        manifest, frontend, out, jobs=1, batch_size=2, progress=False, max_failed_fraction=0.5
    )
    assert set(summary.failed) == {"c3"} and "needs at least" in summary.failed["c3"]
    store = read_store(out)
    assert store.dim == 96 and store.fingerprint == frontend.fingerprint()
    # Raw chunks (log-mels hardly compress), still read directly.
    assert store._group.attrs["layout"]["compression"] == "none" and store.reads_directly
    for clip, path in zip(manifest.clip_ids[:3], paths, strict=False):
        [want] = frontend.embed([load_audio(path, sr_hz=16_000)])
        got = store.read(clip)
        assert got.shape == want.shape
        np.testing.assert_allclose(got, want, rtol=1e-3, atol=1e-3)


def test_importing_features_imports_no_teacher_and_no_zarr():
    code = (
        "import sys, pipeline.features; "
        "bad = [m for m in sys.modules if m.startswith('pipeline.teachers') or m == 'zarr']; "
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
