"""The aisfx teacher: the PyTorch port against the ``aisfx==0.1.2`` wheel's own model and weights
(installed by ``make setup``), and its front end against a float64 reference of the paper's
Essentia spectrogram."""

import importlib.util
import itertools
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline.data.datasets.demo import render_instruments
from pipeline.teachers import InvalidWeightsError, MissingWeightsError, create_teacher
from pipeline.teachers.aisfx import (
    ENV_VAR,
    LOG_MAX,
    AisfxTeacher,
    default_weights_dir,
    log_mel,
    mel_filterbank,
    num_spectrogram_frames,
    read_aisfx_checkpoint,
    resolve_checkpoint,
)

SR = 44100
CHECKPOINT = default_weights_dir() / "checkpoint.pth"


@pytest.fixture(autouse=True)
def no_weights_env(monkeypatch):
    monkeypatch.delenv(ENV_VAR, raising=False)


@pytest.fixture(scope="module")
def teacher():
    return AisfxTeacher()


@pytest.fixture(scope="module")
def package_model():
    """The wheel's own ``CrossNet`` with its weights, built as aisfx's ``load_bestModel`` does."""
    from aisfx.models.cnn2d import CrossNet, EmbeddingNet

    state, datasets = read_aisfx_checkpoint(CHECKPOINT)
    model = CrossNet(EmbeddingNet("max", 3, 1, 64), datasets, "cpu")
    model.load_state_dict(state)
    return model.eval()


def _clip(instruments, seconds, seed=0):
    return render_instruments(instruments, duration_s=seconds, sr_hz=SR, seed=seed)


# --- float64 reference of the paper's Essentia chain ------------------------------------------
# Written loop by loop from Essentia's documented algorithms (FrameCutter with the first frame
# centred on sample 0, Windowing "hann" = symmetric Hann, Spectrum = |rfft|, MelBands with
# htkMel warping, weighting="warping", normalize="unit_sum", type="power"), as aisfx's
# spectrogram_essentia.compute_spectrogram configures them.


def _htk(f):
    return 2595.0 * np.log10(1.0 + f / 700.0)


def _reference_filterbank() -> np.ndarray:
    n_bins = 1025
    mels = np.linspace(_htk(0.0), _htk(22050.0), 98)
    edges = 700.0 * (10.0 ** (mels / 2595.0) - 1.0)
    bank = np.zeros((96, n_bins))
    for band in range(96):
        lo, centre, hi = edges[band : band + 3]
        for k in range(n_bins):
            f = k * SR / 2048
            if lo <= f < centre:
                bank[band, k] = (_htk(f) - _htk(lo)) / (_htk(centre) - _htk(lo))
            elif centre <= f < hi:
                bank[band, k] = (_htk(hi) - _htk(f)) / (_htk(hi) - _htk(centre))
        bank[band] /= bank[band].sum()
    return bank


def _reference_log_mel(wave: np.ndarray) -> np.ndarray:
    """(frames, 96) log10(10000·x + 1) in float64, time first as Essentia's Pool returns it."""
    x = np.asarray(wave, np.float64)
    n_frames = -(-len(x) // 1024) + 1
    window = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(2048) / 2047)
    bank = _reference_filterbank()
    out = np.zeros((n_frames, 96))
    for k in range(n_frames):
        frame = np.zeros(2048)
        start = (k - 1) * 1024
        seg = x[max(start, 0) : start + 2048]
        frame[max(-start, 0) : max(-start, 0) + len(seg)] = seg
        power = np.abs(np.fft.rfft(frame * window)) ** 2
        out[k] = np.log10(10000.0 * (bank @ power) + 1.0)
    return out


def test_filterbank_matches_essentia_melbands():
    ours = mel_filterbank()
    np.testing.assert_allclose(ours, _reference_filterbank(), rtol=0, atol=1e-12)
    # Read off Essentia 2.1b6.dev1389's MelBands (one unit spectrum bin at a time):
    # (band, first non-zero bin, number of non-zero bins, first weights).
    essentia = [
        (0, 1, 2, [0.7150638, 0.2849362]),
        (50, 164, 14, [0.01825417, 0.03770009, 0.05704766]),
        (95, 951, 73, [0.000136624, 0.0009106615, 0.001684039]),
    ]
    for band, first, count, weights in essentia:
        nonzero = np.flatnonzero(ours[band])
        assert (nonzero[0], len(nonzero)) == (first, count)
        np.testing.assert_allclose(
            ours[band, first : first + len(weights)], weights, rtol=0, atol=1e-6
        )  # Essentia: float32


