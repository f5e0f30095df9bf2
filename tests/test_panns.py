"""The PANNs Cnn14 teacher, on random weights saved where users put the real checkpoint."""

import io
import os
import subprocess
import sys
import textwrap
import zipfile

import numpy as np
import pytest
import torch
from stand_ins import panns_checkpoint, random_cnn14, write_panns_weights

from pipeline.teachers import MissingWeightsError, create_teacher, file_sha256
from pipeline.teachers.panns import (
    DOWNLOAD,
    MIN_SAMPLES,
    WEIGHTS_ENV,
    WEIGHTS_FILE,
    InvalidWeightsError,
    PannsTeacher,
    read_checkpoint,
)

SR = 32000


@pytest.fixture(scope="module")
def reference():
    """Cnn14 with random weights and BatchNorm statistics far from the initial 0 / 1."""
    return random_cnn14()


@pytest.fixture(scope="module")
def weights_home(reference, tmp_path_factory):
    """A home folder with the checkpoint at ~/panns_data/Cnn14_mAP=0.431.pth (327 MB, once)."""
    home = tmp_path_factory.mktemp("home")
    path = write_panns_weights(home / "panns_data", model=reference)
    yield home
    path.unlink()


@pytest.fixture(scope="module")
def checkpoint(weights_home):
    return weights_home / "panns_data" / WEIGHTS_FILE


@pytest.fixture(autouse=True)
def empty_home(tmp_path_factory, monkeypatch):
    """No test sees the real ~/panns_data or $PANNS_WEIGHTS unless it sets them."""
    home = tmp_path_factory.mktemp("empty-home")
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.delenv(WEIGHTS_ENV, raising=False)
    return home


def _teacher_from_home(weights_home, **options):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HOME", str(weights_home))
        mp.delenv(WEIGHTS_ENV, raising=False)
        return PannsTeacher(**options)


@pytest.fixture(scope="module")
def teacher(weights_home):
    return _teacher_from_home(weights_home)


@pytest.fixture(scope="module")
def frames_teacher(weights_home):
    return _teacher_from_home(weights_home, layer="frames")


@pytest.fixture(scope="module")
def clips():
    rng = np.random.default_rng(0)
    return [(0.1 * rng.standard_normal(s * SR)).astype(np.float32) for s in (10, 10, 4)]


@pytest.fixture(scope="module")
def clip_embeddings(teacher, clips):
    return teacher.embed(clips)


def _reference_embedding(model, waveform):
    with torch.inference_mode():
        return model(torch.from_numpy(waveform)[None])["embedding"][0].numpy()


def _noise(n_samples, seed):
    return (0.1 * np.random.default_rng(seed).standard_normal(n_samples)).astype(np.float32)


def _assert_close(actual, desired):
    """Equal up to float32 rounding that differs with the batch a clip ran in."""
    np.testing.assert_allclose(actual, desired, rtol=1e-4, atol=1e-5)


def test_loading_the_package_runs_no_download(tmp_path):
    script = textwrap.dedent(
        """
        import sys
        systems, commands = [], []
        def audit(event, args):
            if event == "os.system":
                systems.append(args[0])
            elif event == "subprocess.Popen":  # matplotlib runs fc-list for its font cache
                commands.append(" ".join(map(str, args[1])))
        sys.addaudithook(audit)
        from pipeline.teachers import MissingWeightsError, create_teacher
        from pipeline.teachers.panns import build_cnn14
        build_cnn14()
        try:
            create_teacher("panns")
        except MissingWeightsError:
            pass
        else:
            sys.exit("weights found in an empty home")
        assert "panns_inference" not in sys.modules, "the package's __init__ ran"
        assert not systems, systems
        assert not any("wget" in c or "curl" in c for c in commands), commands
        print("ok")
        """
    )
    env = {k: v for k, v in os.environ.items() if k != WEIGHTS_ENV} | {"HOME": str(tmp_path)}
    done = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"
    assert not (tmp_path / "panns_data").exists()


