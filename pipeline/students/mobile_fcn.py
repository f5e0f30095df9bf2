"""Mobile FCN: a Choi et al. style fully convolutional tagger, the MTAT student of EAsT.

Eight 3×3 conv layers on the (96, T) log-mel image, each followed by BN + ReLU; a 2×2 max-pool
after layers 2, 4, 6 and 8 (frequency 96 → 6, time T → T // 16). Layers 1–2 are plain convs;
layers 3–8 are depthwise-separable (3×3 depthwise + BN + ReLU, then 1×1 pointwise + BN + ReLU).
Convs feeding a BN carry no bias.

Widths 64, 64, 128, 128, 256, 256, 256, 256 give 319 026 parameters with 50 classes, within
1.6 % of the paper's ≈ 314 k (the paper gives no widths; these are chosen to land there).

Features are the last layer's output averaged over frequency, (N, T // 16, 256). The head is a
linear layer on their time-average (equal to a 1×1 conv followed by global average pooling).
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from pipeline.students import Student, register_student

WIDTHS = (64, 64, 128, 128, 256, 256, 256, 256)
N_PLAIN = 2  # layers 1..N_PLAIN are plain convs, the rest depthwise-separable
POOL_AFTER = (2, 4, 6, 8)


def _conv_bn_relu(
    in_channels: int, out_channels: int, kernel: int, groups: int = 1
) -> list[nn.Module]:
    return [
        nn.Conv2d(
            in_channels, out_channels, kernel, padding=kernel // 2, groups=groups, bias=False
        ),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    ]


class MobileFCN(Student):
    """FCN with depthwise-separable conv layers 3–8 on (N, n_mels, T) log-mels."""

    def __init__(self, *, n_classes: int, n_mels: int = 96, widths: Sequence[int] = WIDTHS) -> None:
        super().__init__()
        self.n_classes = n_classes
        self.n_mels = n_mels
        self.widths = tuple(widths)
        if len(self.widths) < max(POOL_AFTER):
            raise ValueError(f"mobile_fcn needs {max(POOL_AFTER)} widths, got {self.widths}")
        if n_mels < 2 ** len(POOL_AFTER):
            raise ValueError(f"mobile_fcn needs n_mels >= {2 ** len(POOL_AFTER)}, got {n_mels}")
        self.feature_dim = self.widths[-1]

        layers: list[nn.Module] = []
        in_channels = 1
        for index, width in enumerate(self.widths, start=1):
            if index <= N_PLAIN:
                layers += _conv_bn_relu(in_channels, width, 3)
            else:
                layers += _conv_bn_relu(in_channels, in_channels, 3, groups=in_channels)
                layers += _conv_bn_relu(in_channels, width, 1)
            if index in POOL_AFTER:
                layers.append(nn.MaxPool2d(2))
            in_channels = width
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(self.feature_dim, n_classes)

    def forward_features(self, mel: Tensor) -> Tensor:
        x = self.body(mel.unsqueeze(1))  # (N, C, n_mels // 16, T // 16)
        return x.mean(dim=2).transpose(1, 2)

    def forward_head(self, features: Tensor) -> Tensor:
        return self.head(features.mean(dim=1))

    def frames_out(self, n_frames: int) -> int:
        return n_frames // 2 ** len(POOL_AFTER)


def _build(**kwargs) -> MobileFCN:
    return MobileFCN(**kwargs)


@register_student("mobile_fcn")
def mobile_fcn(**kwargs) -> MobileFCN:
    return _build(**kwargs)
