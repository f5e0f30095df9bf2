"""MobileNetV3-style student: documented size, shapes and frames_out, gradients, options."""

from __future__ import annotations

import pytest
import torch

from pipeline.students import count_parameters, create_student
from pipeline.students.mobilenet_v3 import MobileNetV3

DEFAULT_PARAMS = 795_212  # width 0.5, 20 classes, as stated in the module docstring
WIDTH_ONE_PARAMS = 2_990_884


def _model(**options) -> MobileNetV3:
    options = {"n_classes": 20, "n_mels": 128, **options}
    return create_student("mobilenet_v3", **options)


def test_default_parameter_count_is_documented_and_in_range() -> None:
    model = _model()
    assert isinstance(model, MobileNetV3)
    assert model.width == 0.5 and model.feature_dim == 480
    assert count_parameters(model) == DEFAULT_PARAMS
    assert 500_000 <= DEFAULT_PARAMS <= 1_500_000


def test_width_changes_parameter_count() -> None:
    counts = [count_parameters(_model(width=w)) for w in (0.25, 0.5, 1.0)]
    assert counts[0] < counts[1] < counts[2] == WIDTH_ONE_PARAMS
    assert count_parameters(_model(width=None)) == DEFAULT_PARAMS  # None falls back


def test_parameter_count_ignores_n_mels() -> None:
    assert count_parameters(_model(n_mels=96)) == DEFAULT_PARAMS


@pytest.mark.parametrize("n_mels", [96, 128])
@pytest.mark.parametrize("n_frames", [1, 31, 32, 33, 101, 501, 1001])
def test_shapes_and_frames_out_match_forward(n_mels: int, n_frames: int) -> None:
    model = _model(n_mels=n_mels, width=0.25).eval()
    with torch.no_grad():
        logits, features = model(torch.randn(2, n_mels, n_frames))
    assert logits.shape == (2, 20)
    assert features.shape == (2, model.frames_out(n_frames), model.feature_dim)
    assert model.frames_out(n_frames) == -(-n_frames // 32)


def test_gradient_reaches_every_parameter() -> None:
    torch.manual_seed(0)
    model = _model(n_mels=96).train()
    logits, features = model(torch.randn(2, 96, 101))
    (logits.square().mean() + features.square().mean()).backward()
    for name, parameter in model.named_parameters():
        assert parameter.grad is not None, name
        assert parameter.grad.abs().sum() > 0, name


def test_eval_mode_is_deterministic() -> None:
    torch.manual_seed(0)
    model = _model(dropout=0.5).eval()
    mel = torch.randn(2, 128, 101)
    with torch.no_grad():
        first, second = model(mel), model(mel)
    assert torch.equal(first[0], second[0]) and torch.equal(first[1], second[1])


def test_single_class() -> None:
    model = _model(n_classes=1, n_mels=96)
    logits, _ = model(torch.randn(3, 96, 64))
    assert logits.shape == (3, 1)
    assert count_parameters(model) == DEFAULT_PARAMS - 19 * (model.feature_dim + 1)


def test_rejects_wrong_mel_count_and_bad_width() -> None:
    with pytest.raises(ValueError, match="expected mel of shape"):
        _model(n_mels=96)(torch.randn(1, 128, 64))
    with pytest.raises(ValueError, match="width > 0"):
        _model(width=0)
