import numpy as np
import pytest
import soundfile as sf
import soxr

from pipeline.data.audio import (
    EmptyAudio,
    NonFiniteAudio,
    TooShortAudio,
    UndecodableAudio,
    load_audio,
    mix_to_mono,
    probe_duration,
)


def _tone(seconds, sr, hz=440.0, channels=1):
    t = np.arange(int(seconds * sr)) / sr
    mono = 0.5 * np.sin(2 * np.pi * hz * t)
    return np.stack([mono] * channels, 1) if channels > 1 else mono


@pytest.mark.parametrize(
    "fmt,ext", [("WAV", "wav"), ("FLAC", "flac"), ("OGG", "ogg"), ("MP3", "mp3")]
)
def test_decodes_real_formats_to_mono_at_the_asked_rate(tmp_path, fmt, ext):
    path = tmp_path / f"tone.{ext}"
    sf.write(path, _tone(1.0, 44100, channels=2), 44100, format=fmt)
    audio = load_audio(path, sr_hz=16000)
    assert audio.dtype == np.float32 and audio.ndim == 1
    assert abs(len(audio) - 16000) < 16000 * 0.1  # mp3 adds encoder padding
    spectrum = np.abs(np.fft.rfft(audio[2000:14000]))
    peak_hz = np.argmax(spectrum) * 16000 / 12000
    assert abs(peak_hz - 440) < 5
    assert probe_duration(path) == pytest.approx(1.0, abs=0.1)


def test_stereo_is_averaged_and_max_duration_crops(tmp_path):
    path = tmp_path / "lr.wav"
    left_right = np.stack([np.full(8000, 0.5), np.full(8000, -0.1)], 1)
    sf.write(path, left_right, 8000, subtype="FLOAT")
    audio = load_audio(path, sr_hz=8000, max_duration_s=0.5)
    assert len(audio) == 4000
    np.testing.assert_allclose(audio, 0.2, atol=1e-6)


@pytest.mark.parametrize("channels", [1, 2, 3, 6])
def test_mixing_equals_numpy_mean_bit_for_bit(channels):
    rng = np.random.default_rng(channels)
    scale = rng.uniform(1e-3, 10.0, (1, channels))
    audio = (rng.standard_normal((50_001, channels)) * scale).astype(np.float32)
    mono = mix_to_mono(audio)
    assert mono.dtype == np.float32 and mono.shape == (50_001,)
    np.testing.assert_array_equal(mono, audio.mean(axis=1))


@pytest.mark.parametrize(
    "fmt,ext,channels",
    [
        ("WAV", "wav", 2),
        ("FLAC", "flac", 2),
        ("OGG", "ogg", 2),
        ("MP3", "mp3", 2),
        ("WAV", "wav", 6),
    ],
)
def test_output_equals_decode_mix_resample_bit_for_bit(tmp_path, fmt, ext, channels):
    """load_audio is soundfile's float32 decode, the channel mean and soxr HQ, nothing else."""
    rng = np.random.default_rng(7)
    path = tmp_path / f"clip.{ext}"
    sf.write(path, 0.3 * rng.uniform(-1, 1, (44100 * 2, channels)), 44100, format=fmt)
    decoded, rate = sf.read(path, dtype="float32", always_2d=True)
    reference = soxr.resample(decoded.mean(axis=1), rate, 32000, quality="HQ")
    np.testing.assert_array_equal(load_audio(path, sr_hz=32000), reference)
    np.testing.assert_array_equal(load_audio(path, sr_hz=rate), decoded.mean(axis=1))


def test_typed_errors_name_the_clip_and_the_cause(tmp_path):
    garbage = tmp_path / "garbage.wav"
    garbage.write_bytes(b"RIFF nonsense")
    with pytest.raises(UndecodableAudio, match="^c1: cannot decode"):
        load_audio(garbage, sr_hz=16000, clip="c1")
    with pytest.raises(UndecodableAudio, match="^c2: file not found"):
        load_audio(tmp_path / "absent.wav", sr_hz=16000, clip="c2")

    empty = tmp_path / "empty.wav"
    sf.write(empty, np.zeros(0), 16000)
    with pytest.raises(EmptyAudio, match="^c3: no audio samples"):
        load_audio(empty, sr_hz=16000, clip="c3")

    short = tmp_path / "short.wav"
    sf.write(short, _tone(0.1, 16000), 16000)
    with pytest.raises(TooShortAudio, match="^c4: 0.100 s long, needs at least 1.0 s"):
        load_audio(short, sr_hz=16000, min_duration_s=1.0, clip="c4")

    nan = tmp_path / "nan.wav"
    samples = _tone(0.5, 16000).astype(np.float32)
    samples[100] = np.nan
    sf.write(nan, samples, 16000, subtype="FLOAT")
    with pytest.raises(NonFiniteAudio, match="^c5: non-finite samples: 1 NaN and 0 infinite"):
        load_audio(nan, sr_hz=16000, clip="c5")
    assert np.isnan(probe_duration(garbage))
