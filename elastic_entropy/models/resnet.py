"""The CIFAR ResNet-18 (He et al., 2016, in Kuang Liu's widely used pytorch-cifar layout).

A 3x3 stem of ``width`` channels and no max pool (32x32 inputs are small already), four stages of
two post-activation basic blocks of widths ``width * (1, 2, 4, 8)``, strides 1, 2, 2, 2, 1x1
conv + BN shortcuts where the shape changes, global average pool and a linear head: 11,173,962
parameters on CIFAR-10 at ``width=64``.
"""

from __future__ import annotations

from torch import Tensor, nn

from elastic_entropy.models._layers import (
    conv1x1,
    conv3x3,
    conv_bn_relu,
    dropout_or_nothing,
    init_like_reference,
    require_image,
    require_positive,
)


class BasicBlock(nn.Module):
    """``conv3x3-BN-ReLU-conv3x3-BN``, plus the input or its projection, then ReLU."""

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        self.conv1 = conv3x3(in_channels, out_channels, stride)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.relu1 = nn.ReLU()
        self.conv2 = conv3x3(out_channels, out_channels)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(
                conv1x1(in_channels, out_channels, stride), nn.BatchNorm2d(out_channels)
            )
        self.relu2 = nn.ReLU()

    def forward(self, x: Tensor) -> Tensor:
        y = self.bn2(self.conv2(self.relu1(self.bn1(self.conv1(x)))))
        return self.relu2(y + self.shortcut(x))


def _stage(in_channels: int, out_channels: int, stride: int) -> nn.Sequential:
    return nn.Sequential(
        BasicBlock(in_channels, out_channels, stride), BasicBlock(out_channels, out_channels, 1)
    )


def resnet18(
    input_shape: tuple[int, ...],
    num_classes: int,
    *,
    width: int = 64,
    dropout: float = 0.0,
) -> nn.Module:
    """ResNet-18 for small images; ``width`` below 64 gives narrow variants, ``dropout`` acts on
    the pooled features before the head."""
    in_channels = require_image("resnet18", input_shape)
    require_positive("resnet18", "width", width)
    widths = [width * m for m in (1, 2, 4, 8)]
    model = nn.Sequential(
        conv_bn_relu(in_channels, width, 3),
        _stage(width, widths[0], 1),
        _stage(widths[0], widths[1], 2),
        _stage(widths[1], widths[2], 2),
        _stage(widths[2], widths[3], 2),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        dropout_or_nothing(dropout),
        nn.Linear(widths[3], num_classes),
    )
    return init_like_reference(model)