def test_front_end_matches_float64_reference():
    bank = torch.from_numpy(mel_filterbank().astype(np.float32))
    for seconds, seed in ((3.0, 0), (1.1, 1)):
        wave = _clip(["piano", "drums"], seconds, seed)
        want = _reference_log_mel(wave)
        got = log_mel(torch.from_numpy(wave), bank, num_spectrogram_frames(len(wave)))
        assert got.shape == want.shape == (-(-len(wave) // 1024) + 1, 96)
        # float32 STFT and filterbank vs float64, on log10 values up to ~9.5.
        np.testing.assert_allclose(got.numpy() * LOG_MAX, want, rtol=0, atol=2e-4)


@pytest.mark.skipif(importlib.util.find_spec("essentia") is None, reason="essentia not installed")
def test_front_end_matches_the_packages_essentia_spectrogram(tmp_path):
    """Only where essentia is importable (it is no project dependency)."""
    import soundfile as sf

    path = importlib.util.find_spec("aisfx").submodule_search_locations[0]
    spec = importlib.util.spec_from_file_location(
        "aisfx_essentia", Path(path) / "spectrogram" / "spectrogram_essentia.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    wave = _clip(["flute"], 3.3, seed=1)
    sf.write(tmp_path / "clip.wav", wave, SR, subtype="FLOAT")
    want = module.compute_spectrogram(
        filename=str(tmp_path / "clip.wav"), sr=float(SR), block_size=2048, hop_size=1024,
        n_mels=96, f_min=0.0, f_max=22050.0,
    )  # fmt: skip
    bank = torch.from_numpy(mel_filterbank().astype(np.float32))
    got = log_mel(torch.from_numpy(wave), bank, num_spectrogram_frames(len(wave))).numpy()
    assert got.shape == want.shape
    np.testing.assert_allclose(got * LOG_MAX, want, rtol=0, atol=2e-4)


# --- network against the package's model ------------------------------------------------------


def test_checkpoint_is_read_with_weights_only():
    state, datasets = read_aisfx_checkpoint(CHECKPOINT)
    assert len(state) == 102 and sum(v.numel() for v in state.values()) == 6_216_770
    assert len(datasets) == 9


def test_embeddings_equal_the_packages_model(teacher, package_model):
    clips = [_clip(["piano"], 10.0), _clip(["drums", "guitar"], 4.0, 1), _clip(["flute"], 1.0, 2)]
    got = teacher.embed(clips)
    for clip, emb in zip(clips, got, strict=True):
        blocks = teacher.blocks(clip)
        with torch.no_grad():
            want = package_model.get_embedding(blocks).numpy()
        assert emb.shape == want.shape == (teacher.num_frames(len(clip)), 512)
        np.testing.assert_allclose(emb, want, rtol=1e-4, atol=1e-4)


def test_blocks_follow_the_papers_blocking(teacher):
    """100-frame blocks every 50 frames, time first; a short clip's block is zero-padded."""
    wave = _clip(["piano"], 10.0)
    spec = _reference_log_mel(wave) / LOG_MAX
    blocks = teacher.blocks(wave).numpy()
    assert blocks.shape == (7, 100, 96)
    for b in range(7):
        np.testing.assert_allclose(blocks[b], spec[50 * b : 50 * b + 100], atol=5e-5)
    short = _clip(["flute"], 1.0)
    [block] = teacher.blocks(short).numpy()
    n = num_spectrogram_frames(len(short))
    np.testing.assert_allclose(block[:n], _reference_log_mel(short) / LOG_MAX, atol=5e-5)
    assert not block[n:].any()


# --- frames, timing, options ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("n_samples", "blocks"),
    [
        (0, 1),
        (1, 1),
        (SR, 1),
        (100_353, 1),
        (151_552, 1),
        (151_553, 2),
        (10 * SR, 7),
        (30 * SR, 24),
    ],
)
def test_num_frames(teacher, n_samples, blocks):
    # 10 s: 432 spectrogram frames → ⌊(432 − 100) / 50⌋ + 1 = 7 blocks.
    assert teacher.num_frames(n_samples) == blocks


def test_timing_attributes(teacher):
    assert teacher.sample_rate_hz == SR and teacher.dim == 512
    assert teacher.hop_s == pytest.approx(51200 / SR)
    assert teacher.min_duration_s == 0.0
    assert num_spectrogram_frames(round(teacher.pad_below_s * SR)) == 100
    assert num_spectrogram_frames(round(teacher.pad_below_s * SR) - 1) == 99
    times = teacher.frame_times(10 * SR)
    np.testing.assert_allclose(times, (49.5 + 50 * np.arange(7)) * 1024 / SR)


def test_embed_shapes_determinism_and_batching(teacher):
    clips = [_clip(["piano"], s, seed=3) for s in (10.0, 3.5, 1.0, 0.2)]
    first = teacher.embed(clips)
    assert [e.shape for e in first] == [(7, 512), (2, 512), (1, 512), (1, 512)]
    assert all(e.dtype == np.float32 and np.isfinite(e).all() for e in first)
    for again, e in zip(teacher.embed(clips), first, strict=True):
        np.testing.assert_array_equal(again, e)
    small = AisfxTeacher(batch_size=3)
    for clip, e in zip(clips, first, strict=True):
        np.testing.assert_allclose(small.embed([clip])[0], e, rtol=1e-4, atol=1e-4)
    assert teacher.embed([]) == []
    with pytest.raises(ValueError, match="mono"):
        teacher.embed([np.zeros((2, SR), np.float32)])


def test_fingerprint_holds_the_weights_sha256(teacher):
    fp = create_teacher("aisfx").fingerprint()
    assert fp["teacher"] == "aisfx" and len(fp["weights_sha256"]) == 64
    assert fp == teacher.fingerprint()


# --- musically sensible -----------------------------------------------------------------------

INSTRUMENTS = ("piano", "drums", "flute", "guitar", "violin", "trumpet", "organ", "synthesizer")


def test_clips_of_one_instrument_are_closer_than_clips_of_two(teacher):
    """Three 5 s clips (different songs) per instrument: cosine similarity of clip means.

    The AUC of same-instrument pairs over different-instrument pairs was 0.85 with the real
    weights (0.78 with the blocks fed frequency first); chance is 0.5.
    """
    labels = [i for i in INSTRUMENTS for _ in range(3)]
    clips = [_clip([i], 5.0, seed=k) for k, i in enumerate(labels)]
    means = np.stack([e.mean(axis=0) for e in teacher.embed(clips)])
    means /= np.linalg.norm(means, axis=1, keepdims=True)
    sim = means @ means.T
    same, other = [], []
    for a, b in itertools.combinations(range(len(labels)), 2):
        (same if labels[a] == labels[b] else other).append(sim[a, b])
    auc = (np.array(same)[:, None] > np.array(other)[None, :]).mean()
    assert auc > 0.75, auc


# --- weights resolution -----------------------------------------------------------------------


def test_weights_from_env_var(monkeypatch, tmp_path):
    shutil.copy(CHECKPOINT, tmp_path / "aisfx.pth")
    monkeypatch.setenv(ENV_VAR, str(tmp_path / "aisfx.pth"))
    assert resolve_checkpoint(None) == tmp_path / "aisfx.pth"


def test_missing_weights_name_the_file_and_the_download(monkeypatch, tmp_path):
    monkeypatch.setattr("pipeline.teachers.aisfx.default_weights_dir", lambda: tmp_path / "site")
    with pytest.raises(MissingWeightsError) as err:
        AisfxTeacher(weights=tmp_path / "nowhere.pth")
    assert str(tmp_path / "nowhere.pth") in str(err.value)
    assert "pip install --no-deps aisfx==0.1.2" in str(err.value)
    with pytest.raises(MissingWeightsError) as err:
        AisfxTeacher()
    message = str(err.value)
    assert str(tmp_path / "site" / "checkpoint.pth") in message and f"${ENV_VAR}" in message


def test_foreign_checkpoint_is_refused(tmp_path):
    torch.save({"weight": torch.zeros(3)}, tmp_path / "other.pth")
    with pytest.raises(InvalidWeightsError, match="other.pth"):
        AisfxTeacher(weights=tmp_path / "other.pth")
