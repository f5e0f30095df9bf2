"""The OpenL3 teacher, on random weights saved in torch.hub's cache as torchopenl3 expects them."""

import zipfile

import numpy as np
import pytest
import torch
import torchopenl3
from stand_ins import random_openl3, write_openl3_weights
from torchopenl3.utils import preprocess_audio_batch

from pipeline.teachers import MissingWeightsError, create_teacher, file_sha256
from pipeline.teachers.openl3 import (
    LOAD_SHIFT,
    WEIGHTS_ENV,
    InvalidWeightsError,
    OpenL3Teacher,
    count_windows,
    frame_windows,
)

SR = 48000
FILENAME = "torchopenl3_mel128_music_512.pth.tar"
URL = "https://github.com/torchopenl3/torchopenl3-models/raw/master/" + FILENAME
DURATIONS_S = (1.3, 2.2, 3.0, 0.4)  # 2, 3, 4 and 1 windows at hop 0.96 s, centred


@pytest.fixture(scope="module")
def reference():
    """mel128/music/512 OpenL3 with random weights and BatchNorm statistics far from 0 / 1."""
    return random_openl3()


@pytest.fixture(scope="module")
def torch_home(reference, tmp_path_factory):
    """A $TORCH_HOME whose hub cache holds the checkpoint where torchopenl3 would download it."""
    home = tmp_path_factory.mktemp("torch-home")
    write_openl3_weights(home / "hub" / "checkpoints", model=reference)
    return home


@pytest.fixture(scope="module")
def checkpoint(torch_home):
    return torch_home / "hub" / "checkpoints" / FILENAME


@pytest.fixture(autouse=True)
def empty_torch_home(tmp_path_factory, monkeypatch):
    """No test sees the real torch.hub cache or $OPENL3_WEIGHTS unless it sets them."""
    home = tmp_path_factory.mktemp("empty-torch-home")
    monkeypatch.setenv("TORCH_HOME", str(home))
    monkeypatch.delenv(WEIGHTS_ENV, raising=False)
    return home


def _teacher_from_home(torch_home, **options):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TORCH_HOME", str(torch_home))
        mp.delenv(WEIGHTS_ENV, raising=False)
        return OpenL3Teacher(**options)


@pytest.fixture(scope="module")
def teacher(torch_home):
    return _teacher_from_home(torch_home)


def _noise(n_samples, seed):
    return (0.1 * np.random.default_rng(seed).standard_normal(n_samples)).astype(np.float32)


@pytest.fixture(scope="module")
def clips():
    return [_noise(round(s * SR), seed) for seed, s in enumerate(DURATIONS_S)]


@pytest.fixture(scope="module")
def clip_embeddings(teacher, clips):
    return teacher.embed(clips)


def _package_embeddings(model, clips, hop_s=0.96, center=True):
    """torchopenl3's own ``get_audio_embedding`` on a list of clips, as numpy arrays."""
    embeddings, timestamps = torchopenl3.get_audio_embedding(
        [c.copy() for c in clips],  # it replaces list items by tensors
        SR,
        model=model,
        hop_size=hop_s,
        center=center,
        verbose=False,
    )
    return [e.numpy() for e in embeddings], timestamps


@pytest.fixture(scope="module")
def package_output(reference, clips):
    return _package_embeddings(reference, clips)


def _assert_close(actual, desired):
    """Equal up to float32 rounding that differs with the batch a window ran in."""
    np.testing.assert_allclose(actual, desired, rtol=1e-4, atol=1e-5)


def test_embeddings_equal_the_package(teacher, clip_embeddings, package_output, checkpoint):
    assert teacher.weights == checkpoint  # found in torch.hub's cache under $TORCH_HOME
    expected, _ = package_output
    assert [e.shape for e in clip_embeddings] == [(2, 512), (3, 512), (4, 512), (1, 512)]
    for got, want in zip(clip_embeddings, expected, strict=True):
        assert got.dtype == np.float32
        _assert_close(got, want)
    assert np.std(clip_embeddings[2]) > 0
    assert not np.allclose(clip_embeddings[2][0], clip_embeddings[2][1])
    assert not np.allclose(clip_embeddings[0][0], clip_embeddings[1][0])


