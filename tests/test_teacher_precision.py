"""Teachers at bf16 and fp16 (autocast) against fp32, on the CPU, and the ``precision`` plumbing.

Every teacher is built as the golden-output tests build it (``tests/golden.py``: random weights
in each package's own format, or the real weights a wheel ships) and embeds the golden clips
(chords over noise, at its own rate) at fp32 and at bf16. Its ``bf16_agrees`` flag must say
what the figures say: every frame's cosine with its fp32 frame at least
:data:`~pipeline.teachers.base.AGREEMENT_MIN_COSINE` when True, some frame below it when False.
The HEAR teacher cannot vouch for an unknown module, so its flag is an option: the tiny test
module is given ``bf16_agrees=True`` and held to it.

The cosines are taken after the fingerprint's ``load_shift`` (as training sees the values). The
minimum per teacher is recorded as the test's ``min_cosine`` property (``--junitxml``) and
appears in any failure message.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from types import MappingProxyType

import numpy as np
import pytest
import torch
from golden import build_encoder, golden_audio
from torch import nn

from pipeline.cli import main
from pipeline.stores import markers, read_store
from pipeline.teachers import Teacher, create_teacher
from pipeline.teachers.base import AGREEMENT_MIN_COSINE, frame_cosines
from pipeline.teachers.musicnn import MusicnnTeacher

# "panns:frames" is PANNs' frame layer, from the clip layer's weights (slow: a second Cnn14).
TEACHERS = (
    "musicnn",
    "aisfx",
    "panns",
    pytest.param("panns:frames", marks=pytest.mark.slow),
    "vggish",
    "openl3",
    "passt",
    "hear",
)
# Modules inside a network that are its front end and must stay float32 under autocast.
FRONT_ENDS = {
    "panns": ("spectrogram_extractor", "logmel_extractor"),
    "openl3": ("speclayer",),
}


def _build(name: str, folder: Path, built: dict[str, Teacher]) -> Teacher:
    if name == "panns:frames":
        clip_layer = built.get("panns") or _build("panns", folder, built)
        return create_teacher("panns", weights=clip_layer.weights, layer="frames")
    teacher = build_encoder(name, folder)
    if name == "hear":  # the tiny module's bf16 embeddings agree (held to it below)
        return create_teacher(teacher.name, weights=teacher.weights, bf16_agrees=True)
    return teacher


@pytest.fixture(scope="module")
def teachers(tmp_path_factory):
    """name → teacher at fp32, each built on first use and shared by the tests of this file."""
    folder = tmp_path_factory.mktemp("weights")
    built: dict[str, Teacher] = {}

    def get(name: str) -> Teacher:
        if name not in built:
            built[name] = _build(name, folder, built)
        built[name].choose_precision("fp32", "cpu")
        return built[name]

    return get


def _embed_at(teacher: Teacher, precision: str, clips: list[np.ndarray]) -> list[np.ndarray]:
    teacher.choose_precision(precision, "cpu")
    try:
        return teacher.embed(clips)
    finally:
        teacher.choose_precision("fp32", "cpu")


@pytest.fixture(scope="module")
def embeddings(teachers):
    """(name, precision) → the teacher's embeddings of the golden clips, computed once."""
    done: dict[tuple[str, str], list[np.ndarray]] = {}

    def get(name: str, precision: str) -> list[np.ndarray]:
        if (name, precision) not in done:
            teacher = teachers(name)
            clips = golden_audio(teacher.sample_rate_hz)
            done[name, precision] = _embed_at(teacher, precision, clips)
        return done[name, precision]

    return get


def _min_cosine(teachers, embeddings, name: str, precision: str) -> float:
    shift = teachers(name).fingerprint().get("load_shift")
    return float(frame_cosines(embeddings(name, "fp32"), embeddings(name, precision), shift).min())


def _network(teacher: Teacher) -> nn.Module:
    [network] = [v for v in vars(teacher).values() if isinstance(v, nn.Module)]
    return network


@pytest.mark.parametrize("name", TEACHERS)
def test_the_bf16_flag_says_what_the_cosines_say(name, teachers, embeddings, record_property):
    teacher = teachers(name)
    lowest = _min_cosine(teachers, embeddings, name, "bf16")
    record_property("min_cosine", lowest)
    figure = f"{name}: least per-frame cosine bf16 vs fp32 = {lowest:.6f}"
    if teacher.bf16_agrees:
        assert lowest >= AGREEMENT_MIN_COSINE, figure
    else:
        assert lowest < AGREEMENT_MIN_COSINE, figure


@pytest.mark.parametrize("name", TEACHERS)
def test_bf16_embeddings_are_float32_numpy_of_the_fp32_shapes(name, embeddings):
    for fp32, bf16 in zip(embeddings(name, "fp32"), embeddings(name, "bf16"), strict=True):
        assert isinstance(bf16, np.ndarray) and bf16.dtype == np.float32
        assert bf16.shape == fp32.shape and np.isfinite(bf16).all()


