"""The HEAR adapter, on tiny HEAR-API modules written into a temporary folder."""

import hashlib
import importlib
import json
import sys
import textwrap

import numpy as np
import pytest
import torch

from pipeline.teachers import InvalidWeightsError, MissingWeightsError, file_sha256
from pipeline.teachers.hear import HearApiError, HearTeacher, module_identity

SR = 16000
HOP = 8000  # 0.5 s

# A HEAR module: 1 s frames every 0.5 s (centred, zero-padded), a random linear projection to 8
# dimensions; the scene embedding is the mean and max of the frames (16 dimensions).
TINY_HEAR = textwrap.dedent(
    """
    import torch
    from torch import nn

    SAMPLE_RATE = 16000
    HOP = 8000
    WINDOW = 16000
    DIM = 8
    TIMESTAMP_DIM = DIM
    SCENE_DIM = 2 * DIM
    MS_PER_SECOND = 1000.0
    LOAD_CALLS = []


    class TinyModel(nn.Module):
        def __init__(self):
            super().__init__()
            self.sample_rate = SAMPLE_RATE
            self.timestamp_embedding_size = TIMESTAMP_DIM
            self.scene_embedding_size = SCENE_DIM
            self.proj = nn.Linear(WINDOW, DIM)

        def forward(self, audio):
            padded = nn.functional.pad(audio, (WINDOW // 2, WINDOW // 2))
            return torch.tanh(self.proj(padded.unfold(1, WINDOW, HOP)))


    def load_model(*args):
        LOAD_CALLS.append(args)
        with torch.random.fork_rng():
            torch.manual_seed(0)  # stands in for weights the module would fetch itself
            model = TinyModel()
        if args and args[0]:
            state = torch.load(args[0], map_location="cpu", weights_only=True)
            model.load_state_dict(state)
        return model


    def get_timestamp_embeddings(audio, model):
        embeddings = model(audio)
        n_sounds, n_frames = embeddings.shape[:2]
        step = HOP / SAMPLE_RATE * MS_PER_SECOND
        timestamps = torch.arange(n_frames, dtype=torch.float32) * step
        return embeddings, timestamps.expand(n_sounds, n_frames)


    def get_scene_embeddings(audio, model):
        embeddings, _ = get_timestamp_embeddings(audio, model)
        return torch.cat([embeddings.mean(1), embeddings.amax(1)], dim=1)
    """
)

# Broken variants: the tiny module plus these lines.
VARIANTS = {
    "hear_no_scene": "del get_scene_embeddings",
    "hear_no_size": textwrap.dedent(
        """
        class TinyModel(TinyModel):
            def __init__(self):
                super().__init__()
                del self.scene_embedding_size
        """
    ),
    "hear_wrong_dim": "TIMESTAMP_DIM = 7",
    "hear_wrong_scene": textwrap.dedent(
        """
        _scene = get_scene_embeddings
        def get_scene_embeddings(audio, model):
            return _scene(audio, model)[:, None]
        """
    ),
    "hear_seconds": "MS_PER_SECOND = 1.0",
    "hear_uneven": textwrap.dedent(
        """
        _timestamps = get_timestamp_embeddings
        def get_timestamp_embeddings(audio, model):
            embeddings, timestamps = _timestamps(audio, model)
            return embeddings, timestamps ** 1.1
        """
    ),
    "hear_needs_dep": "import not_an_installed_package_q7",
}


@pytest.fixture(scope="module")
def modules_dir(tmp_path_factory):
    """A folder on sys.path holding ``tiny_hear`` and its broken variants."""
    folder = tmp_path_factory.mktemp("hear_modules")
    (folder / "tiny_hear.py").write_text(TINY_HEAR)
    for name, extra in VARIANTS.items():
        (folder / f"{name}.py").write_text(TINY_HEAR + "\n" + extra + "\n")
    package = folder / "tiny_hear_pkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "core.py").write_text(TINY_HEAR)
    (package / "api.py").write_text(
        "from tiny_hear_pkg.core import load_model, get_timestamp_embeddings, "
        "get_scene_embeddings\n"
    )
    names = ["tiny_hear", "tiny_hear_pkg", *VARIANTS]
    with pytest.MonkeyPatch.context() as mp:
        mp.syspath_prepend(str(folder))
        yield folder
        for name in list(sys.modules):
            if name.split(".")[0] in names:
                del sys.modules[name]