def test_frame_counts_and_times(teacher, clips, clip_embeddings, package_output):
    assert (teacher.sample_rate_hz, teacher.dim) == (SR, 512)
    assert teacher.hop_s == 0.96 and teacher.hop_samples == 46080
    assert teacher.pad_below_s == 1.0 and teacher.min_duration_s == 0.0
    _, package_times = package_output
    for clip, embedding, times in zip(clips, clip_embeddings, package_times, strict=True):
        assert teacher.num_frames(len(clip)) == len(embedding)
        np.testing.assert_allclose(teacher.frame_times(len(clip)), times)
    # A 10 s clip: 0.5 s of zeros before it, 10.5 s in 1 s windows every 0.96 s → 11 frames,
    # the "10–11 teacher frames" the paper stretches ×6 (66) and cuts to CP ResNet's 62.
    assert teacher.num_frames(10 * SR) == 11
    np.testing.assert_allclose(teacher.frame_times(10 * SR), 0.96 * np.arange(11))
    assert teacher.num_frames(29 * SR) == 31  # a MagnaTagATune clip
    assert teacher.num_frames(0) == teacher.num_frames(1) == 1  # never zero frames


@pytest.mark.slow
def test_ten_second_clip(teacher, reference):
    clip = _noise(10 * SR, seed=10)
    [embedding] = teacher.embed([clip])
    assert embedding.shape == (teacher.num_frames(10 * SR), 512) == (11, 512)
    [expected], _ = _package_embeddings(reference, [clip])
    _assert_close(embedding, expected)


def test_windows_of_many_clips_run_together_in_chunks(teacher, clips, clip_embeddings, monkeypatch):
    calls = []
    forward = teacher._forward

    def spy(windows):
        calls.append(windows.shape)
        return forward(windows)

    monkeypatch.setattr(teacher, "_forward", spy)
    monkeypatch.setattr(teacher, "batch_size", 3)
    chunked = teacher.embed(clips)
    assert calls == [(3, SR), (3, SR), (3, SR), (1, SR)]  # 10 windows of 4 clips
    for got, want in zip(chunked, clip_embeddings, strict=True):
        _assert_close(got, want)
    assert teacher.embed([]) == []


def test_embed_is_deterministic(teacher, clips, clip_embeddings):
    first = teacher.embed([clips[0]])
    second = teacher.embed([clips[0]])
    np.testing.assert_array_equal(first[0], second[0])
    _assert_close(first[0], clip_embeddings[0])  # ran beside other clips' windows before


@pytest.mark.parametrize("center", [True, False])
@pytest.mark.parametrize("hop", [46080, 24000, 4800])
def test_windows_are_cut_as_the_package_cuts_them(center, hop):
    lengths = [0, 1, 23_999, 24_000, 24_001, 48_000, 48_001, 70_079, 70_080, 70_081, 3 * SR + 17]
    for n in lengths:
        ramp = np.arange(1, n + 1, dtype=np.float32)  # sample i holds i + 1; padding holds 0
        ours = frame_windows(ramp, hop, center)
        theirs = preprocess_audio_batch(
            torch.from_numpy(ramp.astype(np.float64))[None], SR, center=center, hop_size=hop / SR
        )
        np.testing.assert_array_equal(ours, theirs[:, 0].numpy(), err_msg=f"{n} samples")
        assert count_windows(n, hop, center) == len(ours) >= 1


