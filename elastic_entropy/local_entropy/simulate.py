r"""Many 1-D runs at once, for the pictures.

SGD and Entropy-SGD run through the project's own optimizers: one parameter vector whose
coordinates are independent runs, since the loss ``sum_r f(y_r)`` is separable and each optimizer
update is elementwise. Minibatch noise is modelled as a Gaussian added to the gradient:
``loss = sum_r f(y_r) + grad_noise * xi_r * y_r`` with fresh ``xi ~ N(0, 1)`` every step.

The metastability runs are plain Langevin dynamics in numpy,
``y <- y - dt f'(y) + sqrt(2 T dt) xi``, whose exit time from a well of depth ``barrier`` grows
like ``exp(barrier / T)`` (Arrhenius; Kramers gives the prefactor).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch
from torch import Tensor

from elastic_entropy.optim import SGD, EntropySGD
from elastic_entropy.scoping import Schedule

TorchLoss = Callable[[Tensor], Tensor]
NumpyGrad = Callable[[np.ndarray], np.ndarray]


def _runs(start: float, num_runs: int) -> torch.nn.Parameter:
    if num_runs < 1:
        raise ValueError(f"Invalid num_runs value: {num_runs} (must be >= 1)")
    return torch.nn.Parameter(torch.full((num_runs,), float(start), dtype=torch.float64))


def _backward(
    f: TorchLoss, y: torch.nn.Parameter, grad_noise: float, generator: torch.Generator
) -> None:
    loss = f(y).sum()
    if grad_noise > 0.0:
        xi = torch.randn(y.shape, generator=generator, dtype=y.dtype)
        loss = loss + grad_noise * (xi * y).sum()
    loss.backward()


def sgd_runs(
    f: TorchLoss,
    start: float,
    *,
    num_runs: int,
    num_steps: int,
    lr: float,
    grad_noise: float,
    seed: int,
    momentum: float = 0.0,
) -> np.ndarray:
    """Final positions of ``num_runs`` independent SGD runs from ``start``."""
    y = _runs(start, num_runs)
    opt = SGD([y], lr=lr, momentum=momentum)
    generator = torch.Generator().manual_seed(seed)
    for _ in range(num_steps):
        opt.zero_grad()
        _backward(f, y, grad_noise, generator)
        opt.step()
    return y.detach().numpy().copy()


def entropy_sgd_runs(
    f: TorchLoss,
    start: float,
    *,
    num_runs: int,
    num_outer_steps: int,
    num_inner_steps: int,
    lr: float,
    inner_lr: float,
    gamma_schedule: Schedule,
    noise: float,
    grad_noise: float,
    seed: int,
    momentum: float = 0.0,
    alpha: float = 0.75,
) -> np.ndarray:
    """Final anchors of ``num_runs`` independent Entropy-SGD runs from ``start``.

    Each outer step costs ``num_inner_steps`` gradients; the inner loop runs Langevin dynamics at
    temperature ``noise^2`` (``beta = 1 / noise^2``) pulled towards the anchor by
    ``gamma_schedule``'s coupling (PDE time ``t = 1 / gamma``).
    """
    y = _runs(start, num_runs)
    opt = EntropySGD(
        [y],
        lr=lr,
        inner_lr=inner_lr,
        momentum=momentum,
        num_inner_steps=num_inner_steps,
        gamma_schedule=gamma_schedule,
        alpha=alpha,
        noise=noise,
        seed=seed,
    )
    generator = torch.Generator().manual_seed(seed + 1)
    for _ in range(num_outer_steps * num_inner_steps):
        opt.zero_grad()
        _backward(f, y, grad_noise, generator)
        opt.step()
    # after the last outer step the live parameters hold the anchors
    return y.detach().numpy().copy()


def langevin_exit_times(
    grad: NumpyGrad,
    start: float,
    exit_at: float,
    *,
    temperature: float,
    num_runs: int,
    dt: float,
    num_steps: int,
    seed: int,
) -> np.ndarray:
    """First times each run reaches ``y >= exit_at`` (``inf`` if not within ``num_steps``).

    Euler-Maruyama for ``dy = -f'(y) dt + sqrt(2 T) dW``, all runs as one vector.
    """
    if temperature <= 0.0:
        raise ValueError(f"Invalid temperature value: {temperature} (must be > 0)")
    rng = np.random.default_rng(seed)
    y = np.full(num_runs, float(start))
    exit_time = np.full(num_runs, np.inf)
    scale = math.sqrt(2.0 * temperature * dt)
    for step in range(1, num_steps + 1):
        y += -dt * grad(y) + scale * rng.standard_normal(num_runs)
        is_new = (y >= exit_at) & np.isinf(exit_time)
        exit_time[is_new] = step * dt
    return exit_time


def exit_rate(exit_times: np.ndarray, horizon: float) -> float:
    """Maximum-likelihood rate of an exponential exit time, censored at ``horizon``.

    ``rate = exits / total time at risk``: runs that never left count for the whole horizon, so
    a short simulation still estimates a long mean exit time without bias.
    """
    exits = np.isfinite(exit_times)
    at_risk = float(np.sum(np.where(exits, exit_times, horizon)))
    return float(np.sum(exits)) / at_risk


def kramers_time(barrier: float, curvature_well: float, curvature_saddle: float, T: float) -> float:
    r"""Kramers' mean escape time ``2 pi / sqrt(f''(well) |f''(saddle)|) exp(barrier / T)``."""
    return 2.0 * math.pi / math.sqrt(curvature_well * abs(curvature_saddle)) * math.exp(barrier / T)
