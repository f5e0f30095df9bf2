"""Mel front ends: agreement with torchaudio's Kaldi filterbank, frame counts, the encoder
interface, caching, and the warp of cached log-mels to jittered band limits.

torchaudio does not import on these machines; the reference filterbank is its own
``compliance/kaldi.py``, loaded from the installed package's files (as tests/test_passt.py does).
"""

import dataclasses
import importlib.util
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
import soundfile as sf
import torch

from pipeline.data.audio import load_audio
from pipeline.data.manifest import make_manifest
from pipeline.extract.frontends import (
    FRONTENDS,
    RECIPE,
    MelConfig,
    MelFrontEnd,
    MelSpectrogram,
    create_frontend,
    frontend_config,
    list_frontends,
    mel_filterbank,
    num_frames,
)
from pipeline.extract.local import extract
from pipeline.extract.melbanks import jitter_mel_bands, kaldi_mel_filterbank, warp_mel_bands
from pipeline.stores import read_store


def load_torchaudio_kaldi() -> ModuleType:
    """torchaudio's ``compliance/kaldi.py``, executed from its file with a bare ``torchaudio``
    stand-in in ``sys.modules`` (the file imports it; the mel filterbank does not use it)."""
    spec = importlib.util.find_spec("torchaudio")
    if spec is None or not spec.submodule_search_locations:
        pytest.fail(
            "torchaudio's files are needed as the reference for the mel filterbank: "
            "pip install --no-deps torchaudio==2.11.0"
        )
    kaldi_file = Path(spec.submodule_search_locations[0]) / "compliance" / "kaldi.py"
    kaldi_spec = importlib.util.spec_from_file_location("torchaudio.compliance.kaldi", kaldi_file)
    kaldi = importlib.util.module_from_spec(kaldi_spec)
    with pytest.MonkeyPatch.context() as mp:
        mp.setitem(sys.modules, "torchaudio", ModuleType("torchaudio"))
        kaldi_spec.loader.exec_module(kaldi)
    return kaldi


@pytest.fixture(scope="module")
def kaldi():
    return load_torchaudio_kaldi()


def _torchaudio_banks(kaldi, n_mels, n_fft, sample_rate, fmin, fmax, dtype=torch.float32):
    """``get_mel_banks`` (no VTLN warping) computed in ``dtype`` (its default dtype)."""
    default = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        banks, _ = kaldi.get_mel_banks(n_mels, n_fft, sample_rate, fmin, fmax, 100.0, -500.0, 1.0)
    finally:
        torch.set_default_dtype(default)
    assert banks.dtype == dtype
    return banks


def _noise(n_samples, seed=0):
    return np.random.default_rng(seed).uniform(-0.5, 0.5, n_samples).astype(np.float32)


def _sine(freq_hz, seconds, sr_hz):
    t = np.arange(int(seconds * sr_hz)) / sr_hz
    return (0.5 * np.sin(2 * np.pi * freq_hz * t)).astype(np.float32)


