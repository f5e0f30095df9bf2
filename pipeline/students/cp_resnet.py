"""Receptive-field-regularised CP ResNet (Koutini et al.), the OpenMIC student of EAsT.

The network is the one the EAsT authors trained: with ``rho = 7``, 128 base channels and
20 classes it has exactly 5 534 612 trainable parameters. Layout (``B`` base channels)::

    stem    5×5 conv, stride 2, padding 2, no bias + BN + ReLU        B ch   (128 mels → 64)
    stage 1 4 BasicBlocks, 2×2 max-pool after blocks 1, 2 and 4        B ch   (64 → 8 bins)
    stage 2 4 BasicBlocks                                              2B ch
    stage 3 4 BasicBlocks                                              4B ch
    head    mean over frequency and time → Linear(4B, n_classes)

A BasicBlock is ``conv(k1) → BN → ReLU → conv(k2) → BN``, added to a shortcut (1×1 conv + BN
where the width changes, the identity otherwise) and followed by a ReLU. All convs have stride 1
and padding ``k // 3``; since every block kernel is 1×1 or 3×3 they keep the map size, so only
the stem and the three pools shrink it: ``T`` frames give ``((T - 1) // 2 + 1) // 8`` feature
frames (62 for both 1000 and 1001).

Receptive-field rule. Every block conv is square, either 3×3 or 1×1. Each conv has a threshold
in :data:`THREE_BY_THREE_FROM`: it is 3×3 exactly when ``rho`` reaches that threshold. The
first conv of stage 1 is always 3×3; the second convs of the first blocks of stages 1 and 2 are
always 1×1. Thresholds 1 to 6 widen the later blocks of stage 1 (and, at 2, 4 and 6, the
second convs of the later blocks of stage 2), 7 to 13 the first convs of stage 2 (odd values
only) and 15 to 22 stage 3. A larger ``rho`` never narrows a conv, so the receptive field never
shrinks as ``rho`` grows; from 22 on, all convs but the two fixed 1×1 ones are 3×3. At
``rho = 7`` the (k1, k2) pairs are::

    stage 1: (3, 1) (3, 3) (3, 3) (3, 3)
    stage 2: (3, 1) (1, 3) (1, 3) (1, 3)
    stage 3: (1, 1) (1, 1) (1, 1) (1, 1)

and one feature frame sees 231 × 231 input bins (:meth:`CPResNet.receptive_field`).

Initialisation. Every conv is first drawn Kaiming-normal (fan-in, ReLU gain); BN scales are 1
and shifts 0, the linear bias is 0. Then each block is rescaled in the manner of Fixup: its
first conv is drawn from N(0, L^-1/2 · sqrt(2 / n)) with ``n = k1 · k1 · out_channels`` and
``L`` the number of residual blocks of *this* model (12), its second conv is set to zero (so
each block starts as its shortcut) and a shortcut conv is drawn from N(0, sqrt(2 / out_channels)).
``L`` depends on the model only: building several models in one process gives each the same
scale.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from pipeline.students import STUDENTS, Student

STEM_KERNEL = 5
STEM_STRIDE = 2
STEM_PADDING = 2
BLOCKS_PER_STAGE = 4
STAGE_WIDTHS = (1, 2, 4)  # multiples of base_channels
POOL_AFTER_STAGE1_BLOCKS = (1, 2, 4)
POOL_SIZE = 2

_ALWAYS = -math.inf
_NEVER = math.inf

# Smallest rho at which each block conv is 3×3 instead of 1×1, as (k1, k2) per block and stage.
THREE_BY_THREE_FROM: tuple[tuple[tuple[float, float], ...], ...] = (
    ((_ALWAYS, _NEVER), (1, 2), (3, 4), (5, 6)),
    ((7, _NEVER), (9, 2), (11, 4), (13, 6)),
    ((15, 16), (17, 18), (19, 20), (21, 22)),
)


def block_kernels(rho: int) -> list[list[tuple[int, int]]]:
    """Kernel sizes (k1, k2) of every block under the receptive-field rule.

    Parameters
    ----------
    rho : int
        The receptive-field parameter; larger values turn more convs into 3×3.

    Returns
    -------
    kernels : list of list of (int, int)
        ``kernels[stage][block]`` for the three stages of four blocks each.

    Examples
    --------
    >>> block_kernels(7)[1]
    [(3, 1), (1, 3), (1, 3), (1, 3)]
    """
    return [
        [(3 if rho >= t1 else 1, 3 if rho >= t2 else 1) for t1, t2 in stage]
        for stage in THREE_BY_THREE_FROM
    ]


def _conv_size(size: int, kernel: int, stride: int, padding: int) -> int:
    return (size + 2 * padding - kernel) // stride + 1


class BasicBlock(nn.Module):
    """Two conv-BN layers added to a shortcut, with padding ``k // 3`` and stride 1."""

    def __init__(self, in_channels: int, out_channels: int, k1: int, k2: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, k1, padding=k1 // 3, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, k2, padding=k2 // 3, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut: nn.Module = nn.Identity()
        if in_channels != out_channels:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, bias=False),
                nn.BatchNorm2d(out_channels),
            )

    def forward(self, x: Tensor) -> Tensor:
        y = self.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return self.relu(y + self.shortcut(x))

    @torch.no_grad()
    def fixup_(self, n_blocks: int) -> None:
        """Rescale this block's convs for a network of ``n_blocks`` residual blocks."""
        k_h, k_w = self.conv1.kernel_size
        fan = k_h * k_w * self.conv1.out_channels
        self.conv1.weight.normal_(0.0, n_blocks**-0.5 * math.sqrt(2.0 / fan))
        self.conv2.weight.zero_()
        if isinstance(self.shortcut, nn.Sequential):
            conv = self.shortcut[0]
            k_h, k_w = conv.kernel_size
            conv.weight.normal_(0.0, math.sqrt(2.0 / (k_h * k_w * conv.out_channels)))