def test_frame_times_are_window_centres(teacher):
    n = 3 * SR + 17
    ramp = np.arange(1, n + 1, dtype=np.float32)
    windows = frame_windows(ramp, teacher.hop_samples, teacher.center)
    middle = windows[:, SR // 2]
    centres = np.round(teacher.frame_times(n) * SR).astype(int)
    np.testing.assert_array_equal(middle, np.where(centres < n, centres + 1, 0))


def test_not_centred_with_another_hop(torch_home, reference, clips):
    teacher = _teacher_from_home(torch_home, center="false", hop_s="0.5", batch_size="2")
    assert (teacher.center, teacher.hop_s, teacher.hop_samples, teacher.batch_size) == (
        False,
        0.5,
        24000,
        2,
    )
    clip = clips[0]  # 1.3 s: windows start at 0 and 0.5 s
    [embedding] = teacher.embed([clip])
    assert embedding.shape == (teacher.num_frames(len(clip)), 512) == (2, 512)
    np.testing.assert_allclose(teacher.frame_times(len(clip)), [0.5, 1.0])
    [expected], _ = _package_embeddings(reference, [clip], hop_s=0.5, center=False)
    _assert_close(embedding, expected)
    fingerprint = teacher.fingerprint()
    assert (fingerprint["center"], fingerprint["hop_s"]) == (False, 0.5)


def test_weights_from_environment_variable(checkpoint, reference, monkeypatch):
    monkeypatch.setenv(WEIGHTS_ENV, str(checkpoint))
    teacher = OpenL3Teacher()
    assert teacher.weights == checkpoint
    assert torch.equal(teacher.model.conv2d_1.weight, reference.conv2d_1.weight)


def test_explicit_weights_path_comes_first(checkpoint, reference, tmp_path, monkeypatch):
    decoy = tmp_path / FILENAME
    decoy.write_text("not a checkpoint")
    monkeypatch.setenv(WEIGHTS_ENV, str(decoy))
    teacher = create_teacher("openl3", weights=str(checkpoint), hop_s=None)
    assert teacher.weights == checkpoint
    assert teacher.hop_s == 0.96
    state = teacher.model.state_dict()
    assert all(torch.equal(state[k], v) for k, v in reference.state_dict().items())


def test_missing_weights_say_where_and_how(empty_torch_home, monkeypatch):
    def no_download(*args, **kwargs):
        raise AssertionError("tried to download")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", no_download)
    monkeypatch.setattr(torch.hub, "download_url_to_file", no_download)
    with pytest.raises(MissingWeightsError) as err:
        create_teacher("openl3")
    message = str(err.value)
    expected_place = empty_torch_home / "hub" / "checkpoints" / FILENAME
    assert FILENAME in message
    assert str(expected_place) in message
    assert f"${WEIGHTS_ENV}" in message
    assert f"wget -O {expected_place} '{URL}'" in message
    assert not expected_place.exists()

    with pytest.raises(MissingWeightsError, match="torchopenl3_mel256_env_6144.pth.tar"):
        OpenL3Teacher(input_repr="mel256", content_type="env", embedding_size=6144)


def _save(content, path, reference):
    if content == "text":
        path.write_text("not a checkpoint")
    elif content == "tensor":
        torch.save(torch.zeros(3), path)
    elif content == "wrapped":
        torch.save({"state_dict": reference.state_dict()}, path)
    elif content == "no conv":
        state = reference.state_dict()
        torch.save({k: v for k, v in state.items() if not k.startswith("conv2d_")}, path)
    elif content == "tiny tensors":
        torch.save({k: torch.zeros(1) for k in reference.state_dict()}, path)
    elif content == "mel256 filterbank":
        state = reference.state_dict()
        torch.save(state | {"speclayer.mel_basis": torch.zeros(256, 1025)}, path)


@pytest.mark.parametrize(
    ("content", "says"),
    [
        ("text", "not a readable PyTorch checkpoint"),
        ("tensor", "expected the OpenL3 mel128/music/512 state dict"),
        ("wrapped", "unexpected keys \\(state_dict\\)"),
        ("no conv", "14 missing keys \\(conv2d_1.weight"),
        ("tiny tensors", "wrong shapes"),
        ("mel256 filterbank", "speclayer.mel_basis: \\(256, 1025\\) instead of \\(128, 1025\\)"),
    ],
)
def test_malformed_checkpoint_is_named(content, says, reference, tmp_path):
    path = tmp_path / "broken.pth.tar"
    _save(content, path, reference)
    with pytest.raises(InvalidWeightsError, match=says) as err:
        OpenL3Teacher(weights=path)
    assert str(path) in str(err.value)


def test_checkpoint_variants_torch_hub_accepts(reference, checkpoint, tmp_path):
    """torch.hub's single-file zip wrapper, and a state dict without the computed buffers."""
    wrapped = tmp_path / "wrapped.pth.tar"
    with zipfile.ZipFile(wrapped, "w") as archive:
        archive.write(checkpoint, FILENAME)
    expected = reference.state_dict()
    teacher = OpenL3Teacher(weights=wrapped)
    assert all(torch.equal(teacher.model.state_dict()[k], v) for k, v in expected.items())

    lean = tmp_path / "lean.pth.tar"
    computed = [k for k in expected if k.startswith("speclayer.") or "num_batches" in k]
    assert len(computed) == 3 + 8
    torch.save({k: v for k, v in expected.items() if k not in computed}, lean)
    state = OpenL3Teacher(weights=lean).model.state_dict()
    assert all(torch.equal(state[k], v) for k, v in expected.items())


def test_fingerprint_names_variant_weights_and_load_shift(teacher, reference, checkpoint, tmp_path):
    fingerprint = teacher.fingerprint()
    assert fingerprint["teacher"] == "openl3"
    assert (fingerprint["sample_rate_hz"], fingerprint["hop_s"], fingerprint["dim"]) == (
        SR,
        0.96,
        512,
    )
    assert (fingerprint["input_repr"], fingerprint["content_type"]) == ("mel128", "music")
    assert (fingerprint["embedding_size"], fingerprint["center"]) == (512, True)
    assert fingerprint["load_shift"] == LOAD_SHIFT == 2.24
    assert "load_scale" not in fingerprint
    assert fingerprint["torchopenl3"] == "1.0.1"
    assert fingerprint["weights_sha256"] == file_sha256(checkpoint)

    changed = tmp_path / "changed.pth.tar"
    state = reference.state_dict()
    torch.save(state | {"conv2d_1.bias": state["conv2d_1.bias"] + 1}, changed)
    other = OpenL3Teacher(weights=changed).fingerprint()
    assert {k for k in fingerprint if fingerprint[k] != other[k]} == {"weights_sha256"}


def test_options_given_as_text(checkpoint):
    teacher = OpenL3Teacher(weights=checkpoint, embedding_size="512", hop_s="0.96", center="1")
    assert (teacher.embedding_size, teacher.dim, teacher.hop_s, teacher.center) == (
        512,
        512,
        0.96,
        True,
    )


@pytest.mark.parametrize(
    ("options", "says"),
    [
        ({"input_repr": "mel64"}, "input_repr 'mel64'; choose one of mel128, mel256, linear"),
        ({"content_type": "speech"}, "content_type 'speech'; choose one of music, env"),
        ({"embedding_size": 128}, "embedding_size 128; choose one of 512, 6144"),
        ({"embedding_size": "big"}, "embedding_size must be an integer"),
        ({"hop_s": 0}, "hop_s must be at least one sample"),
        ({"hop_s": "fast"}, "hop_s must be a number"),
        ({"center": "maybe"}, "center must be true or false"),
        ({"batch_size": 0}, "batch_size must be at least 1"),
    ],
)
def test_bad_options(options, says):
    with pytest.raises(ValueError, match=says):
        OpenL3Teacher(**options)


def test_stereo_is_refused(teacher):
    with pytest.raises(ValueError, match="mono"):
        teacher.embed([np.zeros((2, SR), np.float32)])
