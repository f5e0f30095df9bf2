"""The VGGish teacher, on random weights saved in torch.hub's cache as torchvggish keeps them."""

import shutil

import numpy as np
import pytest
import torch
import torchvggish
from stand_ins import random_vggish, random_vggish_pca, write_vggish_weights
from torchvggish import torchvggish as package_module
from torchvggish import vggish_input

from pipeline.teachers import MissingWeightsError, create_teacher, file_sha256
from pipeline.teachers.vggish import (
    PATCH_SAMPLES,
    PCA_ENV,
    PCA_FILE,
    PCA_URL,
    WEIGHTS_ENV,
    WEIGHTS_FILE,
    WEIGHTS_URL,
    InvalidWeightsError,
    VggishTeacher,
    log_mel_patches,
    num_patches,
    stft_frames,
)

SR = 16000


def _noise(n_samples, seed):
    return (0.1 * np.random.default_rng(seed).standard_normal(n_samples)).astype(np.float32)


def _tone(n_samples, hz, seed):
    t = np.arange(n_samples) / SR
    return (0.3 * np.sin(2 * np.pi * hz * t) + _noise(n_samples, seed)).astype(np.float32)


@pytest.fixture(scope="module")
def network():
    """The package's VGGish network with random He-initialised weights (outputs that vary)."""
    return random_vggish()


@pytest.fixture(scope="module")
def pca_params(network):
    """Random orthogonal PCA in the published file's format: numpy float64 arrays.

    Centred and scaled on a few clips so that the 8-bit codes spread over 0..255.
    """
    return random_vggish_pca(network)


@pytest.fixture(scope="module")
def torch_home(network, pca_params, tmp_path_factory):
    """$TORCH_HOME with both files in hub/checkpoints, where torchvggish caches them."""
    home = tmp_path_factory.mktemp("torch-home")
    checkpoints = home / "hub" / "checkpoints"
    write_vggish_weights(checkpoints, network=network, pca=pca_params)
    yield home
    shutil.rmtree(checkpoints)


@pytest.fixture(scope="module")
def checkpoint(torch_home):
    return torch_home / "hub" / "checkpoints" / WEIGHTS_FILE


@pytest.fixture(scope="module")
def pca_file(torch_home):
    return torch_home / "hub" / "checkpoints" / PCA_FILE


def _no_download(url, *args, **kwargs):
    raise AssertionError(f"tried to download {url}")


@pytest.fixture(autouse=True)
def empty_torch_home(tmp_path_factory, monkeypatch):
    """No test sees the real hub cache or the env vars unless it sets them; nothing downloads."""
    home = tmp_path_factory.mktemp("empty-torch-home")
    monkeypatch.setenv("TORCH_HOME", str(home))
    monkeypatch.delenv(WEIGHTS_ENV, raising=False)
    monkeypatch.delenv(PCA_ENV, raising=False)
    monkeypatch.setattr(torch.hub, "download_url_to_file", _no_download)
    return home


def _in_home(torch_home, build):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TORCH_HOME", str(torch_home))
        mp.delenv(WEIGHTS_ENV, raising=False)
        mp.delenv(PCA_ENV, raising=False)
        mp.setattr(torch.hub, "download_url_to_file", _no_download)
        return build()


@pytest.fixture(scope="module")
def package_vggish(torch_home):
    """The package's own ``vggish()``: network and PCA loaded from the pre-filled hub cache."""
    return _in_home(torch_home, lambda: torchvggish.vggish(postprocess=True).eval())


@pytest.fixture(scope="module")
def teacher(torch_home):
    return _in_home(torch_home, VggishTeacher)


@pytest.fixture(scope="module")
def raw_teacher(torch_home):
    return _in_home(torch_home, lambda: VggishTeacher(postprocess=False))


@pytest.fixture(scope="module")
def clips():
    """0.5 s (padded to one patch), 2.2 s and 3 s."""
    return [_tone(8000, 440, 0), _tone(35200, 220, 1), _tone(48000, 3000, 2)]


@pytest.fixture(scope="module")
def embeddings(teacher, clips):
    return teacher.embed(clips)


def _assert_codes_close(actual, desired):
    """8-bit codes of one clip run in another batch: float32 sums differ in their last bits, so a
    value on a rounding boundary can land one code away; rarely, never further."""
    assert actual.shape == desired.shape
    assert np.abs(actual - desired).max() <= 1
    assert np.mean(actual != desired) < 0.01