def test_checkpoint_written_under_numpy_1_loads(tmp_path):
    buffer = io.BytesIO()
    torch.save(panns_checkpoint({"w": torch.ones(2)}), buffer)
    path = tmp_path / "numpy1.pth"
    with zipfile.ZipFile(buffer) as src, zipfile.ZipFile(path, "w") as dst:
        for info in src.infolist():
            data = src.read(info)
            if info.filename.endswith("data.pkl"):
                data = data.replace(b"numpy._core.multiarray\n", b"numpy.core.multiarray\n")
                assert b"numpy.core.multiarray\n_reconstruct" in data
            dst.writestr(info, data)
    checkpoint = read_checkpoint(path)
    np.testing.assert_array_equal(checkpoint["sampler"]["indexes_per_class"][2], [2, 3, 4])
    assert checkpoint["model"]["w"].tolist() == [1.0, 1.0]


def test_embeddings_equal_the_package_forward(
    teacher, reference, clips, clip_embeddings, checkpoint
):
    assert teacher.weights == checkpoint  # found at ~/panns_data
    got = clip_embeddings
    with torch.inference_mode():
        pair = reference(torch.from_numpy(np.stack(clips[:2])))["embedding"].numpy()
    expected = [pair[0], pair[1], _reference_embedding(reference, clips[2])]
    for g, e in zip(got, expected, strict=True):
        assert g.shape == (1, 2048)
        assert g.dtype == np.float32
        np.testing.assert_allclose(g[0], e, rtol=1e-5, atol=1e-6)
    assert np.std(got[0]) > 0
    assert not np.allclose(got[0], got[1])


def test_embed_is_deterministic_and_independent_of_batch_order(teacher, clips, clip_embeddings):
    swapped = teacher.embed([clips[2], clips[0]])
    np.testing.assert_array_equal(swapped[0], clip_embeddings[2])  # ran alone both times
    _assert_close(swapped[1], clip_embeddings[0])  # ran beside clips[1] before


def test_equal_lengths_are_batched_in_chunks(teacher, monkeypatch):
    waves = [_noise(MIN_SAMPLES, seed) for seed in range(3)]
    together = teacher.embed(waves)
    monkeypatch.setattr(teacher, "batch_size", 2)
    chunked = teacher.embed(waves)
    for got, want in zip(chunked, together, strict=True):
        _assert_close(got, want)
    assert not np.allclose(chunked[0], chunked[1])
    assert teacher.embed([]) == []


def test_weights_from_environment_variable(checkpoint, reference, monkeypatch):
    monkeypatch.setenv(WEIGHTS_ENV, str(checkpoint))
    teacher = PannsTeacher()
    assert teacher.weights == checkpoint
    wave = _noise(MIN_SAMPLES, seed=2)
    _assert_close(teacher.embed([wave])[0][0], _reference_embedding(reference, wave))


def test_explicit_weights_path_comes_first(checkpoint, reference, tmp_path, monkeypatch):
    decoy = tmp_path / WEIGHTS_FILE
    decoy.write_text("not a checkpoint")
    monkeypatch.setenv(WEIGHTS_ENV, str(decoy))
    teacher = create_teacher("panns", weights=str(checkpoint), layer=None)
    assert teacher.weights == checkpoint
    wave = _noise(MIN_SAMPLES, seed=3)
    _assert_close(teacher.embed([wave])[0][0], _reference_embedding(reference, wave))


def test_missing_weights_say_where_and_how(empty_home):
    with pytest.raises(MissingWeightsError) as err:
        create_teacher("panns")
    message = str(err.value)
    assert WEIGHTS_FILE in message
    assert str(empty_home / "panns_data" / WEIGHTS_FILE) in message
    assert f"${WEIGHTS_ENV}" in message
    assert DOWNLOAD in message
    assert "wget -O ~/panns_data/Cnn14_mAP=0.431.pth" in message
    assert "zenodo.org/record/3987831" in message


