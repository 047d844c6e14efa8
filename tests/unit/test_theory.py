"""The inner loop against Deep Relaxation's closed form on a quadratic."""

from __future__ import annotations

import math

import torch
from torch import nn

from elastic_entropy.optim import EntropySGD


def test_inner_average_on_a_quadratic_matches_the_gibbs_mean() -> None:
    """f = a y^2 / 2: <y> = gamma x / (gamma + a) = x / (1 + a t), t = 1/gamma, any temperature.

    The inner loop is Langevin dynamics on H(y) = f(y) + gamma (y - x)^2 / 2 (curvature
    k = a + gamma). For a quadratic the Euler-Maruyama chain's stationary mean is exactly the
    Gibbs mean (the drift is linear), so the only error is Monte-Carlo noise and the start-up
    transient. With temperature noise^2 = 1, variance per coordinate ~ 1/k; the EMA with
    alpha = 0.999 weighs (1 - alpha) / (1 + alpha) = 5e-4 in squares, times the correlation
    2 / (lr' k) = 27 steps, over d = 2000 independent coordinates: std of the estimate
    sqrt(0.67 * 5e-4 * 27 / 2000) = 2e-3; the EMA's weight on its start x after 12000 steps is
    0.999^12000 = 6e-6. A tolerance of 1e-2 (5 std, 3% of the value) cannot fail by chance.
    """
    a, gamma, x0, dim, steps = 1.0, 0.5, 1.0, 2000, 12000
    y = nn.Parameter(torch.full((dim,), x0, dtype=torch.float64))
    opt = EntropySGD(
        [y],
        lr=1.0,
        inner_lr=0.05,
        momentum=0.0,
        num_inner_steps=steps + 1,
        gamma=gamma,
        alpha=0.999,
        noise=1.0,
        seed=1234,
    )
    for _ in range(steps):
        y.grad = a * y.detach()
        opt.step()
    estimate = opt.state[y]["ema"].mean().item()
    expected = gamma * x0 / (gamma + a)
    assert math.isclose(expected, x0 / (1 + a / gamma))
    assert abs(estimate - expected) < 1e-2, (estimate, expected)
    # the noise is really on: the chain's spread is the Gibbs spread, sqrt(T/k) = 0.82
    assert 0.7 < y.detach().std().item() < 0.95


def test_without_noise_the_inner_loop_converges_to_the_proximal_point() -> None:
    """Zero temperature: y -> argmin f(y) + gamma |y - x|^2 / 2 = gamma x / (gamma + a)."""
    a, gamma = 2.0, 0.5
    y = nn.Parameter(torch.tensor([3.0], dtype=torch.float64))
    opt = EntropySGD([y], lr=1.0, inner_lr=0.1, momentum=0.9, num_inner_steps=1000, gamma=gamma)
    for _ in range(999):
        y.grad = a * y.detach()
        opt.step()
    assert abs(y.item() - 3.0 * gamma / (gamma + a)) < 1e-9
