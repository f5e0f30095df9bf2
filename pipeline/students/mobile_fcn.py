"""Mobile FCN: Choi et al.'s fully convolutional tagger with separable convs, the MTAT student.

The network is the one the EAsT authors trained: with 96 mel bands and 50 classes it has exactly
314 098 trainable parameters. Layout, with max-pools given as (mel, time)::

    layer 1   3×3 conv 1 → 64 + BN + ReLU, pool (2, 4)
    layer 2   3×3 conv 64 → 128 + BN + ReLU, pool (2, 3)
    layer 3   separable 128 → 128, pool (2, 2)
    layer 4   separable 128 → 128, pool (3, 2), or (4, 2) for 128 mel bands;  dropout 0.5
    layer 5   separable 128 → 128, pool (4, 2)
    layer 6   separable 128 → 256;                                            dropout 0.5
    layer 7   separable 256 → 256
    layer 8   separable 256 → 256                                             → features
    head      dropout 0.5, mean over frequency and time, Linear(256, n_classes)

A separable layer is a 3×3 depthwise conv + BN + ReLU followed by a 1×1 pointwise conv + BN +
ReLU. No conv has a bias; 3×3 convs are padded by 1 and keep the map size, so ``T`` frames give
``T // 4 // 3 // 2 // 2 // 2`` feature frames (15 for a 29.1 s MTAT clip of 1456 or 1457 frames)
and one feature frame sees 850 input frames (:meth:`MobileFCN.receptive_field`).

Mel bands. The pools of layers 1–5 reduce the frequency axis to a single bin for 96 and for 128
bands, the two sizes the network was made for. Any ``n_mels`` for which they still leave
exactly one bin is accepted, i.e. 96 to 191 (with the (4, 2) pool for 128 only); other values
raise ``ValueError``. Layers 6–8 thus see a pure time sequence.

Head dropout. The reference network drops out the last-stage map and then averages it over
frequency and time. Here :meth:`MobileFCN.forward_head` receives that map already averaged over
frequency, ``(N, T_s, 256)``, and drops out that. Because the map has exactly one frequency bin,
the frequency mean is only a reshape: each element of the features is one element of the map,
so the two orders draw the same masks on the same values and are identical in distribution, not
only in expectation. The features returned next to the logits are taken before this dropout.
"""

from __future__ import annotations

from torch import Tensor, nn

from pipeline.students import STUDENTS, Student

# Per layer: output channels, separable or plain, max-pool (mel, time) or None.
LAYERS: tuple[tuple[int, bool, tuple[int, int] | None], ...] = (
    (64, False, (2, 4)),
    (128, False, (2, 3)),
    (128, True, (2, 2)),
    (128, True, (3, 2)),
    (128, True, (4, 2)),
    (256, True, None),
    (256, True, None),
    (256, True, None),
)
WIDE_POOL_LAYER = 4  # its mel pool is 4 instead of 3 when the input has WIDE_POOL_MELS bands
WIDE_POOL_MELS = 128
DROPOUT_AFTER = (4, 6)
DROP_RATE = 0.5
KERNEL = 3
ACCEPTED_MELS = (96, 191)  # inclusive range for which the pools leave one frequency bin


def layer_pools(n_mels: int) -> list[tuple[int, int] | None]:
    """The (mel, time) max-pool after each of the eight layers for ``n_mels`` input bands.

    Parameters
    ----------
    n_mels : int
        Mel bands of the input.

    Returns
    -------
    list of (int, int) or None
        Eight entries: the pool (mel, time) after each layer, None where there is none.
    """
    pools = [pool for _, _, pool in LAYERS]
    if n_mels == WIDE_POOL_MELS:
        pools[WIDE_POOL_LAYER - 1] = (4, 2)
    return pools


def _conv_bn_relu(in_channels: int, out_channels: int, kernel: int, groups: int = 1) -> list:
    return [
        nn.Conv2d(
            in_channels, out_channels, kernel, padding=kernel // 2, groups=groups, bias=False
        ),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    ]


