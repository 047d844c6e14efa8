"""What the image networks (``wrn``, ``allcnn``, ``resnet18``) share: the input check, the
convolutions they are built from and the reference implementations' initialisation."""

from __future__ import annotations

from torch import nn


def require_image(name: str, input_shape: tuple[int, ...]) -> int:
    """The number of input channels of (C, H, W) samples; a one-line ValueError otherwise."""
    if len(input_shape) != 3:
        raise ValueError(
            f"{name} needs image data (C, H, W), got samples of shape {input_shape}; "
            "use model=mlp or model=cnn1d for this data set"
        )
    return input_shape[0]


def require_positive(name: str, key: str, value: float) -> None:
    """A one-line ValueError naming the config key when a size option is not positive."""
    if value <= 0:
        raise ValueError(f"{name}: model.{key}={value} must be positive")


def dropout_or_nothing(p: float) -> nn.Module:
    """``nn.Dropout(p)``, or an identity when ``p`` is 0 so that a network trained without
    dropout holds no dropout module (the trainer then skips per-replica RNG bookkeeping)."""
    return nn.Dropout(p) if p > 0.0 else nn.Identity()


def conv3x3(in_channels: int, out_channels: int, stride: int = 1) -> nn.Conv2d:
    # no bias: every convolution here is followed by BatchNorm, whose shift subsumes it
    return nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)


def conv1x1(in_channels: int, out_channels: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False)


def conv_bn_relu(in_channels: int, out_channels: int, kernel: int, stride: int = 1) -> nn.Module:
    """Post-activation ``conv -> BN -> ReLU`` with 'same' padding (odd kernels)."""
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel, stride, padding=kernel // 2, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(),
    )


def init_like_reference(model: nn.Module) -> nn.Module:
    """Kaiming-normal convolutions (fan-out, ReLU gain), BatchNorm scale 1 and shift 0, linear
    biases 0: what the reference WRN and torchvision's ResNet do. Everything is drawn from
    torch's default generator, so the same seed gives the same network."""
    if any(p.is_meta for p in model.parameters()):
        # built to be counted (footprint's precheck): there are no values to draw, and drawing
        # normals on the meta device imports torch's compiler stack, seconds of start-up
        return model
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.BatchNorm2d | nn.BatchNorm1d):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)
    return model
