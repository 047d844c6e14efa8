"""Networks named by config: ``mlp``, ``cnn1d`` (MNIST-1D), and for (C, H, W) images ``lenet``,
``wrn`` (Wide ResNet), ``allcnn`` (All-CNN-C with BN) and ``resnet18`` (the CIFAR ResNet-18).

Each is a factory ``f(input_shape, num_classes, **options) -> nn.Module`` registered in ``MODELS``
by its config name; a factory given data of the wrong rank raises a one-line ValueError.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from torch import Tensor, nn

from elastic_entropy.models.allcnn import allcnn
from elastic_entropy.models.resnet import resnet18
from elastic_entropy.models.wrn import wrn


def _norm1d(channels: int, batchnorm: bool) -> nn.Module:
    return nn.BatchNorm1d(channels) if batchnorm else nn.Identity()


def mlp(
    input_shape: tuple[int, ...],
    num_classes: int,
    *,
    hidden: tuple[int, ...] = (256,),
    dropout: float = 0.0,
    batchnorm: bool = False,
) -> nn.Module:
    """Fully connected: flatten, then ``Linear -> [BN] -> ReLU -> [Dropout]`` per hidden layer."""
    layers: list[nn.Module] = [nn.Flatten()]
    width = math.prod(input_shape)
    for size in hidden:
        layers += [nn.Linear(width, size), _norm1d(size, batchnorm), nn.ReLU()]
        if dropout > 0.0:
            layers.append(nn.Dropout(dropout))
        width = size
    layers.append(nn.Linear(width, num_classes))
    return nn.Sequential(*layers)


class _AddChannel(nn.Module):
    def forward(self, x: Tensor) -> Tensor:
        return x.unsqueeze(1) if x.dim() == 2 else x


def cnn1d(
    input_shape: tuple[int, ...],
    num_classes: int,
    *,
    channels: int = 32,
    dropout: float = 0.0,
    batchnorm: bool = True,
) -> nn.Module:
    """The MNIST-1D CNN: three strided 1-D convolutions and a linear read-out."""
    if len(input_shape) > 2:
        raise ValueError(
            f"cnn1d needs 1-D signals, got samples of shape {input_shape}; use model=lenet or mlp"
        )
    length = input_shape[-1]
    layers: list[nn.Module] = [_AddChannel()]
    in_channels = 1 if len(input_shape) == 1 else input_shape[0]
    for kernel in (5, 3, 3):
        layers += [
            nn.Conv1d(in_channels, channels, kernel, stride=2, padding=kernel // 2),
            _norm1d(channels, batchnorm),
            nn.ReLU(),
        ]
        in_channels = channels
        length = (length + 2 * (kernel // 2) - kernel) // 2 + 1
    layers.append(nn.Flatten())
    if dropout > 0.0:
        layers.append(nn.Dropout(dropout))
    layers.append(nn.Linear(channels * length, num_classes))
    return nn.Sequential(*layers)


def lenet(
    input_shape: tuple[int, ...],
    num_classes: int,
    *,
    channels: tuple[int, int] = (20, 50),
    hidden: int = 500,
    dropout: float = 0.25,
    batchnorm: bool = True,
) -> nn.Module:
    """LeNet as in the papers: conv 20, conv 50 (5x5, 'same'), 2x2 pools, fc 500, dropout."""
    if len(input_shape) != 3:
        raise ValueError(
            f"lenet needs image data (C, H, W), got samples of shape {input_shape}; "
            "use model=mlp or model=cnn1d for this data set"
        )
    in_channels, height, width = input_shape
    bn2d = (lambda c: nn.BatchNorm2d(c)) if batchnorm else (lambda c: nn.Identity())
    c1, c2 = channels
    features = nn.Sequential(
        nn.Conv2d(in_channels, c1, 5, padding=2),
        bn2d(c1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(c1, c2, 5, padding=2),
        bn2d(c2),
        nn.ReLU(),
        nn.MaxPool2d(2),
    )
    flat = c2 * (height // 4) * (width // 4)
    return nn.Sequential(
        features,
        nn.Flatten(),
        nn.Dropout(dropout) if dropout > 0.0 else nn.Identity(),
        nn.Linear(flat, hidden),
        _norm1d(hidden, batchnorm),
        nn.ReLU(),
        nn.Dropout(dropout) if dropout > 0.0 else nn.Identity(),
        nn.Linear(hidden, num_classes),
    )


MODELS: dict[str, Callable[..., nn.Module]] = {
    "mlp": mlp,
    "cnn1d": cnn1d,
    "lenet": lenet,
    "wrn": wrn,
    "allcnn": allcnn,
    "resnet18": resnet18,
}


def build_model(
    name: str, input_shape: tuple[int, ...], num_classes: int, **options: Any
) -> nn.Module:
    """The network ``name`` for samples of ``input_shape`` and ``num_classes`` classes."""
    if name not in MODELS:
        raise ValueError(f"Unknown model {name!r}; choose one of {sorted(MODELS)}")
    return MODELS[name](input_shape, num_classes, **options)
