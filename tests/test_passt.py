"""The PaSST teacher, on random weights, against hear21passt's own API.

hear21passt imports timm (to download weights) and torchaudio (for the Kaldi mel filterbank),
neither of which imports on these machines. The reference here is the package itself, made
importable by stand-ins: a ``timm.models._hub`` whose ``download_cached_file`` hands over the
random checkpoint, and a ``torchaudio`` whose ``compliance.kaldi`` is torchaudio's real
``kaldi.py``, loaded from the installed (but unimportable) torchaudio's files
(``load_torchaudio_kaldi`` of tests/test_features.py, which also checks the shared filterbank).
"""

import contextlib
import importlib
import io
import os
import subprocess
import sys
import textwrap
from types import ModuleType, SimpleNamespace

import numpy as np
import pytest
import torch
from stand_ins import write_passt_weights
from test_features import load_torchaudio_kaldi
from torch import nn

from pipeline.extract.frontends import OUTPUT_VERSION as MEL_OUTPUT_VERSION
from pipeline.teachers import MissingWeightsError, create_teacher, file_sha256
from pipeline.teachers.passt import (
    ARCH,
    WEIGHTS_ENV,
    WEIGHTS_FILE,
    WEIGHTS_URL,
    InvalidWeightsError,
    PasstTeacher,
    log_mel,
    passt_mel_basis,
    passt_models,
    passt_state,
    weights_path,
)

SR = 32000
WINDOW = 30720  # 960 ms
PAD = WINDOW // 2
CLIP_SECONDS = (1.5, 2.9, 0.3)  # 2, 4 and (zero-padded) 1 windows

# The package's own warnings, expected here: 0.96 s windows on a network built for 10 s, and
# deprecated torch calls in its front end.
pytestmark = [
    pytest.mark.filterwarnings("ignore:Input image size:UserWarning"),
    pytest.mark.filterwarnings("ignore:.*torch.cuda.amp.autocast:FutureWarning"),
    pytest.mark.filterwarnings("ignore:stft with return_complex=False:UserWarning"),
]


def _noise(n_samples, seed):
    return (0.1 * np.random.default_rng(seed).standard_normal(n_samples)).astype(np.float32)


def _assert_close(actual, desired):
    """Equal up to float32 rounding that differs with the batch a window ran in."""
    np.testing.assert_allclose(actual, desired, rtol=1e-5, atol=1e-5)


# --- stand-ins for the package's imports --------------------------------------------------------


class _TrainingOnlyMasking(nn.Identity):
    """Frequency/TimeMasking: the package's front end builds them, and uses them in training."""

    def __init__(self, *args, **kwargs):
        super().__init__()


@pytest.fixture(scope="module")
def torchaudio_modules():
    """A ``torchaudio`` stand-in whose ``compliance.kaldi`` is torchaudio's own kaldi.py."""
    kaldi = load_torchaudio_kaldi()
    torchaudio = ModuleType("torchaudio")
    compliance = ModuleType("torchaudio.compliance")
    transforms = ModuleType("torchaudio.transforms")
    transforms.FrequencyMasking = transforms.TimeMasking = _TrainingOnlyMasking
    torchaudio.compliance, torchaudio.transforms, compliance.kaldi = compliance, transforms, kaldi
    return {
        "torchaudio": torchaudio,
        "torchaudio.compliance": compliance,
        "torchaudio.compliance.kaldi": kaldi,
        "torchaudio.transforms": transforms,
    }


# --- weights, teachers and the package's own model ----------------------------------------------


@pytest.fixture(scope="module")
def torch_home(tmp_path_factory):
    return tmp_path_factory.mktemp("torch-home")


@pytest.fixture(scope="module")
def checkpoint(torch_home):
    """Random weights (LayerNorms and position embeddings off their initial values) saved as a
    plain state dict where timm caches the release file: $TORCH_HOME/hub/checkpoints/."""
    path = write_passt_weights(torch_home / "hub" / "checkpoints")
    yield path
    path.unlink()


@pytest.fixture(autouse=True)
def empty_homes(tmp_path_factory, monkeypatch):
    """No test sees the real torch hub cache or $PASST_WEIGHTS unless it sets them."""
    home = tmp_path_factory.mktemp("empty-home")
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("TORCH_HOME", str(home / "torch"))
    monkeypatch.delenv(WEIGHTS_ENV, raising=False)
    return home


@pytest.fixture(scope="module")
def teacher(torch_home, checkpoint):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TORCH_HOME", str(torch_home))
        mp.delenv(WEIGHTS_ENV, raising=False)
        return PasstTeacher()


