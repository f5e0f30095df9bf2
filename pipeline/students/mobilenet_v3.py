"""MobileNetV3-style student for log-mel spectrograms, in the spirit of EfficientAT.

The (n_mels, T) log-mel image is treated as a one-channel picture. Layout at ``width = 1``::

    stem    3×3 conv, stride 2 + BN + hard-swish                        16 ch
    blocks  15 inverted-residual blocks (table ``BLOCKS``)      16 → 160 ch
    last    1×1 conv + BN + hard-swish                                 960 ch
    head    time-mean of the frequency-averaged features, dropout, linear

An inverted-residual block expands with a 1×1 conv, filters each channel with a k×k depthwise
conv (carrying the block's stride), optionally reweights channels by squeeze-excitation, then
projects back with a linear 1×1 conv; the input is added when stride is 1 and the channel
count is unchanged. The stem and four blocks have stride 2, so frequency and time both shrink
by 32 (each stride-2 conv maps n to ceil(n / 2)). All channel counts are multiplied by
``width`` and rounded to a multiple of 8.

With the default ``width = 0.5`` (feature_dim 480) the model has 795 212 parameters with 20
classes and 128 mels (the count does not depend on ``n_mels``); ``width = 1`` (feature_dim 960)
gives 2 990 884. The head is the only part that depends on ``n_classes`` (feature_dim + 1 per
class).
"""

from __future__ import annotations

from torch import Tensor, nn

from pipeline.students import STUDENTS, Student

STEM_CHANNELS = 16
LAST_EXPANSION = 6  # last 1×1 conv width, as a multiple of the final block's output width
SE_REDUCTION = 4
# kernel, expanded channels, output channels, squeeze-excitation, hard-swish, stride
BLOCKS = (
    (3, 16, 16, False, False, 1),
    (3, 64, 24, False, False, 2),
    (3, 72, 24, False, False, 1),
    (5, 72, 40, True, False, 2),
    (5, 120, 40, True, False, 1),
    (5, 120, 40, True, False, 1),
    (3, 240, 80, False, True, 2),
    (3, 200, 80, False, True, 1),
    (3, 184, 80, False, True, 1),
    (3, 184, 80, False, True, 1),
    (3, 480, 112, True, True, 1),
    (3, 672, 112, True, True, 1),
    (5, 672, 160, True, True, 2),
    (5, 960, 160, True, True, 1),
    (5, 960, 160, True, True, 1),
)
STEM_STRIDE = 2
STRIDES = (STEM_STRIDE, *(block[-1] for block in BLOCKS))  # stem first


def _round8(channels: float) -> int:
    """Nearest multiple of 8, never below 8 nor more than 10 % under ``channels``."""
    rounded = max(8, int(channels + 4) // 8 * 8)
    return rounded + 8 if rounded < 0.9 * channels else rounded


def _conv_bn_act(
    in_ch: int, out_ch: int, kernel: int, stride: int = 1, groups: int = 1, act: bool | None = True
) -> nn.Sequential:
    """Conv + BN + activation: ``act`` True → hard-swish, False → ReLU, None → none."""
    layers: list[nn.Module] = [
        nn.Conv2d(in_ch, out_ch, kernel, stride, kernel // 2, groups=groups, bias=False),
        nn.BatchNorm2d(out_ch),
    ]
    if act is not None:
        layers.append(nn.Hardswish(inplace=True) if act else nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


class SqueezeExcite(nn.Module):
    """Channel gates from the globally pooled input: 1×1 → ReLU → 1×1 → hard-sigmoid."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        squeezed = _round8(channels / SE_REDUCTION)
        self.gate = nn.Sequential(
            nn.AdaptiveAvgPool2d(1),
            nn.Conv2d(channels, squeezed, 1),
            nn.ReLU(inplace=True),
            nn.Conv2d(squeezed, channels, 1),
            nn.Hardsigmoid(inplace=True),
        )

    def forward(self, x: Tensor) -> Tensor:
        return x * self.gate(x)


class InvertedResidual(nn.Module):
    """1×1 expand → k×k depthwise (strided) → optional SE → linear 1×1 project (+ input)."""

    def __init__(
        self, in_ch: int, mid_ch: int, out_ch: int, kernel: int, se: bool, hswish: bool, stride: int
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        if mid_ch != in_ch:
            layers.append(_conv_bn_act(in_ch, mid_ch, 1, act=hswish))
        layers.append(_conv_bn_act(mid_ch, mid_ch, kernel, stride, groups=mid_ch, act=hswish))
        if se:
            layers.append(SqueezeExcite(mid_ch))
        layers.append(_conv_bn_act(mid_ch, out_ch, 1, act=None))
        self.body = nn.Sequential(*layers)
        self.residual = stride == 1 and in_ch == out_ch

    def forward(self, x: Tensor) -> Tensor:
        y = self.body(x)
        return x + y if self.residual else y


class MobileNetV3(Student):
    """MobileNetV3-style CNN on (N, n_mels, T) log-mels; see the module docstring."""

    def __init__(
        self, *, n_classes: int, n_mels: int, width: float = 0.5, dropout: float = 0.2
    ) -> None:
        super().__init__()
        if width <= 0:
            raise ValueError(f"mobilenet_v3 needs width > 0, got {width}")
        self.n_classes = n_classes
        self.n_mels = n_mels
        self.width = width

        in_ch = _round8(STEM_CHANNELS * width)
        layers: list[nn.Module] = [_conv_bn_act(1, in_ch, 3, STEM_STRIDE, act=True)]
        for kernel, mid, out, se, hswish, stride in BLOCKS:
            out_ch = _round8(out * width)
            layers.append(
                InvertedResidual(in_ch, _round8(mid * width), out_ch, kernel, se, hswish, stride)
            )
            in_ch = out_ch
        self.feature_dim = LAST_EXPANSION * in_ch
        layers.append(_conv_bn_act(in_ch, self.feature_dim, 1, act=True))
        self.body = nn.Sequential(*layers)
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(self.feature_dim, n_classes)

    def forward_features(self, mel: Tensor) -> Tensor:
        x = self.body(mel.unsqueeze(1))  # (N, C, ceil(n_mels / 32), T_s)
        return x.mean(dim=2).transpose(1, 2)

    def forward_head(self, features: Tensor) -> Tensor:
        return self.head(self.dropout(features.mean(dim=1)))

    def frames_out(self, n_frames: int) -> int:
        for stride in STRIDES:
            n_frames = -(-n_frames // stride)  # ceil: odd kernel, padding kernel // 2
        return n_frames


@STUDENTS.register
def mobilenet_v3(**kwargs: float) -> MobileNetV3:
    """MobileNetV3 student; options ``width`` (default 0.5) and ``dropout`` (default 0.2).

    Parameters
    ----------
    **kwargs : int or float
        ``n_classes``, ``n_mels`` and the options, passed to :class:`MobileNetV3`.

    Returns
    -------
    MobileNetV3
        A freshly initialised model.
    """
    return MobileNetV3(**kwargs)
