"""Student registry and the two EAsT students: the official architectures, init, shapes, frames.

The expected shapes, kernel tables and sizes below were worked out by hand from the official
EAsT model definitions (CP ResNet at rho = 7 with 128 base channels, Mobile FCN at 96 bands);
no reference code is imported.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from pipeline.students import count_parameters, create_student, list_students
from pipeline.students.cp_resnet import BasicBlock, block_kernels
from pipeline.students.mobile_fcn import layer_pools

# Exact sizes of the official networks.
CP_RESNET_PARAMS = 5_534_612  # rho = 7, 128 base channels, OpenMIC (20 classes)
MOBILE_FCN_PARAMS = 314_098  # 96 mel bands, MTAT (50 classes)

# (k1, k2) per block and stage, read off the official rho rule by hand.
KERNELS_RHO_7 = [
    [(3, 1), (3, 3), (3, 3), (3, 3)],
    [(3, 1), (1, 3), (1, 3), (1, 3)],
    [(1, 1), (1, 1), (1, 1), (1, 1)],
]
KERNELS_BY_RHO = {
    5: [
        [(3, 1), (3, 3), (3, 3), (3, 1)],
        [(1, 1), (1, 3), (1, 3), (1, 1)],
        [(1, 1), (1, 1), (1, 1), (1, 1)],
    ],
    7: KERNELS_RHO_7,
    9: [
        [(3, 1), (3, 3), (3, 3), (3, 3)],
        [(3, 1), (3, 3), (1, 3), (1, 3)],
        [(1, 1), (1, 1), (1, 1), (1, 1)],
    ],
    16: [
        [(3, 1), (3, 3), (3, 3), (3, 3)],
        [(3, 1), (3, 3), (3, 3), (3, 3)],
        [(3, 3), (1, 1), (1, 1), (1, 1)],
    ],
}


def _cp_resnet(**options) -> nn.Module:
    return create_student("cp_resnet", n_classes=20, n_mels=128, **options)


def _mobile_fcn(n_mels: int = 96) -> nn.Module:
    return create_student("mobile_fcn", n_classes=50, n_mels=n_mels)


def _blocks(model: nn.Module) -> list[BasicBlock]:
    return [m for m in model.modules() if isinstance(m, BasicBlock)]


def test_registry_lists_students() -> None:
    assert list_students() == ["cp_resnet", "mobile_fcn", "mobilenet_v3"]


def test_unknown_student_lists_valid_names() -> None:
    with pytest.raises(ValueError, match="cp_resnet, mobile_fcn, mobilenet_v3"):
        create_student("vgg", n_classes=2, n_mels=96)


def test_none_options_fall_back_to_defaults() -> None:
    model = create_student("cp_resnet", n_classes=20, n_mels=128, rho=None, base_channels=None)
    assert (model.rho, model.base_channels) == (7, 128)


# --- CP ResNet --------------------------------------------------------------------------------


def test_cp_resnet_parameter_count_is_exact() -> None:
    assert count_parameters(_cp_resnet(rho=7)) == CP_RESNET_PARAMS


def test_cp_resnet_parameter_shapes_match_official() -> None:
    b, n_classes = 128, 20
    expected = [(b, 1, 5, 5), (b,), (b,)]  # stem conv and BN
    in_ch = b
    for width, kernels in zip((b, 2 * b, 4 * b), KERNELS_RHO_7, strict=True):
        for k1, k2 in kernels:
            expected += [(width, in_ch, k1, k1), (width,), (width,)]
            expected += [(width, width, k2, k2), (width,), (width,)]
            if in_ch != width:
                expected += [(width, in_ch, 1, 1), (width,), (width,)]
            in_ch = width
    expected += [(n_classes, 4 * b), (n_classes,)]
    assert [tuple(p.shape) for p in _cp_resnet().parameters()] == expected


@pytest.mark.parametrize("rho", sorted(KERNELS_BY_RHO))
def test_cp_resnet_kernel_rule(rho: int) -> None:
    assert block_kernels(rho) == KERNELS_BY_RHO[rho]
    model = _cp_resnet(rho=rho, base_channels=4)
    flat = [pair for stage in KERNELS_BY_RHO[rho] for pair in stage]
    for block, (k1, k2) in zip(_blocks(model), flat, strict=True):
        assert block.conv1.kernel_size == (k1, k1) and block.conv2.kernel_size == (k2, k2)
        # padding k // 3: 1 for a 3×3 kernel, 0 for a 1×1 one
        assert block.conv1.padding == (k1 // 3,) * 2 and block.conv2.padding == (k2 // 3,) * 2
        assert block.conv1.stride == block.conv2.stride == (1, 1)


def test_cp_resnet_layout_pools_and_shortcuts() -> None:
    model = _cp_resnet(base_channels=4)
    stem = model.stem[0]
    assert (stem.kernel_size, stem.stride, stem.padding) == ((5, 5), (2, 2), (2, 2))
    assert stem.bias is None
    stage1 = [type(m).__name__ for m in model.stages[0]]
    pool, block = "MaxPool2d", "BasicBlock"
    assert stage1 == [block, pool, block, pool, block, block, pool]
    for stage in model.stages[1:]:
        assert [type(m).__name__ for m in stage] == [block] * 4
    # a conv shortcut exactly where the width changes: first blocks of stages 2 and 3
    with_conv = [not isinstance(b.shortcut, nn.Identity) for b in _blocks(model)]
    assert with_conv == [False] * 4 + [True, False, False, False] * 2
    # stem 128 → 64 mel bins, stage-1 pools → 8
    x = model.stem(torch.randn(1, 1, 128, 40))
    assert x.shape[2] == 64 and model.stages[0](x).shape[2] == 8


def test_cp_resnet_fixup_init() -> None:
    model = _cp_resnet()
    blocks = _blocks(model)
    n_blocks = len(blocks)
    assert n_blocks == model.n_blocks == 12
    for block in blocks:
        assert torch.count_nonzero(block.conv2.weight) == 0
        k = block.conv1.kernel_size[0]
        expected = n_blocks**-0.5 * math.sqrt(2.0 / (k * k * block.conv1.out_channels))
        assert block.conv1.weight.std().item() == pytest.approx(expected, rel=0.03)
        if isinstance(block.shortcut, nn.Sequential):
            conv = block.shortcut[0]
            expected = math.sqrt(2.0 / conv.out_channels)
            assert conv.weight.std().item() == pytest.approx(expected, rel=0.03)
    stem = model.stem[0].weight  # Kaiming normal, fan-in 25
    assert stem.std().item() == pytest.approx(math.sqrt(2.0 / 25), rel=0.1)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            assert torch.all(module.weight == 1) and torch.all(module.bias == 0)
    assert torch.all(model.head.bias == 0)


def test_cp_resnet_init_scale_does_not_depend_on_earlier_models() -> None:
    torch.manual_seed(0)
    scales = []
    for _ in range(3):
        block = _blocks(_cp_resnet())[1]  # 3×3 conv1, 128 outputs
        scales.append(block.conv1.weight.std().item())
    expected = 12**-0.5 * math.sqrt(2.0 / (9 * 128))
    assert scales == pytest.approx([expected] * 3, rel=0.03)


def test_cp_resnet_receptive_field_and_frames() -> None:
    model = _cp_resnet()
    assert model.receptive_field() == (231, 231)
    assert model.frames_out(1001) == 62 and model.frames_out(1000) == 62
    assert model.feature_dim == 512


def test_rho_grows_receptive_field_and_parameters() -> None:
    small, large = (_cp_resnet(rho=r) for r in (5, 9))
    assert small.receptive_field() == (151, 151) and large.receptive_field() == (263, 263)
    assert count_parameters(small) < CP_RESNET_PARAMS < count_parameters(large)


def test_cp_resnet_rejects_too_few_mel_bands() -> None:
    create_student("cp_resnet", n_classes=2, n_mels=15, base_channels=2)
    with pytest.raises(ValueError, match="no frequency bin"):
        create_student("cp_resnet", n_classes=2, n_mels=14, base_channels=2)


# --- Mobile FCN -------------------------------------------------------------------------------


@pytest.mark.parametrize("n_mels", [96, 128])
def test_mobile_fcn_parameter_count_is_exact(n_mels: int) -> None:
    assert count_parameters(_mobile_fcn(n_mels)) == MOBILE_FCN_PARAMS


def test_mobile_fcn_parameter_shapes_match_official() -> None:
    def plain(c_in: int, c_out: int) -> list[tuple[int, ...]]:
        return [(c_out, c_in, 3, 3), (c_out,), (c_out,)]

    def separable(c_in: int, c_out: int) -> list[tuple[int, ...]]:
        return [(c_in, 1, 3, 3), (c_in,), (c_in,), (c_out, c_in, 1, 1), (c_out,), (c_out,)]

    expected = plain(1, 64) + plain(64, 128)
    for c_in, c_out in [(128, 128)] * 3 + [(128, 256)] + [(256, 256)] * 2:
        expected += separable(c_in, c_out)
    expected += [(50, 256), (50,)]
    assert [tuple(p.shape) for p in _mobile_fcn().parameters()] == expected


def test_mobile_fcn_pools_and_dropout_positions() -> None:
    assert layer_pools(96) == [(2, 4), (2, 3), (2, 2), (3, 2), (4, 2), None, None, None]
    assert layer_pools(128)[3] == (4, 2)
    model = _mobile_fcn()
    kinds = [type(m).__name__ for m in model.body]
    conv, sep, drop = "ConvLayer", "SeparableLayer", "Dropout"
    assert kinds == [conv, conv, sep, sep, drop, sep, sep, drop, sep, sep]
    drops = [m for m in model.modules() if isinstance(m, nn.Dropout)]
    assert len(drops) == 3 and all(d.p == 0.5 for d in drops)
    for conv in (m for m in model.modules() if isinstance(m, nn.Conv2d)):
        assert conv.bias is None and conv.padding == (conv.kernel_size[0] // 2,) * 2


def test_mobile_fcn_receptive_field_and_frames() -> None:
    model = _mobile_fcn()
    assert model.receptive_field() == (750, 850)
    # 29.1 s at 16 kHz, hop 320: 1455 to 1457 frames depending on padding and rounding
    assert [model.frames_out(t) for t in (1455, 1456, 1457)] == [15, 15, 15]
    assert model.feature_dim == 256


@pytest.mark.parametrize("n_mels", [96, 100, 128, 191])
def test_mobile_fcn_accepts_mels_pooled_to_one_bin(n_mels: int) -> None:
    model = _mobile_fcn(n_mels).eval()
    assert model.body(torch.randn(1, 1, n_mels, 96)).shape[2:] == (1, 1)


@pytest.mark.parametrize("n_mels", [64, 95, 192, 256])
def test_mobile_fcn_rejects_other_mel_counts(n_mels: int) -> None:
    with pytest.raises(ValueError, match="frequency bins, not 1"):
        _mobile_fcn(n_mels)


def test_mobile_fcn_dropout_only_in_train_mode() -> None:
    torch.manual_seed(0)
    model = _mobile_fcn()
    mel = torch.randn(2, 96, 200)
    model.eval()
    with torch.no_grad():
        first, second = model(mel), model(mel)
    assert torch.equal(first[0], second[0]) and torch.equal(first[1], second[1])
    model.train()
    with torch.no_grad():
        first, second = model(mel), model(mel)
    assert not torch.equal(first[1], second[1])  # dropout after layers 4 and 6
    features = torch.ones(2, 3, model.feature_dim)
    with torch.no_grad():
        assert not torch.equal(model.forward_head(features), model.forward_head(features))
        model.eval()
        assert torch.equal(model.forward_head(features), model.forward_head(features))


# --- both ---------------------------------------------------------------------------------


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


@pytest.mark.parametrize(
    ("name", "options", "n_mels", "frames"),
    [
        ("cp_resnet", {"base_channels": 4}, 128, [16, 17, 31, 100, 1000, 1001]),
        ("mobile_fcn", {}, 96, [96, 97, 191, 192, 575, 1455, 1456, 1457]),
    ],
)
def test_frames_out_matches_forward(name: str, options: dict, n_mels: int, frames: list) -> None:
    model = create_student(name, n_classes=3, n_mels=n_mels, **options).eval()
    for n_frames in frames:
        with torch.no_grad():
            _, features = model(torch.randn(1, n_mels, n_frames))
        assert features.shape[1] == model.frames_out(n_frames) >= 1


def test_wrong_mel_count_is_rejected() -> None:
    model = _mobile_fcn()
    with pytest.raises(ValueError, match="expected mel of shape"):
        model(torch.randn(1, 128, 64))
