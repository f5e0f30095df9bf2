"""Student registry and the two EAsT students: sizes from the paper, shapes, gradients."""

from __future__ import annotations

import pytest
import torch

from pipeline.students import count_parameters, create_student, list_students

# Parameter counts reported in the paper (Ding & Lerch, section "Students").
PAPER_CP_RESNET_PARAMS = 5_500_000  # rho = 7, OpenMIC (20 classes)
PAPER_MOBILE_FCN_PARAMS = 314_000  # MTAT (50 classes)


def test_registry_lists_students() -> None:
    assert list_students() == ["cp_resnet", "mobile_fcn", "mobilenet_v3"]


def test_unknown_student_lists_valid_names() -> None:
    with pytest.raises(ValueError, match="cp_resnet, mobile_fcn, mobilenet_v3"):
        create_student("vgg", n_classes=2, n_mels=96)


def test_none_options_fall_back_to_defaults() -> None:
    model = create_student("cp_resnet", n_classes=20, n_mels=128, rho=None)
    assert model.rho == 7


def test_cp_resnet_parameter_count_matches_paper() -> None:
    model = create_student("cp_resnet", n_classes=20, n_mels=128, rho=7)
    assert count_parameters(model) == pytest.approx(PAPER_CP_RESNET_PARAMS, rel=0.05)


def test_mobile_fcn_parameter_count_matches_paper() -> None:
    model = create_student("mobile_fcn", n_classes=50, n_mels=96)
    assert count_parameters(model) == pytest.approx(PAPER_MOBILE_FCN_PARAMS, rel=0.05)


def test_rho_grows_receptive_field_and_parameters() -> None:
    small, large = (create_student("cp_resnet", n_classes=20, n_mels=128, rho=r) for r in (5, 9))
    assert small.receptive_field() < large.receptive_field()
    assert count_parameters(small) < count_parameters(large)


@pytest.mark.parametrize(
    ("name", "n_classes", "n_mels", "n_frames"),
    [("cp_resnet", 20, 128, 200), ("mobile_fcn", 50, 96, 300)],
)
def test_forward_shapes_and_gradients(
    name: str, n_classes: int, n_mels: int, n_frames: int
) -> None:
    torch.manual_seed(0)
    model = create_student(name, n_classes=n_classes, n_mels=n_mels)
    logits, features = model(torch.randn(2, n_mels, n_frames))
    assert logits.shape == (2, n_classes)
    assert features.shape == (2, model.frames_out(n_frames), model.feature_dim)

    for output in (logits, features):
        model.zero_grad()
        output.square().mean().backward(retain_graph=True)
        first_conv = next(p for p in model.parameters() if p.ndim == 4)
        assert first_conv.grad is not None and first_conv.grad.abs().sum() > 0


def test_frames_out_for_full_clips() -> None:
    assert create_student("cp_resnet", n_classes=20, n_mels=128).frames_out(1001) == 62
    assert create_student("mobile_fcn", n_classes=50, n_mels=96).frames_out(1457) == 91


def test_wrong_mel_count_is_rejected() -> None:
    model = create_student("mobile_fcn", n_classes=50, n_mels=96)
    with pytest.raises(ValueError, match="expected mel of shape"):
        model(torch.randn(1, 128, 64))