class ConvLayer(nn.Sequential):
    """Plain 3×3 conv + BN + ReLU, then an optional max-pool."""

    def __init__(self, in_channels: int, out_channels: int, pool: tuple[int, int] | None) -> None:
        layers = _conv_bn_relu(in_channels, out_channels, KERNEL)
        super().__init__(*layers, nn.MaxPool2d(pool) if pool else nn.Identity())


class SeparableLayer(nn.Sequential):
    """3×3 depthwise conv + BN + ReLU, 1×1 pointwise conv + BN + ReLU, optional max-pool."""

    def __init__(self, in_channels: int, out_channels: int, pool: tuple[int, int] | None) -> None:
        layers = _conv_bn_relu(in_channels, in_channels, KERNEL, groups=in_channels)
        layers += _conv_bn_relu(in_channels, out_channels, 1)
        super().__init__(*layers, nn.MaxPool2d(pool) if pool else nn.Identity())


class MobileFCN(Student):
    """Mobile FCN on (N, n_mels, T) log-mels.

    Parameters
    ----------
    n_classes : int
        Width of the logits.
    n_mels : int
        Mel bands of the input, 96 to 191 (96 for MTAT in the paper; 128 is also supported).
    """

    def __init__(self, *, n_classes: int, n_mels: int = 96) -> None:
        super().__init__()
        self.n_classes = n_classes
        self.n_mels = n_mels
        self.pools = layer_pools(n_mels)
        bins = n_mels
        for pool in self.pools:
            bins //= pool[0] if pool else 1
        if bins != 1:
            low, high = ACCEPTED_MELS
            raise ValueError(
                f"mobile_fcn: n_mels={n_mels} is pooled to {bins} frequency bins, not 1; "
                f"use {low} to {high} mel bands"
            )
        self.feature_dim = LAYERS[-1][0]

        layers: list[nn.Module] = []
        in_channels = 1
        for index, ((width, separable, _), pool) in enumerate(
            zip(LAYERS, self.pools, strict=True), start=1
        ):
            layer = SeparableLayer if separable else ConvLayer
            layers.append(layer(in_channels, width, pool))
            if index in DROPOUT_AFTER:
                layers.append(nn.Dropout(DROP_RATE))
            in_channels = width
        self.body = nn.Sequential(*layers)
        self.head_drop = nn.Dropout(DROP_RATE)
        self.head = nn.Linear(self.feature_dim, n_classes)

    def forward_features(self, mel: Tensor) -> Tensor:
        x = self.body(mel.unsqueeze(1))  # (N, C, 1, T_s)
        return x.mean(dim=2).transpose(1, 2)

    def forward_head(self, features: Tensor) -> Tensor:
        # The frequency axis has one bin, so this equals dropout on the map then the mean over
        # frequency and time (see the module docstring).
        return self.head(self.head_drop(features).mean(dim=1))

    def frames_out(self, n_frames: int) -> int:
        for pool in self.pools:
            n_frames //= pool[1] if pool else 1
        return n_frames

    def receptive_field(self) -> tuple[int, int]:
        """Input (mel bins, frames) that one output of layer 8 depends on (750, 850 at 96 bands).

        The mel extent exceeds ``n_mels``: every feature sees the whole spectrum.
        """
        field, jump = [1, 1], [1, 1]
        for pool in self.pools:
            # every layer has one 3×3 conv (the pointwise 1×1 adds nothing), then its pool
            for axis in (0, 1):
                field[axis] += (KERNEL - 1) * jump[axis]
                if pool:
                    field[axis] += (pool[axis] - 1) * jump[axis]
                    jump[axis] *= pool[axis]
        return field[0], field[1]


@STUDENTS.register
def mobile_fcn(**kwargs: int) -> MobileFCN:
    """Mobile FCN student (no options besides ``n_classes`` and ``n_mels``).

    Parameters
    ----------
    **kwargs : int
        ``n_classes`` and ``n_mels``, passed to :class:`MobileFCN`.

    Returns
    -------
    MobileFCN
        A freshly initialised model.
    """
    return MobileFCN(**kwargs)