def _music(seconds, sr_hz, seed):
    """Music-like test audio: harmonic tones with vibrato and decaying notes, over soft noise."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * sr_hz)) / sr_hz
    x = 0.05 * rng.standard_normal(len(t))
    for _ in range(4):
        f0, note_s = rng.uniform(50, 1000), rng.uniform(0.2, 1.0)
        envelope = np.exp(-(t % note_s) * rng.uniform(1, 8))
        vibrato = 3 * np.sin(2 * np.pi * 5 * t)
        for h in range(1, int(sr_hz / 2 / f0)):
            x += envelope * np.sin(2 * np.pi * f0 * h * t + vibrato) / h
    return (0.1 * x / np.abs(x).max()).astype(np.float32)


def _reference(waveform, cfg, kaldi):
    """The same front end in float64 with numpy's FFT and torchaudio's filterbank."""
    x = waveform.astype(np.float64)
    if cfg.preemphasis:
        x = x[1:] - cfg.preemphasis * x[:-1]
    n = np.arange(cfg.win_length)
    window = np.zeros(cfg.n_fft)
    start = (cfg.n_fft - cfg.win_length) // 2
    window[start : start + cfg.win_length] = 0.5 - 0.5 * np.cos(2 * np.pi * n / (n[-1]))
    padded = np.pad(x, cfg.n_fft // 2, mode="reflect")
    n_frames = 1 + (len(padded) - cfg.n_fft) // cfg.hop_length
    frames = padded[np.arange(n_frames)[:, None] * cfg.hop_length + np.arange(cfg.n_fft)]
    power = np.abs(np.fft.rfft(frames * window, axis=1).T) ** cfg.power
    banks = _torchaudio_banks(
        kaldi, cfg.n_mels, cfg.n_fft, cfg.sample_rate_hz, cfg.f_min_hz, cfg.f_max_hz, torch.float64
    )
    filterbank = np.pad(banks.numpy(), ((0, 0), (0, 1)))  # the Nyquist bin
    mel = filterbank @ power
    return (np.log(mel + cfg.log_offset) + cfg.norm_shift) / cfg.norm_scale


# --- filterbank ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("n_mels", "n_fft", "sample_rate", "fmin", "fmax"),
    [
        (128, 1024, 32000, 0.0, 16000.0),
        (96, 1024, 16000, 0.0, 8000.0),
        (128, 1024, 32000, 0.0, 15000.0),
        (64, 512, 16000, 50.0, 8000.0),
        (23, 400, 16000, 20.0, -400),
    ],
)
def test_kaldi_filterbank_equals_torchaudio(kaldi, n_mels, n_fft, sample_rate, fmin, fmax):
    expected = _torchaudio_banks(kaldi, n_mels, n_fft, sample_rate, fmin, fmax)
    got = kaldi_mel_filterbank(n_mels, n_fft, sample_rate, fmin_hz=fmin, fmax_hz=fmax)
    assert got.shape == (n_mels, n_fft // 2 + 1) and got.dtype == torch.float32
    np.testing.assert_array_equal(got[:, :-1].numpy(), expected.numpy())  # same float32 maths
    assert not got[:, -1].any()  # the Nyquist bin
    assert (got.sum(dim=1) > 0).all()


@pytest.mark.parametrize("preset", ["cp_resnet", "mobile_fcn"])
def test_filterbank_is_kaldis_with_peak_one(preset):
    cfg = frontend_config(preset)
    fb = mel_filterbank(cfg)
    assert fb.shape == (cfg.n_mels, cfg.n_fft // 2 + 1) and not fb[:, -1].any()
    peaks = fb.max(dim=1).values
    assert (peaks > 0).all() and float(peaks.max()) <= 1.0
    assert float(peaks.max()) > 0.999
    # Triangles of height 1, shown on a fine frequency grid (the FFT bins miss most apexes).
    fine = kaldi_mel_filterbank(
        cfg.n_mels, 2**15, cfg.sample_rate_hz, fmin_hz=cfg.f_min_hz, fmax_hz=cfg.f_max_hz
    )
    assert (fine.max(dim=1).values > 0.95).all()
    assert float(fb[-1].sum()) > 10  # not area-normalised: wide bands sum to more
    # HTK mel: band edges equally spaced in 1127·ln(1 + f / 700) from f_min to f_max.
    bin_hz = np.arange(fb.shape[1]) * cfg.sample_rate_hz / cfg.n_fft
    edges_hz = 700 * np.expm1(
        np.linspace(0, 1127 * np.log1p(cfg.f_max_hz / 700), cfg.n_mels + 2) / 1127
    )
    last = fb[-1].numpy()
    assert bin_hz[last > 0].min() > edges_hz[-3] and bin_hz[last > 0].max() < edges_hz[-1]


def test_bad_filterbanks_raise():
    with pytest.raises(ValueError, match="mel filterbank"):
        kaldi_mel_filterbank(128, 1024, 32000, fmin_hz=0.0, fmax_hz=17000.0)
    with pytest.raises(ValueError, match="mel filterbank"):
        kaldi_mel_filterbank(3, 1024, 32000, fmin_hz=0.0, fmax_hz=16000.0)
    with pytest.raises(ValueError, match="mel filterbank"):
        kaldi_mel_filterbank(64, 1023, 32000, fmin_hz=0.0, fmax_hz=16000.0)


# --- front end ----------------------------------------------------------------------------------


@pytest.mark.parametrize("preset", ["cp_resnet", "mobile_fcn"])
@pytest.mark.parametrize("signal", ["noise", "sine", "music"])
def test_matches_the_float64_kaldi_reference(kaldi, preset, signal):
    cfg = frontend_config(preset)
    sr = cfg.sample_rate_hz
    wave = {
        "noise": lambda: _noise(sr // 2 + 123),
        "sine": lambda: _sine(440.0, 0.5, sr),
        "music": lambda: _music(0.7, sr, seed=3),
    }[signal]()
    got = MelSpectrogram(cfg)(torch.from_numpy(wave)).numpy()
    want = _reference(wave, cfg, kaldi)
    assert got.shape == want.shape == (cfg.n_mels, num_frames(len(wave), cfg.hop_length))
    np.testing.assert_allclose(got, want, atol=1e-4, rtol=0)


def test_ten_second_clips_give_the_documented_frame_counts():
    for preset, frames in [("cp_resnet", 1000), ("mobile_fcn", 500)]:
        cfg = frontend_config(preset)
        batch = torch.zeros(2, 10 * cfg.sample_rate_hz)
        assert MelSpectrogram(cfg)(batch).shape == (2, cfg.n_mels, frames)
        assert MelFrontEnd(preset).num_frames(10 * cfg.sample_rate_hz) == frames


def test_num_frames_counts_the_sample_preemphasis_takes():
    assert [num_frames(n, 320) for n in (320, 321, 640, 641)] == [1, 2, 2, 3]
    assert [num_frames(n, 320, preemphasis=False) for n in (319, 320, 640)] == [1, 2, 3]
    plain = MelFrontEnd("mobile_fcn", preemphasis=None)
    assert plain.num_frames(640) == 3 == len(plain.embed([_noise(640)])[0])
    frontend = MelFrontEnd("mobile_fcn")
    assert frontend.num_frames(640) == 2 == len(frontend.embed([_noise(640)])[0])
    # Reflect padding needs n_fft // 2 + 1 = 513 samples after the pre-emphasis.
    assert frontend.embed([_noise(514)])[0].shape == (2, 96)
    with pytest.raises(ValueError, match="too few"):
        frontend.embed([_noise(513)])


def test_preemphasis_is_valid_filtering():
    cfg = dataclasses.replace(FRONTENDS["mobile_fcn"], norm_shift=0.0, norm_scale=1.0)
    wave = _noise(4000, seed=4)
    emphasised = wave[1:] - np.float32(0.97) * wave[:-1]
    got = MelSpectrogram(cfg)(torch.from_numpy(wave))
    plain = MelSpectrogram(dataclasses.replace(cfg, preemphasis=None))(torch.from_numpy(emphasised))
    torch.testing.assert_close(got, plain, rtol=0, atol=1e-6)


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
    window = module.window.double().numpy()  # symmetric Hann: 0 at both ends
    np.testing.assert_allclose(
        window, 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(800) / 799), atol=1e-6
    )
    assert window[0] == window[-1] == 0 and window[399] == window[400]


@pytest.mark.parametrize("preset", ["cp_resnet", "mobile_fcn"])
def test_a_1khz_sine_peaks_in_the_band_that_holds_1khz(preset):
    cfg = frontend_config(preset)
    [mel] = MelFrontEnd(preset).embed([_sine(1000.0, 1.0, cfg.sample_rate_hz)])
    peak_band = int(mel.mean(axis=0).argmax())
    fb = mel_filterbank(cfg).numpy()
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
    assert {"recipe", "output_version"} <= set(fingerprint) and "code" not in fingerprint
    assert fingerprint["recipe"] == RECIPE and "librosa_version" not in fingerprint
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
        "import sys, pipeline.extract.frontends; "
        "bad = [m for m in sys.modules if m.startswith('pipeline.teachers') or m == 'zarr']; "
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_zero_log_mel_is_the_normalised_value_of_log_mel_zero():
    cfg = FRONTENDS["cp_resnet"]
    assert cfg.zero_log_mel == pytest.approx(3.7 / 3.1)
    # A mel power of 1 - log_offset has log-mel 0: the front end maps it to zero_log_mel.
    assert (np.log(1.0) + cfg.norm_shift) / cfg.norm_scale == pytest.approx(cfg.zero_log_mel)
    assert MelConfig(**{**dataclasses.asdict(cfg), "norm_shift": -1.0}).zero_log_mel < 0


# --- band-limit jitter --------------------------------------------------------------------------


def _corr(a, b):
    a, b = a.flatten() - a.mean(), b.flatten() - b.mean()
    return float(a @ b / (a.norm() * b.norm()))


@pytest.fixture(scope="module")
def music_mels():
    """Normalised log-mels of four 1.5 s music-like clips under cp_resnet: (4, 128, 150)."""
    cfg = FRONTENDS["cp_resnet"]
    waves = torch.from_numpy(np.stack([_music(1.5, cfg.sample_rate_hz, s) for s in range(4)]))
    return waves, MelSpectrogram(cfg)(waves)


def test_zero_jitter_is_the_identity(music_mels):
    cfg = FRONTENDS["cp_resnet"]
    _, mel = music_mels
    same = warp_mel_bands(
        mel, config=cfg, fmin_hz=torch.full((4,), cfg.f_min_hz), fmax_hz=torch.full((4,), 16e3)
    )
    assert torch.equal(same, mel)
    generator = torch.Generator().manual_seed(0)
    off = jitter_mel_bands(mel, config=cfg, generator=generator, fmin_range_hz=0, fmax_range_hz=0)
    assert torch.equal(off, mel)
    half = mel.half()
    assert torch.equal(
        jitter_mel_bands(half, config=cfg, generator=generator, fmin_range_hz=0, fmax_range_hz=0),
        half,
    )


def test_warp_approximates_recomputing_with_the_jittered_filterbank(music_mels):
    """The warp against the exact log-mels of jittered limits, and doing nothing against them.

    Measured here (4 clips × 2 draws of EAsT's ranges), in normalised log-mel units: mean
    |error| 0.069 with the warp, 0.211 without; correlation with the exact log-mels 0.989 with
    the warp, 0.888 without; correlation of the warp's change with the exact change 0.949.
    """
    cfg = FRONTENDS["cp_resnet"]
    waves, mel = music_mels
    generator = torch.Generator().manual_seed(1)
    cached, exact, warped = [], [], []
    for _ in range(2):
        fmin = cfg.f_min_hz + torch.randint(0, 20, (4,), generator=generator)
        fmax = cfg.f_max_hz - torch.randint(0, 2000, (4,), generator=generator)
        for wave, a, b in zip(waves, fmin.tolist(), fmax.tolist(), strict=True):
            jittered = dataclasses.replace(cfg, f_min_hz=float(a), f_max_hz=float(b))
            exact.append(MelSpectrogram(jittered)(wave))
        warped.append(warp_mel_bands(mel, config=cfg, fmin_hz=fmin, fmax_hz=fmax))
        cached.append(mel)
    cached, exact, warped = torch.cat(cached), torch.stack(exact), torch.cat(warped)
    error_warp = float((warped - exact).abs().mean())
    error_none = float((cached - exact).abs().mean())
    assert error_none > 0.15  # the jitter matters
    assert error_warp < 0.45 * error_none
    assert _corr(warped - cached, exact - cached) > 0.85
    assert _corr(warped, exact) > _corr(cached, exact) + 0.03


def test_jitter_draws_limits_per_clip_from_the_generator(music_mels):
    cfg = FRONTENDS["cp_resnet"]
    _, mel = music_mels
    got = jitter_mel_bands(mel, config=cfg, generator=torch.Generator().manual_seed(7))
    draws = torch.Generator().manual_seed(7)  # f_min offsets first, then f_max offsets
    fmin = cfg.f_min_hz + torch.randint(0, 20, (4,), generator=draws)
    fmax = cfg.f_max_hz - torch.randint(0, 2000, (4,), generator=draws)
    assert torch.equal(got, warp_mel_bands(mel, config=cfg, fmin_hz=fmin, fmax_hz=fmax))
    again = jitter_mel_bands(mel, config=cfg, generator=torch.Generator().manual_seed(7))
    assert torch.equal(got, again) and got.dtype == mel.dtype and got.shape == mel.shape
    # Each clip its own limits: the same clip four times comes out four ways.
    copies = jitter_mel_bands(mel[:1].expand(4, -1, -1), config=cfg, generator=draws)
    assert len({c.sum().item() for c in copies}) == 4


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"fmin_range_hz": -1}, "fmin_range_hz"),
        ({"fmax_range_hz": 2.5}, "fmax_range_hz"),
        ({"fmax_range_hz": 17_000}, "cross"),
    ],
)
def test_bad_jitter_raises(kwargs, message):
    mel = torch.zeros(2, 128, 5)
    generator = torch.Generator()
    with pytest.raises(ValueError, match=message):
        jitter_mel_bands(mel, config=FRONTENDS["cp_resnet"], generator=generator, **kwargs)
    with pytest.raises(ValueError, match="log-mels"):
        jitter_mel_bands(mel[:, :96], config=FRONTENDS["cp_resnet"], generator=generator)
