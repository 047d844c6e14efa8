"""The training loss ``f(w)`` on a fixed sample, as a function of the flat parameter vector, and
the seeded random vectors the measures draw."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

import numpy as np
import torch
from torch import Tensor, nn

Batches = Sequence[tuple[Tensor, Tensor]]
LossFn = Callable[[Tensor, Tensor], Tensor]  # (model output, targets) -> mean over the chunk


def cross_entropy(out: Tensor, target: Tensor) -> Tensor:
    """The training loss of the passes: ``[B, C]`` logits of a class, or ``[B, T, V]`` of each
    position's next token, flattened (a mean over tokens for sequences of one length)."""
    return nn.functional.cross_entropy(out.flatten(0, -2), target.flatten())


def fixed_batches(
    x: Tensor, y: Tensor, num_samples: int, batch_size: int
) -> list[tuple[Tensor, Tensor]]:
    """The first ``num_samples`` points of ``(x, y)`` in chunks of ``batch_size``."""
    if num_samples < 1 or batch_size < 1:
        raise ValueError(f"Invalid num_samples / batch_size: {num_samples} / {batch_size} (>= 1)")
    n = min(num_samples, len(y))
    return [
        (x[s : min(s + batch_size, n)], y[s : min(s + batch_size, n)])
        for s in range(0, n, batch_size)
    ]


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[None]:
    """``model`` in eval mode inside the block; every module's own mode restored after it."""
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for m, mode in modes:
            m.training = mode


class TrainingLoss:
    """``f(w)`` on fixed ``batches``: the chunk means ``loss_fn(model(x_b), y_b)`` weighted by
    ``n_b / N``, a function of the flat parameter vector ``w`` (read and written in place)."""

    def __init__(self, model: nn.Module, batches: Batches, loss_fn: LossFn = cross_entropy) -> None:
        if not batches:
            raise ValueError("Invalid batches: empty (the loss needs at least one sample)")
        self.model = model
        self.batches = list(batches)
        self.loss_fn = loss_fn
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.num_samples = sum(len(y) for _, y in self.batches)
        self.dim = sum(p.numel() for p in self.params)

    def _chunks(self) -> Iterator[Tensor]:
        for x, y in self.batches:
            yield self.loss_fn(self.model(x), y) * (len(y) / self.num_samples)

    def get(self) -> Tensor:
        """``w``, a flat copy."""
        return torch.cat([p.detach().reshape(-1) for p in self.params]).clone()

    @torch.no_grad()
    def set(self, w: Tensor) -> None:
        """Write the flat ``w`` into the parameters (a copy: they never alias ``w``)."""
        offset = 0
        for p in self.params:
            p.copy_(w[offset : offset + p.numel()].view_as(p))
            offset += p.numel()

    @torch.no_grad()
    def value(self) -> float:
        return float(sum(float(c) for c in self._chunks()))

    def value_and_grad(self) -> tuple[float, Tensor]:
        p = self.params[0]
        total, grad = 0.0, torch.zeros(self.dim, dtype=p.dtype, device=p.device)
        for chunk in self._chunks():
            grads = torch.autograd.grad(chunk, self.params, allow_unused=True)
            grad += self._flat(grads)
            total += float(chunk.detach())
        return total, grad

    def hvp(self, v: Tensor) -> Tensor:
        """``H v = nabla (nabla f . v)``, chunk by chunk (double backward)."""
        pieces = self._split(v)
        out = torch.zeros_like(v)
        for chunk in self._chunks():
            grads = torch.autograd.grad(chunk, self.params, create_graph=True, allow_unused=True)
            dot = sum((g * u).sum() for g, u in zip(grads, pieces) if g is not None)
            if isinstance(dot, Tensor) and dot.requires_grad:
                out += self._flat(torch.autograd.grad(dot, self.params, allow_unused=True))
        return out

    def _flat(self, grads: Sequence[Tensor | None]) -> Tensor:
        return torch.cat(
            [
                (torch.zeros_like(p) if g is None else g).reshape(-1)
                for g, p in zip(grads, self.params)
            ]
        ).detach()

    def _split(self, v: Tensor) -> list[Tensor]:
        sizes = [p.numel() for p in self.params]
        return [u.view_as(p) for u, p in zip(torch.split(v, sizes), self.params)]


def seeded_generator(seed: int) -> torch.Generator:
    """A CPU generator: the measures draw on the CPU, so one seed gives one vector anywhere."""
    return torch.Generator().manual_seed(seed)


def normal_vector(loss: TrainingLoss, generator: torch.Generator) -> Tensor:
    """``xi ~ N(0, I_d)``, drawn on the CPU in float64 and moved: the same vector on every device
    for one seed."""
    p = loss.params[0]
    return torch.randn(loss.dim, generator=generator, dtype=torch.float64).to(p.device, p.dtype)


def rademacher_vector(loss: TrainingLoss, generator: torch.Generator) -> Tensor:
    """``v`` with independent entries ``+-1`` of probability 1/2 each."""
    p = loss.params[0]
    signs = torch.randint(0, 2, (loss.dim,), generator=generator, dtype=torch.int64) * 2 - 1
    return signs.to(p.device, p.dtype)


def standard_error(samples: Sequence[float]) -> float:
    """``std(samples, ddof=1) / sqrt(n)``; 0 for a single sample."""
    return float(np.std(samples, ddof=1) / math.sqrt(len(samples))) if len(samples) > 1 else 0.0
