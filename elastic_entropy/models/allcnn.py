"""All-CNN-C (Springenberg et al., 2015) with BatchNorm, the Parle paper's "All-CNN-C (BN)".

Only convolutions: 3x3 96, 96, 96/stride 2; 3x3 192, 192, 192/stride 2; 3x3 192, 1x1 192 and a
1x1 convolution to one map per class, each followed by BN and ReLU (the last one too, as in the
paper's table and the authors' code), then a global average of each class map. Dropout goes on
the input and after each stride-2 block (0.2 and 0.5 in the papers). Every 3x3 convolution pads
by one ('same'; the paper's seventh is unpadded) so that inputs as small as 8x8 still fit.
"""

from __future__ import annotations

from torch import nn

from elastic_entropy.models._layers import (
    conv_bn_relu,
    dropout_or_nothing,
    init_like_reference,
    require_image,
    require_positive,
)


def _block(in_channels: int, channels: int) -> list[nn.Module]:
    """Two 3x3 conv-BN-ReLU, then a third of stride 2 in place of a pooling layer."""
    return [
        conv_bn_relu(in_channels, channels, 3),
        conv_bn_relu(channels, channels, 3),
        conv_bn_relu(channels, channels, 3, stride=2),
    ]


def allcnn(
    input_shape: tuple[int, ...],
    num_classes: int,
    *,
    width: float = 1.0,
    dropout: float = 0.0,
    input_dropout: float = 0.0,
) -> nn.Module:
    """All-CNN-C (BN); ``width`` scales the 96 and 192 channels for narrow variants,
    ``dropout`` follows each stride-2 block and ``input_dropout`` acts on the image."""
    in_channels = require_image("allcnn", input_shape)
    require_positive("allcnn", "width", width)
    # a narrow variant keeps at least one channel per layer
    c1, c2 = (max(1, round(c * width)) for c in (96, 192))
    model = nn.Sequential(
        dropout_or_nothing(input_dropout),
        *_block(in_channels, c1),
        dropout_or_nothing(dropout),
        *_block(c1, c2),
        dropout_or_nothing(dropout),
        conv_bn_relu(c2, c2, 3),
        conv_bn_relu(c2, c2, 1),
        conv_bn_relu(c2, num_classes, 1),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
    )
    return init_like_reference(model)