@pytest.mark.parametrize(
    ("content", "says"),
    [
        ("text", "not a readable PyTorch checkpoint"),
        ("tensor", "under 'model'"),
        ({"state_dict": {}}, "under 'model'"),
        ({"model": {"fc1.bias": torch.zeros(2048), "head.weight": torch.zeros(3)}}, "missing keys"),
        ("tiny tensors", "wrong shapes"),
    ],
)
def test_malformed_checkpoint_is_named(content, says, reference, tmp_path):
    path = tmp_path / "broken.pth"
    if content == "text":
        path.write_text("not a checkpoint")
    elif content == "tensor":
        torch.save(torch.zeros(3), path)
    elif content == "tiny tensors":
        torch.save({"model": {k: torch.zeros(1) for k in reference.state_dict()}}, path)
    else:
        torch.save(content, path)
    with pytest.raises(InvalidWeightsError, match=says) as err:
        PannsTeacher(weights=path)
    assert str(path) in str(err.value)


def test_fingerprint_names_layer_and_weights(teacher, reference, checkpoint, tmp_path):
    fingerprint = teacher.fingerprint()
    assert fingerprint["teacher"] == "panns"
    assert fingerprint["layer"] == "clip"
    assert fingerprint["hop_s"] is None
    assert (fingerprint["sample_rate_hz"], fingerprint["dim"]) == (SR, 2048)
    assert fingerprint["weights_sha256"] == file_sha256(checkpoint)

    changed = tmp_path / "changed.pth"
    state = reference.state_dict()
    torch.save({"model": state | {"fc1.bias": state["fc1.bias"] + 1}}, changed)
    try:
        other = PannsTeacher(weights=changed).fingerprint()
    finally:
        changed.unlink()
    assert {k for k in fingerprint if fingerprint[k] != other[k]} == {"weights_sha256"}


def test_frames_layer(frames_teacher, reference, clips, clip_embeddings):
    assert frames_teacher.hop_s == pytest.approx(0.32)
    fingerprint = frames_teacher.fingerprint()
    assert (fingerprint["layer"], fingerprint["hop_s"]) == ("frames", frames_teacher.hop_s)

    frames = frames_teacher.embed(clips)
    assert [f.shape for f in frames] == [(31, 2048), (31, 2048), (12, 2048)]
    assert [frames_teacher.num_frames(len(c)) for c in clips] == [31, 31, 12]
    # The clip embedding is fc1 on the max + mean over these frames.
    for f, clip_embedding in zip(frames, clip_embeddings, strict=True):
        x = torch.from_numpy(f)
        with torch.inference_mode():
            pooled = torch.relu(reference.fc1(x.max(0).values + x.mean(0)))
        _assert_close(pooled.numpy(), clip_embedding[0])


def test_shortest_input(teacher, frames_teacher, reference):
    assert MIN_SAMPLES == 9920
    assert teacher.min_duration_s == frames_teacher.min_duration_s == MIN_SAMPLES / SR
    with pytest.raises(RuntimeError), torch.inference_mode():
        reference(torch.zeros(1, MIN_SAMPLES - 1))  # the network itself refuses one sample less

    wave = _noise(MIN_SAMPLES, seed=4)
    assert teacher.embed([wave])[0].shape == (1, 2048)
    assert frames_teacher.embed([wave])[0].shape == (1, 2048)
    for t in (teacher, frames_teacher):
        assert t.num_frames(MIN_SAMPLES) == 1
        assert t.num_frames(MIN_SAMPLES - 1) == 0
        with pytest.raises(ValueError, match="9920"):
            t.embed([wave[:-1]])


def test_num_frames_matches_the_network(frames_teacher):
    lengths = [20_159, 20_160, 4 * SR + 17]  # 63, 64 and 401 STFT frames
    frames = frames_teacher.embed([_noise(n, seed) for seed, n in enumerate(lengths)])
    assert [len(f) for f in frames] == [frames_teacher.num_frames(n) for n in lengths]
    assert [len(f) for f in frames] == [1, 2, 12]


def test_bad_arguments(teacher):
    with pytest.raises(ValueError, match="layer"):
        PannsTeacher(layer="logits")
    with pytest.raises(ValueError, match="batch_size"):
        PannsTeacher(batch_size=0)
    with pytest.raises(ValueError, match="mono"):
        teacher.embed([np.zeros((2, SR), np.float32)])
