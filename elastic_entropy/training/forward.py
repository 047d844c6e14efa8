"""How the replicas' training forward runs: in the channels-last memory layout (``channels_last``)
and through ``torch.compile`` (``compile``), on top of the precision's autocast
(:func:`elastic_entropy.training.passes.with_precision`).

The wrappers change how the forward is computed, never what is trained or saved: the parameters
stay the optimizer's flat-buffer views (so the *weights* keep their layout; convolutions take the
layout of their input, and cuDNN and oneDNN run channels-last kernels for a channels-last input),
checkpoints hold the models themselves, and evaluation runs them unwrapped.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from torch import Tensor, nn

log = logging.getLogger(__name__)


class ChannelsLast(nn.Module):
    """``model`` fed its ``[B, C, H, W]`` minibatch in the channels-last layout (NHWC)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: Tensor) -> Tensor:
        if x.ndim == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        return self.model(x)


class Compiled(nn.Module):
    """``model``'s forward through ``torch.compile``; where it cannot compile (no compiler, an
    unsupported platform or model), one warning line and the eager forward from then on.

    Compilation happens at the first call, so that is where a failure shows: nothing of the
    model has run yet then, and the eager forward takes the same minibatch.
    """

    def __init__(self, model: nn.Module, backend: Any = "inductor") -> None:
        super().__init__()
        self.model = model
        self.compiled = torch.compile(model, backend=backend)
        self.is_eager = False

    def forward(self, x: Tensor) -> Tensor:
        if not self.is_eager:
            try:
                return self.compiled(x)
            except Exception as error:  # torch's compile errors have no common base class
                first = str(error).splitlines()[0] if str(error) else ""
                log.warning(
                    "compile=true: torch.compile cannot compile this model (%s: %s); training "
                    "goes on with the eager forward",
                    type(error).__name__,
                    first,
                )
                self.is_eager = True
        return self.model(x)


def _keep_replica_streams() -> None:
    """Dropout under inductor draws from the default generator, as eager does, so each replica's
    own random stream (swapped in around its forward) still gives its masks."""
    import torch._inductor.config as inductor_config

    inductor_config.fallback_random = True


def with_layout(models: list[nn.Module], channels_last: bool) -> list[nn.Module]:
    return [ChannelsLast(m) for m in models] if channels_last else models


def with_compile(models: list[nn.Module], compile: bool) -> list[nn.Module]:
    if not compile:
        return models
    _keep_replica_streams()
    return [Compiled(m) for m in models]


def check_layout(channels_last: bool, input_shape: tuple[int, ...]) -> None:
    """``channels_last`` is for images: one warning line where the data has none."""
    if channels_last and len(input_shape) != 3:
        log.warning(
            "channels_last=true does nothing: the samples are %s, not images (C, H, W)",
            list(input_shape),
        )