def _package_pipeline(model, clip):
    """``waveform_to_examples`` → the package's forward; short clips zero-padded first."""
    padded = np.pad(clip, (0, max(PATCH_SAMPLES - len(clip), 0)))
    with torch.no_grad():
        return model(vggish_input.waveform_to_examples(padded, SR)).reshape(-1, 128).numpy()


def test_package_urls_and_file_names():
    assert WEIGHTS_URL == package_module.VGGISH_WEIGHTS
    assert PCA_URL == package_module.PCA_PARAMS
    assert WEIGHTS_URL.endswith("/" + WEIGHTS_FILE)
    assert PCA_URL.endswith("/" + PCA_FILE)


def test_log_mel_patches_equal_waveform_to_examples():
    waves = [_tone(n, 660, seed) for seed, n in enumerate((15600, 35200, 160007))]
    frames = [stft_frames(w.astype(np.float64)) for w in waves]
    counts = [num_patches(len(w)) for w in waves]
    assert counts == [1, 2, 10]
    patches = [
        f[p * 96 : (p + 1) * 96] for f, c in zip(frames, counts, strict=True) for p in range(c)
    ]
    ours = np.split(log_mel_patches(patches), np.cumsum(counts)[:-1])
    for wave, got in zip(waves, ours, strict=True):
        expected = vggish_input.waveform_to_examples(wave, SR).detach().numpy()[:, 0]
        assert got.dtype == np.float32
        np.testing.assert_array_equal(got, expected)


@pytest.mark.slow  # writes and loads the 275 MiB checkpoint for the module
def test_embeddings_equal_the_package_pipeline(teacher, embeddings, clips, package_vggish):
    for got, clip in zip(embeddings, clips, strict=True):
        expected = _package_pipeline(package_vggish, clip)
        assert got.shape == expected.shape == (max(num_patches(len(clip)), 1), 128)
        assert got.dtype == np.float32
        # Alone, a clip's patches form the same batch as in the package: equal to the bit.
        np.testing.assert_array_equal(teacher.embed([clip])[0], expected)
        _assert_codes_close(got, expected)  # batched with the other clips' patches
    assert [len(e) for e in embeddings] == [1, 2, 3]
    codes = np.concatenate(embeddings)
    assert np.array_equal(codes, np.round(codes))
    assert codes.min() >= 0 and codes.max() <= 255
    assert len(np.unique(codes)) > 100  # the codes spread over the 8-bit range
    assert not np.array_equal(embeddings[1][0], embeddings[2][0])


def test_raw_embeddings_equal_the_package_network(raw_teacher, network, clips):
    got = raw_teacher.embed(clips)
    for g, clip in zip(got, clips, strict=True):
        expected = _package_pipeline(network, clip)
        assert g.shape == expected.shape
        np.testing.assert_allclose(g, expected, rtol=1e-5, atol=1e-5)
    assert raw_teacher.dim == 128
    assert not np.array_equal(got[0][0], np.round(got[0][0]))  # no quantisation


def test_short_clips_are_padded_to_one_patch(teacher, package_vggish):
    # The package itself yields no patch below 15 600 samples, even at exactly 0.96 s.
    assert len(vggish_input.waveform_to_examples(_noise(15360, 0), SR)) == 0
    assert len(vggish_input.waveform_to_examples(_noise(PATCH_SAMPLES - 1, 0), SR)) == 0
    assert len(vggish_input.waveform_to_examples(_noise(PATCH_SAMPLES, 0), SR)) == 1
    assert teacher.pad_below_s == PATCH_SAMPLES / SR == 0.975
    assert teacher.min_duration_s == 0.0
    short = [_noise(n, seed) for seed, n in enumerate((1, 400, 15360, PATCH_SAMPLES - 1))]
    got = teacher.embed(short)
    assert [g.shape for g in got] == [(1, 128)] * 4
    for g, clip in zip(got, short, strict=True):
        _assert_codes_close(g, _package_pipeline(package_vggish, clip))


def test_ten_seconds_give_ten_frames(teacher):
    wave = _tone(10 * SR, 880, 5)
    [frames] = teacher.embed([wave])
    assert frames.shape == (10, 128)
    assert teacher.num_frames(10 * SR) == 10
    assert teacher.hop_s == pytest.approx(0.96)


def test_num_frames_equals_the_rows_embed_gives(raw_teacher):
    lengths = [1, 15_599, 15_600, 30_959, 30_960, 2 * SR + 1]  # 2nd patch: 96 hops later
    assert [num_patches(n) for n in lengths[2:]] == [
        len(vggish_input.waveform_to_examples(_noise(n, 0), SR)) for n in lengths[2:]
    ]
    frames = raw_teacher.embed([_noise(n, seed) for seed, n in enumerate(lengths)])
    assert [len(f) for f in frames] == [raw_teacher.num_frames(n) for n in lengths]
    assert [len(f) for f in frames] == [1, 1, 1, 1, 2, 2]