@pytest.fixture(scope="module")
def all_teacher(checkpoint, tmp_path_factory):
    """Mode "all" with 500 ms windows every 250 ms, built as the command line would: explicit
    path first, options as strings."""
    decoy = tmp_path_factory.mktemp("decoy") / WEIGHTS_FILE
    decoy.write_text("not a checkpoint")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(WEIGHTS_ENV, str(decoy))
        return create_teacher(
            "passt",
            weights=str(checkpoint),
            mode="all",
            window_ms="500",
            hop_ms="250",
            batch_size="3",
            device=None,
        )


@pytest.fixture(scope="module")
def package(checkpoint, torchaudio_modules):
    """``hear21passt.base.get_basic_model`` with 960 ms timestamp windows and hops (the paper's).

    The package loads its pretrained weights itself (``get_model(pretrained=True)`` →
    ``load_pretrained``): its download function hands it the random checkpoint.
    """
    downloads = []

    def download_cached_file(url, check_hash=True, progress=False):
        downloads.append(url)
        return str(checkpoint)

    hub = ModuleType("timm.models._hub")
    hub.download_cached_file = download_cached_file
    stand_ins = {
        "timm": ModuleType("timm"),
        "timm.models": ModuleType("timm.models"),
        "timm.models._hub": hub,
        **torchaudio_modules,
    }
    before = set(sys.modules)
    with pytest.MonkeyPatch.context() as mp, contextlib.redirect_stdout(io.StringIO()):
        for name, module in stand_ins.items():
            mp.setitem(sys.modules, name, module)
        base = importlib.import_module("hear21passt.base")
        model = base.get_basic_model(mode="embed_only", timestamp_window=960, timestamp_hop=960)
    # Its modules keep their references to the stand-ins; sys.modules forgets them all.
    for name in set(sys.modules) - before:
        if name.partition(".")[0] == "hear21passt":
            del sys.modules[name]
    assert downloads == [WEIGHTS_URL]
    return SimpleNamespace(base=base, model=model.eval())


def _package_timestamps(package, clip):
    """``hear21passt.base.get_timestamp_embeddings`` of one clip: (frames, dim), times in ms."""
    with contextlib.redirect_stdout(io.StringIO()):
        embeddings, times = package.base.get_timestamp_embeddings(
            torch.from_numpy(clip)[None], package.model
        )
    return embeddings[0].numpy(), times[0].numpy()


@pytest.fixture(scope="module")
def clips():
    return [_noise(round(s * SR), seed) for seed, s in enumerate(CLIP_SECONDS)]


@pytest.fixture(scope="module")
def clip_embeddings(teacher, clips):
    return teacher.embed(clips)


# --- front end ----------------------------------------------------------------------------------


def test_mel_basis_is_torchaudios_with_a_nyquist_column(torchaudio_modules):
    kaldi = torchaudio_modules["torchaudio.compliance.kaldi"]
    expected, _ = kaldi.get_mel_banks(128, 1024, 32000, 0.0, 15000.0, 100.0, -500.0, 1.0)
    basis = passt_mel_basis()
    assert basis.shape == (128, 513) and basis.dtype == torch.float32
    np.testing.assert_array_equal(basis[:, :-1].numpy(), expected.numpy())  # same float32 maths
    assert not basis[:, -1].any()


def test_log_mel_equals_the_package_front_end(package, teacher):
    front_end = package.model.mel
    assert not front_end.training and front_end.fmax == 15000
    windows = torch.from_numpy(np.stack([_noise(WINDOW, seed) for seed in (7, 8)]))
    with torch.no_grad():
        expected = front_end(windows).numpy()
    got = log_mel(windows, teacher.mel_basis, teacher.stft_window).numpy()
    assert got.shape == expected.shape == (2, 128, 96)
    np.testing.assert_allclose(got, expected, rtol=0, atol=2e-5)


# --- embeddings ---------------------------------------------------------------------------------


@pytest.mark.slow
def test_embeddings_equal_the_package_api(teacher, package, clips, clip_embeddings, checkpoint):
    assert teacher.weights == checkpoint  # found in the torch hub cache
    assert [len(e) for e in clip_embeddings] == [2, 4, 1]
    for clip, got in zip(clips[:2], clip_embeddings[:2], strict=True):
        expected, times_ms = _package_timestamps(package, clip)
        assert got.shape == expected.shape == (teacher.num_frames(len(clip)), 768)
        assert got.dtype == np.float32
        _assert_close(got, expected)
        np.testing.assert_allclose(times_ms / 1000, np.arange(len(got)) * teacher.hop_s)
    assert np.std(clip_embeddings[0]) > 0.1
    assert not np.allclose(clip_embeddings[0][0], clip_embeddings[0][1], atol=1e-3)