@pytest.fixture(scope="module")
def tiny(modules_dir):
    return importlib.import_module("tiny_hear")


@pytest.fixture(scope="module")
def weights(tiny, tmp_path_factory):
    """Random weights, unlike those ``load_model()`` makes by itself, as ``torch.save`` wrote."""
    torch.manual_seed(1)
    model = tiny.TinyModel()
    for p in model.parameters():
        torch.nn.init.normal_(p, std=0.02)
    path = tmp_path_factory.mktemp("weights") / "tiny.pt"
    torch.save(model.state_dict(), path)
    return path


@pytest.fixture(scope="module")
def reference(tiny, weights):
    return tiny.load_model(str(weights))


@pytest.fixture(scope="module")
def teacher(weights):
    return HearTeacher(module="tiny_hear", weights=weights, batch_size=2)


@pytest.fixture(scope="module")
def scene_teacher(weights):
    return HearTeacher(module="tiny_hear", weights=str(weights), layer="scene")


@pytest.fixture(scope="module")
def clips():
    """Three clips of one length (two batches of two) and three others, one below one hop."""
    rng = np.random.default_rng(0)
    lengths = [SR, 2 * SR + 4321, SR, 4800, SR, 44100]
    return [(0.1 * rng.standard_normal(n)).astype(np.float32) for n in lengths]


def _own_timestamp_embeddings(tiny, model, clip):
    with torch.no_grad():
        embeddings, timestamps = tiny.get_timestamp_embeddings(torch.from_numpy(clip)[None], model)
    return embeddings[0].numpy(), timestamps[0].numpy()


def _own_scene_embedding(tiny, model, clip):
    with torch.no_grad():
        return tiny.get_scene_embeddings(torch.from_numpy(clip)[None], model)[0].numpy()


