"""Wide ResNet WRN-d-k (Zagoruyko & Komodakis, 2016), the network of the Parle paper's CIFAR runs.

Three stages of pre-activation basic blocks of widths ``base_width * (k, 2k, 4k)`` after a
``base_width`` stem, strides 1, 2, 2; dropout between a block's two convolutions; BN-ReLU, global
average pool and a linear head. With 1x1 projection shortcuts where the shape changes and no
convolution biases this is the widely used PyTorch reference layout: WRN-28-10 has 36,479,194
parameters on CIFAR-10.
"""

from __future__ import annotations

from torch import Tensor, nn

from elastic_entropy.models._layers import (
    conv1x1,
    conv3x3,
    dropout_or_nothing,
    init_like_reference,
    require_image,
    require_positive,
)


class WideBlock(nn.Module):
    """``BN-ReLU-conv3x3 -> BN-ReLU-[dropout]-conv3x3``, plus the input or its projection."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, dropout: float) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_channels)
        self.relu1 = nn.ReLU()
        self.conv1 = conv3x3(in_channels, out_channels, stride)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.relu2 = nn.ReLU()
        self.dropout = dropout_or_nothing(dropout)
        self.conv2 = conv3x3(out_channels, out_channels)
        same_shape = in_channels == out_channels and stride == 1
        self.shortcut = None if same_shape else conv1x1(in_channels, out_channels, stride)

    def forward(self, x: Tensor) -> Tensor:
        activated = self.relu1(self.bn1(x))
        # the projection reads the pre-activated input, as the reference implementation does
        skip = x if self.shortcut is None else self.shortcut(activated)
        y = self.conv1(activated)
        y = self.conv2(self.dropout(self.relu2(self.bn2(y))))
        return y + skip


def _check_depth(depth: int) -> int:
    """Blocks per stage: the paper's depth counts 6n + 4 layers for n blocks of two
    convolutions in each of the three stages."""
    if depth < 10 or (depth - 4) % 6 != 0:
        raise ValueError(
            f"wrn: model.depth={depth} is not a Wide ResNet depth; use 6n+4 with n >= 1: "
            "10, 16, 22, 28, 34, 40, ..."
        )
    return (depth - 4) // 6


def _stage(
    in_channels: int, out_channels: int, blocks: int, stride: int, dropout: float
) -> nn.Sequential:
    first = WideBlock(in_channels, out_channels, stride, dropout)
    rest = [WideBlock(out_channels, out_channels, 1, dropout) for _ in range(blocks - 1)]
    return nn.Sequential(first, *rest)


def wrn(
    input_shape: tuple[int, ...],
    num_classes: int,
    *,
    depth: int = 28,
    widen_factor: int = 10,
    dropout: float = 0.0,
    base_width: int = 16,
) -> nn.Module:
    """WRN-``depth``-``widen_factor``; the Parle paper trains WRN-28-10 and WRN-16-4 with
    dropout 0.25. A ``base_width`` below 16 gives narrow, CPU-sized variants."""
    in_channels = require_image("wrn", input_shape)
    blocks = _check_depth(depth)
    require_positive("wrn", "widen_factor", widen_factor)
    require_positive("wrn", "base_width", base_width)
    widths = [base_width * widen_factor * m for m in (1, 2, 4)]
    model = nn.Sequential(
        conv3x3(in_channels, base_width),
        _stage(base_width, widths[0], blocks, 1, dropout),
        _stage(widths[0], widths[1], blocks, 2, dropout),
        _stage(widths[1], widths[2], blocks, 2, dropout),
        # the blocks are pre-activation: the last one's sum is normalised here, before the pool
        nn.BatchNorm2d(widths[2]),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(widths[2], num_classes),
    )
    return init_like_reference(model)