def test_short_clip_is_zero_padded_to_pad_below_s(teacher, package, clips, clip_embeddings):
    short = clips[2]
    assert len(short) <= PAD < teacher.pad_below_s * SR
    assert teacher.pad_below_s == pytest.approx((PAD + 1) / SR)
    with pytest.raises(RuntimeError):  # the package cannot reflect-pad it
        _package_timestamps(package, short)
    padded = np.concatenate([short, np.zeros(PAD + 1 - len(short), np.float32)])
    expected, _ = _package_timestamps(package, padded)
    assert clip_embeddings[2].shape == expected.shape == (1, 768)
    _assert_close(clip_embeddings[2], expected)
    assert teacher.num_frames(len(short)) == teacher.num_frames(0) == 1
    assert teacher.embed([np.zeros(1, np.float32)])[0].shape == (1, 768)


def test_all_mode_and_other_windows_equal_the_package_api(all_teacher, package, clips):
    assert (all_teacher.dim, all_teacher.batch_size) == (1295, 3)
    assert (all_teacher.window, all_teacher.hop, all_teacher.hop_s) == (16000, 8000, 0.25)
    clip = clips[0][: SR + 123]
    got = all_teacher.embed([clip])[0]
    wrapper = package.model
    saved = wrapper.mode, wrapper.timestamp_window, wrapper.timestamp_hop
    wrapper.mode, wrapper.timestamp_window, wrapper.timestamp_hop = "all", 16000, 8000
    try:
        expected, times_ms = _package_timestamps(package, clip)
    finally:
        wrapper.mode, wrapper.timestamp_window, wrapper.timestamp_hop = saved
    assert got.shape == expected.shape == (all_teacher.num_frames(len(clip)), 1295) == (5, 1295)
    _assert_close(got, expected)
    np.testing.assert_allclose(times_ms, [0, 250, 500, 750, 1000])


def test_embed_is_deterministic_and_independent_of_batching(teacher, clips, clip_embeddings):
    alone = teacher.embed([clips[2]])[0]
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(teacher, "batch_size", 1)
        [again] = teacher.embed([clips[2]])
    np.testing.assert_array_equal(again, alone)  # one window in one pass both times
    _assert_close(alone, clip_embeddings[2])  # it ran beside six other windows there
    assert teacher.embed([]) == []


@pytest.mark.slow
def test_ten_seconds_give_eleven_frames(teacher):
    assert teacher.hop_s == pytest.approx(0.96)
    assert teacher.num_frames(10 * SR) == 11  # frames centred at 0, 0.96, …, 9.6 s
    frames = teacher.embed([_noise(10 * SR, seed=5)])[0]
    assert frames.shape == (11, 768)
    assert np.isfinite(frames).all()


def test_num_frames_follows_the_window_grid(teacher):
    # n // hop + 1 windows once the clip is long enough to reflect-pad.
    lengths = [PAD + 1, WINDOW - 1, WINDOW, 2 * WINDOW - 1, 2 * WINDOW]
    assert [teacher.num_frames(n) for n in lengths] == [1, 1, 2, 2, 3]
    windows = [teacher._windows(np.zeros(n, np.float32), 0) for n in lengths]
    assert [len(w) for w in windows] == [1, 1, 2, 2, 3]


# --- weights ------------------------------------------------------------------------------------


def test_weights_resolution_order(checkpoint, tmp_path, monkeypatch, empty_homes):
    monkeypatch.setenv(WEIGHTS_ENV, str(checkpoint))
    assert weights_path() == checkpoint
    decoy = tmp_path / WEIGHTS_FILE
    decoy.write_text("not a checkpoint")
    assert weights_path(decoy) == decoy
    monkeypatch.delenv(WEIGHTS_ENV)
    cached = empty_homes / "torch" / "hub" / "checkpoints" / WEIGHTS_FILE
    cached.parent.mkdir(parents=True)
    cached.write_bytes(b"")
    assert weights_path() == cached


def test_missing_weights_say_where_and_how(empty_homes):
    with pytest.raises(MissingWeightsError) as err:
        create_teacher("passt")
    message = str(err.value)
    folder = empty_homes / "torch" / "hub" / "checkpoints"
    assert WEIGHTS_FILE in message
    assert str(folder / WEIGHTS_FILE) in message
    assert f"${WEIGHTS_ENV}" in message
    assert f"wget -P {folder} {WEIGHTS_URL}" in message
    assert "github.com/kkoutini/PaSST/releases" in message
    with pytest.raises(MissingWeightsError, match="given path"):
        PasstTeacher(weights=empty_homes / "nowhere.pt")


def test_checkpoint_wrapped_under_model_is_read(tmp_path):
    state = {"time_new_pos_embed": torch.zeros(1)}
    assert passt_state({"model": state}, tmp_path) is state
    assert passt_state(state, tmp_path) is state