@pytest.mark.parametrize("name", TEACHERS)
def test_fp16_on_the_cpu_works_or_is_refused_in_one_line(name, teachers, embeddings):
    teacher = teachers(name)
    if "fp16" in teacher.refused_precisions:
        with pytest.raises(ValueError, match="fp16") as refused:
            teacher.choose_precision("fp16", "cpu")
        assert "\n" not in str(refused.value)
        return
    for out in embeddings(name, "fp16"):
        assert out.dtype == np.float32 and np.isfinite(out).all()
    assert _min_cosine(teachers, embeddings, name, "fp16") >= AGREEMENT_MIN_COSINE


@pytest.mark.parametrize("name", TEACHERS)
def test_the_network_runs_in_bf16_and_its_front_end_in_float32(name, teachers):
    teacher = teachers(name)
    network = _network(teacher)
    layer = next(m for m in network.modules() if isinstance(m, nn.Conv2d | nn.Linear))
    watched = {"layer": layer} | {f: getattr(network, f) for f in FRONT_ENDS.get(name, ())}
    seen: dict[str, set[torch.dtype]] = {key: set() for key in watched}
    hooks = [
        module.register_forward_hook(lambda m, i, out, key=key: seen[key].add(out.dtype))
        for key, module in watched.items()
    ]
    try:
        [clip] = golden_audio(teacher.sample_rate_hz)[1:]
        _embed_at(teacher, "bf16", [clip])
        assert seen.pop("layer") == {torch.bfloat16}
        assert all(dtypes == {torch.float32} for dtypes in seen.values()), seen
        seen = {key: set() for key in watched}
        teacher.embed([clip])
        assert all(dtypes == {torch.float32} for dtypes in seen.values()), seen
    finally:
        for hook in hooks:
            hook.remove()


@pytest.mark.parametrize("name", TEACHERS)
def test_the_fingerprint_is_the_same_at_every_precision(name, teachers):
    teacher = teachers(name)
    expected = teacher.fingerprint()
    for precision in ("bf16", "fp16", "auto", "fp32"):
        teacher.choose_precision(precision, "cpu")
        assert teacher.fingerprint() == expected


def test_a_teacher_built_at_bf16_has_the_fp32_fingerprint():
    bf16 = create_teacher("aisfx", precision="bf16")
    assert bf16.precision == "bf16"
    assert bf16.fingerprint() == create_teacher("aisfx").fingerprint()


def test_auto_is_bf16_on_a_bf16_gpu_only_for_a_teacher_whose_flag_is_true(teachers, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda **_: True)
    agreeing = teachers("aisfx")
    assert agreeing.bf16_agrees
    assert agreeing.choose_precision("auto", "cpu") == "fp32"
    assert agreeing.choose_precision("auto", "cuda") == "bf16"
    assert agreeing.choose_precision(None, "cuda") == "bf16"
    unknown = create_teacher("hear:golden_hear", weights=teachers("hear").weights)
    assert not unknown.bf16_agrees  # the default for a HEAR module
    assert unknown.choose_precision("auto", "cuda") == "fp32"
    assert unknown.choose_precision("bf16", "cuda") == "bf16"  # asked for explicitly
    monkeypatch.setattr(agreeing, "refused_precisions", {"bf16": "a stand-in reason"})
    assert agreeing.choose_precision("auto", "cuda") == "fp32"
    agreeing.choose_precision("fp32", "cpu")


def test_an_unknown_precision_is_one_line_naming_the_teacher():
    with pytest.raises(ValueError, match=r"aisfx: unknown precision 'int8'.*fp32") as err:
        create_teacher("aisfx", precision="int8")
    assert "\n" not in str(err.value)


def test_a_refused_precision_is_one_line_before_any_weights_are_read():
    class Refusing(MusicnnTeacher):
        refused_precisions = MappingProxyType({"fp16": "its activations overflow float16"})

    message = r"musicnn cannot run at precision fp16 \(its activations overflow float16\); use "
    with pytest.raises(ValueError, match=message + "bf16 or fp32 instead") as err:
        Refusing(weights="/no/such/checkpoint", precision="fp16")
    assert "\n" not in str(err.value)


def test_extract_at_bf16_records_it_and_a_resume_at_fp32_keeps_both(tmp_path, capsys):
    data = tmp_path / "data"
    assert main(["--data-dir", str(data), "data", "demo", "--clips", "3"]) == 0
    common = ["--data-dir", str(data), "extract", "demo", "musicnn", "--shard-size", "2"]
    common += ["--jobs", "1", "-q"]
    assert main([*common, "--precision", "bf16"]) == 0
    store = read_store(data / "cache" / "demo" / "musicnn.zarr")
    assert store.precisions == ["bf16"]
    assert store.fingerprint == create_teacher("musicnn").fingerprint()  # fp32's
    bf16_rows = {clip: store.read(clip) for clip in store.clip_ids}
    # Redo the last shard at fp32: the store is resumed, not stale.
    shutil.rmtree(markers.shard_marker(store.path, 1).parent)
    shutil.rmtree(store.path / "COMPLETE")
    assert main([*common, "--precision", "fp32", "--replace-stale"]) == 0
    assert "1 shards written, 1 already done" in capsys.readouterr().out
    store = read_store(store.path)
    assert store.precisions == ["bf16", "fp32"]
    for clip, before in bf16_rows.items():
        after = store.read(clip)
        assert frame_cosines([before], [after]).min() >= AGREEMENT_MIN_COSINE