class CPResNet(Student):
    """CP ResNet on (N, n_mels, T) log-mels.

    Parameters
    ----------
    n_classes : int
        Width of the logits.
    n_mels : int
        Mel bands of the input; at least 15, so that the stem and the three pools leave one
        frequency bin.
    rho : int
        Receptive-field parameter (see the module docstring); 7 in the paper.
    base_channels : int
        Width of stage 1; stages 2 and 3 are twice and four times as wide.
    """

    def __init__(
        self, *, n_classes: int, n_mels: int, rho: int = 7, base_channels: int = 128
    ) -> None:
        super().__init__()
        if base_channels < 1:
            raise ValueError(f"cp_resnet: base_channels must be at least 1, got {base_channels}")
        self.n_classes = n_classes
        self.n_mels = n_mels
        self.rho = rho
        self.base_channels = base_channels
        self.kernels = block_kernels(rho)
        self.feature_dim = STAGE_WIDTHS[-1] * base_channels

        self.stem = nn.Sequential(
            nn.Conv2d(1, base_channels, STEM_KERNEL, STEM_STRIDE, STEM_PADDING, bias=False),
            nn.BatchNorm2d(base_channels),
            nn.ReLU(inplace=True),
        )
        stages: list[nn.Module] = []
        in_channels = base_channels
        for index, (multiple, kernels) in enumerate(zip(STAGE_WIDTHS, self.kernels, strict=True)):
            width = multiple * base_channels
            layers: list[nn.Module] = []
            for block, (k1, k2) in enumerate(kernels, start=1):
                layers.append(BasicBlock(in_channels, width, k1, k2))
                in_channels = width
                if index == 0 and block in POOL_AFTER_STAGE1_BLOCKS:
                    layers.append(nn.MaxPool2d(POOL_SIZE))
            stages.append(nn.Sequential(*layers))
        self.stages = nn.Sequential(*stages)
        self.head = nn.Linear(self.feature_dim, n_classes)

        if self._reduce(n_mels) < 1:
            raise ValueError(
                f"cp_resnet: n_mels={n_mels} leaves no frequency bin after the stem and pools; "
                "use at least 15 mel bands"
            )
        self.reset_parameters()

    @property
    def n_blocks(self) -> int:
        """Residual blocks in this model (the ``L`` of the Fixup scaling)."""
        return sum(isinstance(m, BasicBlock) for m in self.modules())

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Kaiming-normal convs, unit BN, zero linear bias, then the per-block Fixup scaling."""
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_in", nonlinearity="relu")
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Linear) and module.bias is not None:
                nn.init.zeros_(module.bias)
        n_blocks = self.n_blocks
        for module in self.modules():
            if isinstance(module, BasicBlock):
                module.fixup_(n_blocks)

    def forward_features(self, mel: Tensor) -> Tensor:
        x = self.stages(self.stem(mel.unsqueeze(1)))  # (N, C, F', T_s)
        return x.mean(dim=2).transpose(1, 2)

    def forward_head(self, features: Tensor) -> Tensor:
        # Every time step averages the same number of frequency bins, so the mean over time of
        # the frequency means is the mean over the whole last-stage map.
        return self.head(features.mean(dim=1))

    def _layers(self) -> list[tuple[int, int, int]]:
        """(kernel, stride, padding) of the main path, in order, along either axis."""
        conv = self.stem[0]
        layers = [(conv.kernel_size[0], conv.stride[0], conv.padding[0])]
        for stage in self.stages:
            for layer in stage:
                if isinstance(layer, BasicBlock):
                    for c in (layer.conv1, layer.conv2):
                        layers.append((c.kernel_size[0], c.stride[0], c.padding[0]))
                else:
                    layers.append((POOL_SIZE, POOL_SIZE, 0))
        return layers

    def _reduce(self, size: int) -> int:
        for kernel, stride, padding in self._layers():
            size = _conv_size(size, kernel, stride, padding)
        return size

    def frames_out(self, n_frames: int) -> int:
        return max(self._reduce(n_frames), 0)

    def receptive_field(self) -> tuple[int, int]:
        """Input (mel bins, frames) that one last-stage output depends on.

        The convs and pools are square, so both numbers are equal; 231 at ``rho = 7``.
        """
        field, jump = 1, 1
        for kernel, stride, _ in self._layers():
            field += (kernel - 1) * jump
            jump *= stride
        return field, field


@STUDENTS.register
def cp_resnet(**kwargs: int) -> CPResNet:
    """CP ResNet student; options ``rho`` (default 7) and ``base_channels`` (default 128).

    Parameters
    ----------
    **kwargs : int
        ``n_classes``, ``n_mels`` and the options, passed to :class:`CPResNet`.

    Returns
    -------
    CPResNet
        A freshly initialised model.
    """
    return CPResNet(**kwargs)