@pytest.mark.parametrize(
    ("content", "says"),
    [
        ("text", "not a readable PyTorch checkpoint"),
        ("tensor", "expected the PaSST state dict"),
        ({"state_dict": {}}, "no 'time_new_pos_embed'"),
        (
            {"pos_embed": torch.zeros(1, 198, 768), "cls_token": torch.zeros(1)},
            "no 'time_new_pos_embed'",
        ),
        ("tiny tensors", "wrong shapes"),
    ],
)
def test_malformed_checkpoint_is_named(content, says, checkpoint, tmp_path):
    path = tmp_path / "broken.pt"
    if content == "text":
        path.write_text("not a checkpoint")
    elif content == "tensor":
        torch.save(torch.zeros(3), path)
    elif content == "tiny tensors":
        keys = torch.load(checkpoint, weights_only=True, mmap=True).keys()
        torch.save({k: torch.zeros(1) for k in keys} | {"extra.weight": torch.zeros(1)}, path)
    else:
        torch.save(content, path)
    with pytest.raises(InvalidWeightsError, match=says) as err:
        PasstTeacher(weights=path)
    assert str(path) in str(err.value)
    if content == "tiny tensors":
        assert "1 unexpected keys (extra.weight)" in str(err.value)


def test_fingerprint_names_mode_windows_and_weights(teacher, all_teacher, checkpoint):
    fingerprint = teacher.fingerprint()
    assert fingerprint["teacher"] == "passt"
    assert (fingerprint["sample_rate_hz"], fingerprint["dim"]) == (SR, 768)
    assert fingerprint["hop_s"] == pytest.approx(0.96)
    assert (fingerprint["window_ms"], fingerprint["hop_ms"]) == (960.0, 960.0)
    assert (fingerprint["mode"], fingerprint["arch"]) == ("embed_only", ARCH)
    assert fingerprint["weights_sha256"] == file_sha256(checkpoint)
    assert fingerprint["hear21passt"] == "0.0.26"
    assert "load_shift" not in fingerprint and "load_scale" not in fingerprint  # paper: none
    assert fingerprint["mel_version"] == MEL_OUTPUT_VERSION  # the shared front-end code
    other = all_teacher.fingerprint()
    changed = {k for k in fingerprint if fingerprint[k] != other[k]}
    assert changed == {"mode", "dim", "window_ms", "hop_ms", "hop_s"}


def test_bad_arguments(teacher):
    with pytest.raises(ValueError, match="mode"):
        PasstTeacher(mode="logits")
    with pytest.raises(ValueError, match="batch_size"):
        PasstTeacher(batch_size=0)
    with pytest.raises(ValueError, match="time patches"):
        PasstTeacher(window_ms=100)
    with pytest.raises(ValueError, match="time patches"):
        PasstTeacher(window_ms=20_000)
    with pytest.raises(ValueError, match="one sample"):
        PasstTeacher(hop_ms="0.01")
    with pytest.raises(ValueError, match="mono"):
        teacher.embed([np.zeros((2, SR), np.float32)])


# --- imports ------------------------------------------------------------------------------------


def test_package_loader_cannot_download():
    passt_models()
    helpers = sys.modules["_pipeline_hear21passt.models.helpers.vit_helpers"]
    model = nn.Linear(1, 1)
    model.default_cfg = {"url": WEIGHTS_URL}
    with pytest.raises(RuntimeError, match="downloads are disabled"):
        helpers.load_pretrained(model, num_classes=527, in_chans=1)


@pytest.mark.parametrize("user_timm", [False, True])
def test_import_leaves_sys_modules_as_it_was(user_timm, tmp_path):
    script = textwrap.dedent(
        f"""
        import sys, types
        connections = []
        sys.addaudithook(lambda e, a: connections.append(a) if e == "socket.connect" else None)
        if {user_timm}:
            sys.modules["timm"] = types.ModuleType("timm")
            sys.modules["timm.models"] = types.ModuleType("timm.models")
        NAMES = ("timm", "torchaudio")
        def timm_and_torchaudio():
            return {{k: v for k, v in sys.modules.items() if k.split(".")[0] in NAMES}}
        before = timm_and_torchaudio()
        from pipeline.teachers import MissingWeightsError, create_teacher
        from pipeline.teachers.passt import passt_models
        passt_models().PaSST
        after = timm_and_torchaudio()
        assert after.keys() == before.keys(), (before, after)
        assert all(after[k] is before[k] for k in after)
        assert "hear21passt" not in sys.modules, "the package's __init__ ran"
        try:
            create_teacher("passt")
        except MissingWeightsError:
            pass
        else:
            sys.exit("weights found in an empty home")
        assert not connections, connections
        print("ok")
        """
    )
    env = {k: v for k, v in os.environ.items() if k != WEIGHTS_ENV}
    env |= {"HOME": str(tmp_path), "TORCH_HOME": str(tmp_path / "torch")}
    done = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"
    assert not (tmp_path / "torch").exists()