def test_timestamp_embeddings_equal_the_module_api(teacher, tiny, reference, clips):
    got = teacher.embed(clips)
    assert len(got) == len(clips)
    for g, clip in zip(got, clips, strict=True):
        expected, timestamps = _own_timestamp_embeddings(tiny, reference, clip)
        assert g.dtype == np.float32
        assert g.shape == (len(clip) // HOP + 1, 8) == expected.shape
        np.testing.assert_allclose(g, expected, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(np.diff(timestamps), 1000 * teacher.hop_s)
    assert [len(g) for g in got] == [3, 5, 3, 1, 3, 6]
    assert np.std(got[0]) > 0
    assert not np.allclose(got[0], got[2])  # same length, different audio


def test_scene_embeddings_equal_the_module_api(scene_teacher, tiny, reference, clips):
    got = scene_teacher.embed(clips)
    for g, clip in zip(got, clips, strict=True):
        assert g.shape == (1, 16)
        assert g.dtype == np.float32
        np.testing.assert_allclose(g[0], _own_scene_embedding(tiny, reference, clip), atol=1e-6)
    assert [scene_teacher.num_frames(len(c)) for c in clips] == [1] * len(clips)
    assert scene_teacher.hop_s is None
    assert scene_teacher.dim == 16


def test_embed_is_deterministic_and_batch_independent(teacher, clips):
    first = teacher.embed(clips)
    alone = [teacher.embed([clip])[0] for clip in reversed(clips)][::-1]
    for a, b in zip(first, alone, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(teacher.embed(clips)[1], first[1])
    assert teacher.embed([]) == []


def test_equal_lengths_share_batches_of_batch_size(teacher, tiny, clips, monkeypatch):
    shapes = []

    def recording(audio, model):
        shapes.append(tuple(audio.shape))
        return own(audio, model)

    own = tiny.get_timestamp_embeddings
    monkeypatch.setattr(tiny, "get_timestamp_embeddings", recording)
    teacher.embed(clips)
    assert sorted(shapes) == sorted([(2, SR), (1, SR), (1, 2 * SR + 4321), (1, 4800), (1, 44100)])


def test_attributes_and_measured_hop(teacher):
    assert teacher.name == "hear:tiny_hear"
    assert teacher.sample_rate_hz == SR
    assert teacher.dim == teacher.timestamp_dim == 8
    assert teacher.scene_dim == 16
    assert teacher.hop_s == 0.5
    assert teacher.min_duration_s == teacher.pad_below_s == 0.0


def test_num_frames_equals_embedded_rows(teacher):
    lengths = [1, HOP - 1, HOP, HOP + 1, 3 * SR + 17, 10 * SR]
    waves = [np.random.default_rng(n).standard_normal(n).astype(np.float32) for n in lengths]
    rows = [len(e) for e in teacher.embed(waves)]
    assert rows == [teacher.num_frames(n) for n in lengths]
    assert rows == [1, 1, 2, 2, 7, 21]  # 1 + n // 8000


def test_short_clips_are_padded_when_asked(weights, tiny, reference):
    teacher = HearTeacher(module="tiny_hear", weights=weights, pad_below_s="1.25", batch_size="3")
    assert (teacher.pad_below_s, teacher.batch_size) == (1.25, 3)
    short = np.random.default_rng(3).standard_normal(4000).astype(np.float32)
    [got] = teacher.embed([short])
    padded = np.concatenate([short, np.zeros(16000, np.float32)])
    np.testing.assert_allclose(got, _own_timestamp_embeddings(tiny, reference, padded)[0])
    assert teacher.num_frames(len(short)) == len(got) == 3
    assert teacher.hop_s == 0.5
    assert teacher.fingerprint()["pad_below_s"] == 1.25


def test_without_weights_load_model_gets_no_argument(tiny, clips):
    teacher = HearTeacher(module="tiny_hear")
    assert tiny.LOAD_CALLS[-1] == ()
    own = tiny.load_model()
    np.testing.assert_allclose(
        teacher.embed(clips[:1])[0], _own_timestamp_embeddings(tiny, own, clips[0])[0], atol=1e-6
    )
    assert teacher.fingerprint()["weights_sha256"] is None


def test_fingerprint(teacher, scene_teacher, modules_dir, weights, reference, tmp_path):
    fingerprint = teacher.fingerprint()
    source = (modules_dir / "tiny_hear.py").read_bytes()
    assert fingerprint["teacher"] == "hear:tiny_hear"
    assert fingerprint["hear_module"] == "tiny_hear"
    assert fingerprint["module_sha256"] == hashlib.sha256(source).hexdigest()
    assert fingerprint["weights_sha256"] == file_sha256(weights)
    assert (fingerprint["layer"], fingerprint["hop_s"]) == ("timestamp", 0.5)
    assert (fingerprint["sample_rate_hz"], fingerprint["dim"]) == (SR, 8)
    assert fingerprint["pad_below_s"] == 0.0
    assert json.loads(json.dumps(fingerprint)) == fingerprint

    scene = scene_teacher.fingerprint()
    assert {k for k in fingerprint if fingerprint[k] != scene[k]} == {"layer", "hop_s", "dim"}

    changed = tmp_path / "changed.pt"
    state = reference.state_dict()
    torch.save(state | {"proj.bias": state["proj.bias"] + 1}, changed)
    other = HearTeacher(module="tiny_hear", weights=changed, batch_size=2).fingerprint()
    assert {k for k in fingerprint if fingerprint[k] != other[k]} == {"weights_sha256"}


def test_module_identity_of_packages(modules_dir):
    assert module_identity(np) == {"module_distribution": f"numpy=={np.__version__}"}
    api = importlib.import_module("tiny_hear_pkg.api")
    before = module_identity(api)["module_sha256"]
    assert before is not None
    core = modules_dir / "tiny_hear_pkg" / "core.py"
    core.write_text(TINY_HEAR + "\n# changed\n")
    try:
        assert module_identity(api)["module_sha256"] != before  # a sibling file counts too
    finally:
        core.write_text(TINY_HEAR)
    assert module_identity(api)["module_sha256"] == before


def test_dotted_module_name(weights, teacher, clips):
    other = HearTeacher(module="tiny_hear_pkg.api", weights=weights)
    assert other.name == "hear:tiny_hear_pkg.api"
    np.testing.assert_allclose(other.embed(clips[:2])[1], teacher.embed(clips[:2])[1], atol=1e-6)


def test_missing_module_is_named(modules_dir):
    with pytest.raises(ImportError, match="HEAR module 'no_such_hear_module' is not installed"):
        HearTeacher(module="no_such_hear_module")
    with pytest.raises(ImportError, match="'hear_needs_dep' needs 'not_an_installed_package_q7'"):
        HearTeacher(module="hear_needs_dep")


def test_missing_api_function_is_named(modules_dir):
    with pytest.raises(HearApiError) as err:
        HearTeacher(module="hear_no_scene")
    assert "'hear_no_scene'" in str(err.value)
    assert "lacks get_scene_embeddings" in str(err.value)


def test_missing_model_attribute_is_named(modules_dir):
    with pytest.raises(HearApiError, match="'hear_no_size' lacks scene_embedding_size"):
        HearTeacher(module="hear_no_size")


def test_missing_weights_path_is_named(modules_dir, tmp_path):
    missing = tmp_path / "nowhere" / "tiny.pt"
    with pytest.raises(MissingWeightsError) as err:
        HearTeacher(module="tiny_hear", weights=missing)
    message = str(err.value)
    assert "hear:tiny_hear" in message
    assert str(missing) in message
    assert "WEIGHTS=<file>" in message


def test_malformed_weights_are_named(modules_dir, tmp_path):
    path = tmp_path / "broken.pt"
    path.write_text("not a checkpoint")
    with pytest.raises(InvalidWeightsError, match="tiny_hear.load_model could not load it") as err:
        HearTeacher(module="tiny_hear", weights=path)
    assert str(path) in str(err.value)


def test_wrong_timestamp_shape_is_named(modules_dir):
    with pytest.raises(HearApiError) as err:
        HearTeacher(module="hear_wrong_dim")
    message = str(err.value)
    assert "hear_wrong_dim.get_timestamp_embeddings returned embeddings of shape" in message
    assert "(1, 3, 8)" in message
    assert "expected (1, n_timestamps, 7)" in message


def test_wrong_scene_shape_is_named(modules_dir):
    with pytest.raises(HearApiError, match=r"hear_wrong_scene.get_scene_embeddings .*\(1, 1, 16\)"):
        HearTeacher(module="hear_wrong_scene", layer="scene")
    timestamp_layer = HearTeacher(module="hear_wrong_scene")  # the scene is not used
    assert timestamp_layer.hop_s == 0.5


def test_timestamps_in_seconds_or_uneven_are_refused(modules_dir):
    with pytest.raises(HearApiError, match="timestamps must be in milliseconds"):
        HearTeacher(module="hear_seconds")
    with pytest.raises(HearApiError, match="'hear_uneven' returned timestamps that are not evenly"):
        HearTeacher(module="hear_uneven")


def test_bad_arguments(modules_dir, teacher):
    with pytest.raises(ValueError, match="layer"):
        HearTeacher(module="tiny_hear", layer="frames")
    with pytest.raises(ValueError, match="batch_size"):
        HearTeacher(module="tiny_hear", batch_size=0)
    with pytest.raises(ValueError, match="pad_below_s"):
        HearTeacher(module="tiny_hear", pad_below_s=-1)
    with pytest.raises(ValueError, match="mono"):
        teacher.embed([np.zeros((2, SR), np.float32)])


def test_extract_cli_with_a_hear_module(weights, tiny, reference, clips, tmp_path, capsys):
    import soundfile as sf

    from pipeline.cli import main
    from pipeline.data.manifest import make_manifest
    from pipeline.stores import read_store

    paths = []
    for i, clip in enumerate(clips[:3]):
        sf.write(tmp_path / f"{i}.wav", clip, SR, subtype="FLOAT")
        paths.append(tmp_path / f"{i}.wav")
    manifest = make_manifest(
        "toy",
        clip_ids=["a", "b", "c"],
        paths=paths,
        splits=["train"] * 3,
        classes=["x"],
        labels=np.zeros((3, 1)),
    )
    manifest.write(tmp_path / "data" / "manifests" / "toy.parquet")
    argv = ["--data-dir", str(tmp_path / "data"), "extract", "toy", "hear:tiny_hear"]
    assert main([*argv, "--weights", str(weights), "--jobs", "1", "-q"]) == 0
    assert "3/3 clips embedded" in capsys.readouterr().out
    store = read_store(tmp_path / "data" / "cache" / "toy" / "hear-tiny_hear.zarr")
    assert store.fingerprint["teacher"] == "hear:tiny_hear"
    for clip_id, clip in zip("abc", clips[:3], strict=True):
        want, _ = _own_timestamp_embeddings(tiny, reference, clip)
        np.testing.assert_allclose(store.read(clip_id), want, atol=2e-3, rtol=2e-3)  # float16