def test_deterministic_and_independent_of_batching(teacher, raw_teacher, clips, embeddings):
    again = teacher.embed(clips)
    for a, b in zip(again, embeddings, strict=True):
        np.testing.assert_array_equal(a, b)
    swapped = teacher.embed(clips[::-1])
    for a, b in zip(swapped[::-1], embeddings, strict=True):
        _assert_codes_close(a, b)

    together = raw_teacher.embed(clips)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(raw_teacher, "batch_size", 2)  # chunks cut across clips
        chunked = raw_teacher.embed(clips)
    for a, b in zip(chunked, together, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
    assert teacher.embed([]) == []


def test_weights_from_environment_variables(checkpoint, pca_file, tmp_path, monkeypatch):
    elsewhere = tmp_path / "models"
    elsewhere.mkdir()
    network = elsewhere / "vggish.pth"
    network.symlink_to(checkpoint)
    monkeypatch.setenv(WEIGHTS_ENV, str(network))
    with pytest.raises(MissingWeightsError, match="beside the network weights"):
        VggishTeacher()  # the PCA file is looked for beside the network file
    (elsewhere / PCA_FILE).symlink_to(pca_file)
    teacher = VggishTeacher()
    assert (teacher.weights, teacher.pca) == (network, elsewhere / PCA_FILE)

    monkeypatch.setenv(PCA_ENV, str(pca_file))
    assert VggishTeacher().pca == pca_file


def test_explicit_paths_come_first(checkpoint, pca_file, tmp_path, monkeypatch, clips, embeddings):
    decoy = tmp_path / "decoy.pth"
    decoy.write_text("not a checkpoint")
    monkeypatch.setenv(WEIGHTS_ENV, str(decoy))
    monkeypatch.setenv(PCA_ENV, str(decoy))
    teacher = create_teacher("vggish", weights=str(checkpoint), pca=str(pca_file), device="cpu")
    assert (teacher.weights, teacher.pca) == (checkpoint, pca_file)
    np.testing.assert_array_equal(teacher.embed(clips[:1])[0], embeddings[0])


def test_missing_weights_say_where_and_how(empty_torch_home):
    with pytest.raises(MissingWeightsError) as err:
        create_teacher("vggish")
    message = str(err.value)
    assert WEIGHTS_FILE in message
    assert str(empty_torch_home / "hub" / "checkpoints" / WEIGHTS_FILE) in message
    assert f"${WEIGHTS_ENV}" in message
    assert f"wget -P {empty_torch_home / 'hub' / 'checkpoints'} {WEIGHTS_URL}" in message
    assert not (empty_torch_home / "hub" / "checkpoints" / WEIGHTS_FILE).exists()


def test_missing_pca_says_where_and_how(checkpoint, tmp_path):
    network = tmp_path / WEIGHTS_FILE
    network.symlink_to(checkpoint)
    with pytest.raises(MissingWeightsError) as err:
        VggishTeacher(weights=network)
    message = str(err.value)
    assert str(tmp_path / PCA_FILE) in message
    assert f"${PCA_ENV}" in message
    assert "pca=<path>" in message
    assert "postprocess=False" in message
    assert PCA_URL in message
    with pytest.raises(MissingWeightsError, match="given path"):
        VggishTeacher(weights=network, pca=tmp_path / "nowhere.pth")
    # The raw embedding needs no PCA file.
    assert VggishTeacher(weights=network, postprocess=False).pca is None


@pytest.mark.parametrize(
    ("content", "says"),
    [
        ("text", "not a readable PyTorch checkpoint"),
        ("tensor", "expected the VGGish state dict"),
        ({"model": {}}, "missing keys"),
        ("tiny tensors", "wrong shapes"),
    ],
)
def test_malformed_network_file_is_named(content, says, network, tmp_path):
    path = tmp_path / "broken.pth"
    if content == "text":
        path.write_text("not a checkpoint")
    elif content == "tensor":
        torch.save(torch.zeros(3), path)
    elif content == "tiny tensors":
        torch.save({k: torch.zeros(1) for k in network.state_dict()}, path)
    else:
        torch.save(content, path)
    with pytest.raises(InvalidWeightsError, match=says) as err:
        VggishTeacher(weights=path, postprocess=False)
    assert str(path) in str(err.value)


@pytest.mark.parametrize(
    ("content", "says"),
    [
        ("text", "not a readable PyTorch checkpoint"),
        ({"pca_means": np.zeros(128)}, "expected VGGish PCA parameters"),
        ({"pca_eigen_vectors": np.eye(64), "pca_means": np.zeros(64)}, r"\(64, 64\)"),
        ({"pca_eigen_vectors": np.eye(128), "pca_means": np.full(128, np.nan)}, "NaN"),
    ],
)
def test_malformed_pca_file_is_named(content, says, checkpoint, tmp_path):
    path = tmp_path / "broken-pca.pth"
    if content == "text":
        path.write_text("not a checkpoint")
    else:
        torch.save(content, path)
    with pytest.raises(InvalidWeightsError, match=says) as err:
        VggishTeacher(weights=checkpoint, pca=path)
    assert str(path) in str(err.value)


def test_pca_given_as_tensors(checkpoint, pca_params, tmp_path, clips, embeddings):
    path = tmp_path / "pca-tensors.pth"
    torch.save({k: torch.from_numpy(v) for k, v in pca_params.items()}, path)
    teacher = VggishTeacher(weights=checkpoint, pca=path)
    np.testing.assert_array_equal(teacher.embed(clips[:1])[0], embeddings[0])


def test_pca_file_as_old_pytorch_and_numpy_wrote_it(checkpoint, pca_params, tmp_path, clips):
    """The published file dates from 2019: PyTorch's legacy format, numpy 1 module names."""
    path = tmp_path / PCA_FILE
    torch.save(pca_params, path, _use_new_zipfile_serialization=False)
    data = path.read_bytes()
    assert b"numpy._core.multiarray\n_reconstruct" in data
    path.write_bytes(data.replace(b"numpy._core.multiarray\n", b"numpy.core.multiarray\n"))
    teacher = VggishTeacher(weights=checkpoint, pca=path)
    raw = torch.from_numpy(VggishTeacher(weights=checkpoint, postprocess=False).embed(clips[2:])[0])
    matrix = torch.from_numpy(pca_params["pca_eigen_vectors"]).float()
    means = torch.from_numpy(pca_params["pca_means"]).float()[:, None]
    codes = torch.round((torch.clamp((raw - means.T) @ matrix.T, -2, 2) + 2) * 255 / 4).numpy()
    _assert_codes_close(teacher.embed(clips[2:])[0], codes)


def test_fingerprint(teacher, raw_teacher, checkpoint, pca_file, pca_params, tmp_path):
    fingerprint = teacher.fingerprint()
    assert fingerprint["teacher"] == "vggish"
    assert (fingerprint["sample_rate_hz"], fingerprint["dim"]) == (SR, 128)
    assert fingerprint["hop_s"] == pytest.approx(0.96)
    assert fingerprint["postprocess"] is True
    assert fingerprint["weights_sha256"] == file_sha256(checkpoint)
    assert fingerprint["pca_sha256"] == file_sha256(pca_file)
    assert (fingerprint["load_shift"], fingerprint["load_scale"]) == (128.0, 256.0)
    assert fingerprint["torchvggish"] == "0.2"

    raw = raw_teacher.fingerprint()
    assert raw["postprocess"] is False
    assert raw["weights_sha256"] == fingerprint["weights_sha256"]
    assert not {"load_shift", "load_scale", "pca_sha256"} & set(raw)

    changed = tmp_path / PCA_FILE
    torch.save(pca_params | {"pca_means": pca_params["pca_means"] + 1}, changed)
    other = VggishTeacher(weights=checkpoint, pca=changed).fingerprint()
    assert {k for k in fingerprint if fingerprint[k] != other[k]} == {"pca_sha256"}


def test_options_given_as_strings(checkpoint):
    teacher = create_teacher("vggish", weights=checkpoint, postprocess="false", batch_size="4")
    assert (teacher.postprocess, teacher.batch_size, teacher.pca) == (False, 4, None)
    assert create_teacher("vggish", weights=checkpoint, postprocess="0").postprocess is False


def test_bad_arguments(raw_teacher, checkpoint):
    with pytest.raises(ValueError, match="batch_size"):
        VggishTeacher(weights=checkpoint, batch_size=0)
    with pytest.raises(ValueError, match="postprocess"):
        VggishTeacher(weights=checkpoint, postprocess="maybe")
    with pytest.raises(ValueError, match="mono"):
        raw_teacher.embed([np.zeros((2, SR), np.float32)])
    with pytest.raises(ValueError, match="no samples"):
        raw_teacher.embed([np.zeros(0, np.float32)])
