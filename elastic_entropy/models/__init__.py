"""Networks named by config: ``mlp``, ``cnn1d`` (MNIST-1D), and for (C, H, W) images ``lenet``,
``wrn`` (Wide ResNet), ``allcnn`` (All-CNN-C with BN) and ``resnet18`` (the CIFAR ResNet-18);
for windows of token ids ``char_lstm`` and ``transformer`` (:mod:`.text`).

Each is a factory ``f(input_shape, num_classes, **options) -> nn.Module`` registered in ``MODELS``
by its config name; a factory given data of the wrong rank raises a one-line ValueError.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from typing import Any

from torch import Tensor, nn

from elastic_entropy.models._layers import dropout_or_nothing, require_image
from elastic_entropy.models.allcnn import allcnn
from elastic_entropy.models.resnet import resnet18
from elastic_entropy.models.text import char_lstm, transformer
from elastic_entropy.models.wrn import wrn

log = logging.getLogger(__name__)


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


# The authors' LeNet (ucla-vision/parle parle_mpi.py; the same in pratikac/distributed-ensembles
# code/models.py `lenet` and ucla-vision/entropy-sgd python/models.py `mnistconv`): 'valid' 5x5
# convolutions, a 3x3 pool after the first and a 2x2 pool after the second, so that MNIST's 28x28
# becomes 24 -> 8 -> 4 -> 2 and the fc layer reads 50 * 2 * 2 = 200 features.
AUTHORS_PADDING = 0
AUTHORS_POOLS = (3, 2)
# Images under 22 pixels a side (sklearn's 8x8 digits) leave nothing for those valid convs; for
# them an unset padding or pool falls back to the LeNet-5 'same' geometry with 2x2 pools.
SMALL_IMAGE_PADDING = 2
SMALL_IMAGE_POOLS = (2, 2)
_KERNEL = 5


def _lenet_side(side: int, padding: int, pools: tuple[int, int]) -> int:
    """The feature map's side after both conv-pool blocks, or 0 when a block gets nothing."""
    for pool in pools:
        side = side + 2 * padding - _KERNEL + 1
        if side < pool:
            return 0
        side //= pool
    return side


def _lenet_geometry(
    height: int, width: int, padding: int | None, pools: tuple[int, int] | None
) -> tuple[int, tuple[int, int], int, int]:
    """``(padding, pools, out_height, out_width)``: the authors' values for what is unset, the
    small-image ones where the authors' do not fit, a one-line ValueError if nothing fits."""

    def fits(p: int, k: tuple[int, int]) -> bool:
        return min(_lenet_side(height, p, k), _lenet_side(width, p, k)) > 0

    chosen_padding = AUTHORS_PADDING if padding is None else padding
    chosen_pools = AUTHORS_POOLS if pools is None else pools
    if not fits(chosen_padding, chosen_pools) and (padding is None or pools is None):
        chosen_padding = SMALL_IMAGE_PADDING if padding is None else padding
        chosen_pools = SMALL_IMAGE_POOLS if pools is None else pools
        # said, not silent: the network is then not the authors'
        log.warning(
            "model=lenet: %dx%d images are too small for the authors' LeNet (valid convs, pools "
            "3 and 2); using model.padding=%d model.pools=[%d,%d]",
            height,
            width,
            chosen_padding,
            *chosen_pools,
        )
    if not fits(chosen_padding, chosen_pools):
        raise ValueError(
            f"lenet: {height}x{width} images are too small for model.padding={chosen_padding} "
            f"model.pools=[{chosen_pools[0]},{chosen_pools[1]}]; use a larger model.padding "
            "or smaller model.pools"
        )
    return (
        chosen_padding,
        chosen_pools,
        _lenet_side(height, chosen_padding, chosen_pools),
        _lenet_side(width, chosen_padding, chosen_pools),
    )


def lenet(
    input_shape: tuple[int, ...],
    num_classes: int,
    *,
    channels: tuple[int, int] = (20, 50),
    hidden: int = 500,
    dropout: float = 0.25,
    batchnorm: bool = True,
    padding: int | None = None,
    pools: tuple[int, int] | None = None,
) -> nn.Module:
    """The authors' LeNet: two ``conv 5x5 -> BN -> ReLU -> max-pool -> dropout`` blocks (20 and
    50 channels; valid convs, pools 3 then 2), then ``fc 500 -> BN -> ReLU -> dropout -> fc``.

    132,220 parameters on MNIST. ``padding=2, pools=(2, 2)`` gives the padded variant this
    package used before (1,257,220); images under 22 pixels a side get it by default.
    """
    in_channels = require_image("lenet", input_shape)
    _, height, width = input_shape
    if padding is not None and padding < 0:
        raise ValueError(f"lenet: model.padding={padding} must be >= 0")
    if pools is not None and (len(pools) != 2 or min(pools) < 1):
        raise ValueError(f"lenet: model.pools={list(pools)} needs two sizes >= 1")
    padding, pools, out_height, out_width = _lenet_geometry(height, width, padding, pools)
    c1, c2 = channels

    def block(ci: int, co: int, pool: int) -> nn.Module:
        # the conv keeps its bias although BN follows, as the authors' does (70 of the 132,220)
        return nn.Sequential(
            nn.Conv2d(ci, co, _KERNEL, padding=padding),
            nn.BatchNorm2d(co) if batchnorm else nn.Identity(),
            nn.ReLU(),
            nn.MaxPool2d(pool),
            dropout_or_nothing(dropout),
        )

    # the authors' module tree, so that their state_dict keys (0.0.weight, ..., 7.bias) load
    return nn.Sequential(
        block(in_channels, c1, pools[0]),
        block(c1, c2, pools[1]),
        nn.Flatten(),
        nn.Linear(c2 * out_height * out_width, hidden),
        _norm1d(hidden, batchnorm),
        nn.ReLU(),
        dropout_or_nothing(dropout),
        nn.Linear(hidden, num_classes),
    )


MODELS: dict[str, Callable[..., nn.Module]] = {
    "mlp": mlp,
    "cnn1d": cnn1d,
    "lenet": lenet,
    "wrn": wrn,
    "allcnn": allcnn,
    "resnet18": resnet18,
    "char_lstm": char_lstm,
    "transformer": transformer,
}


LANGUAGE_MODELS = frozenset({"char_lstm", "transformer"})


def check_task(model: str, data: str, *, is_text: bool) -> None:
    """A language model for text, a classifier for the rest: one line naming the fix."""
    if model in LANGUAGE_MODELS and not is_text:
        raise ValueError(
            f"model={model} is a language model: it needs text (data=pydoc or data=textfile), "
            f"and data={data} is not"
        )
    if model not in LANGUAGE_MODELS and is_text and model in MODELS:
        raise ValueError(
            f"data={data} is text (windows of token ids, a next token per position): choose "
            "model=char_lstm or model=transformer"
        )


def build_model(
    name: str, input_shape: tuple[int, ...], num_classes: int, **options: Any
) -> nn.Module:
    """The network ``name`` for samples of ``input_shape`` and ``num_classes`` classes."""
    if name not in MODELS:
        raise ValueError(f"Unknown model {name!r}; choose one of {sorted(MODELS)}")
    return MODELS[name](input_shape, num_classes, **options)
