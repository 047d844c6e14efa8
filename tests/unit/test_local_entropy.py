"""The local-entropy toolkit against the theory of Deep Relaxation, and Entropy-SGD against it.

``t`` is the PDE time (variance); the optimizer's coupling is ``gamma = 1 / t`` and its Langevin
temperature ``noise^2 = 1 / beta``.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from elastic_entropy.local_entropy import (
    gibbs_mean,
    hopf_lax,
    local_entropy,
    local_entropy_2d,
    local_entropy_grad,
    prox,
)
from elastic_entropy.local_entropy.landscapes import (
    double_well,
    rugged,
    rugged_curvature,
    rugged_grad,
)
from elastic_entropy.local_entropy.simulate import exit_rate
from elastic_entropy.optim import EntropySGD

# f = rugged grows like y^4, so exp(-beta f) is below e^-200 at the ends of [-4, 4]
GRID = np.linspace(-4.0, 4.0, 8001)
F_RUGGED = rugged(GRID)
# exp(-beta a y^2 / 2) for a = 0.5, beta = 1 is e^-36 at its ends
WIDE_GRID = np.linspace(-12.0, 12.0, 9601)


def _quadratic(a: float):
    return lambda y: 0.5 * a * y**2


# ---------------------------------------------------------------------------- the PDE
@pytest.mark.parametrize("beta", [1.0, 4.0])
def test_local_entropy_solves_viscous_hamilton_jacobi(beta):
    """``u_t = -1/2 u_x^2 + 1/(2 beta) u_xx`` by central differences, on a rugged double well.

    Steps ``h = dt = 1e-3``: the truncation error of the three central differences is
    ``h^2 |u_xxxx| / 12 + dt^2 |u_ttt| / 6 + h^2 |u_x u_xxx| / 6``; with the ripple
    ``0.15 cos(12 y)`` (fourth derivative ~3e3 before smoothing) that is at most ~3e-4, and the
    smoothing at ``t = 0.3`` damps it further. Round-off is ``4 eps |u| / h^2 ~ 1e-9``; the
    quadrature (spacing 1e-3 against a kernel width >= 0.27 and a ripple period of 0.52) is exact
    to many more digits. Measured: ~5e-6, while each term of the equation is of order 1.
    """
    t, h, dt = 0.3, 1e-3, 1e-3
    x = np.linspace(-1.5, 1.5, 13)

    def u(x_: np.ndarray, t_: float) -> np.ndarray:
        return local_entropy(F_RUGGED, GRID, t_, beta, query=x_)

    u_t = (u(x, t + dt) - u(x, t - dt)) / (2 * dt)
    u_x = (u(x + h, t) - u(x - h, t)) / (2 * h)
    u_xx = (u(x + h, t) - 2 * u(x, t) + u(x - h, t)) / h**2
    residual = u_t + 0.5 * u_x**2 - u_xx / (2 * beta)
    assert np.max(np.abs(residual)) < 1e-4
    # the check has teeth: the viscous term is a thousand times the tolerance
    assert np.max(np.abs(u_xx / (2 * beta))) > 0.1
    assert np.max(np.abs(u_t)) > 0.5


@pytest.mark.parametrize("beta", [1.0, 4.0])
def test_local_entropy_starts_at_f(beta):
    """``u(x, 0) = f`` and the first step of the PDE:
    ``f_t - f = t (-f'^2 / 2 + f'' / (2 beta)) + O(t^2)``. At ``t = 1e-4`` the first-order term
    is ~4e-3 and the remainder ~1e-5 (it shrinks 100x from ``t = 1e-3``)."""
    t = 1e-4
    x = np.linspace(-1.5, 1.5, 7)
    gap = local_entropy(F_RUGGED, GRID, t, beta, query=x) - rugged(x)
    first_order = t * (-0.5 * rugged_grad(x) ** 2 + rugged_curvature(x) / (2 * beta))
    assert np.max(np.abs(gap)) > 3e-3
    np.testing.assert_allclose(gap, first_order, atol=5e-5)


# ---------------------------------------------------------------------------- closed forms
@pytest.mark.parametrize("a", [0.5, 3.0])
@pytest.mark.parametrize("beta", [1.0, 5.0])
def test_quadratic_closed_forms(a, beta):
    """``f = a y^2/2``: ``<y> = x/(1+at)``, ``grad f_t = a x/(1+at)``,
    ``f_t = a x^2/(2(1+at)) + log(1+at)/(2 beta)``; the Gaussian integrals are exact."""
    t = 0.7
    x = np.array([-1.5, -0.2, 0.0, 0.9, 2.0])
    f = _quadratic(a)
    shrink = 1.0 + a * t
    np.testing.assert_allclose(gibbs_mean(f, x, t, beta), x / shrink, atol=1e-12)
    np.testing.assert_allclose(local_entropy_grad(f, x, t, beta), a * x / shrink, atol=1e-12)
    expected = a * x**2 / (2 * shrink) + math.log(shrink) / (2 * beta)
    values = local_entropy(f(WIDE_GRID), WIDE_GRID, t, beta, query=x)
    np.testing.assert_allclose(values, expected, atol=1e-11)


@pytest.mark.parametrize("a", [0.5, 3.0])
def test_quadratic_hopf_lax_and_prox(a):
    """Moreau envelope of ``a y^2/2``: ``prox = x/(1+ta)``, value ``a x^2/(2(1+at))``."""
    t = 0.7
    x = np.array([-1.5, -0.2, 0.0, 0.9, 2.0])
    f = _quadratic(a)
    np.testing.assert_allclose(prox(f, x, t, grid=GRID), x / (1 + t * a), atol=1e-12)
    expected = a * x**2 / (2 * (1 + a * t))
    np.testing.assert_allclose(hopf_lax(f(GRID), GRID, t, query=x), expected, atol=1e-12)


# ---------------------------------------------------------------------------- the gradient
@pytest.mark.parametrize("beta", [1.0, 3.0])
def test_gibbs_gradient_is_the_derivative_of_local_entropy(beta):
    """``(x - <y>)/t`` equals the central difference of ``f_t`` (step 1e-4, error ~1e-8)."""
    t, h = 0.2, 1e-4
    x = np.linspace(-1.5, 1.5, 11)
    numeric = (
        local_entropy(F_RUGGED, GRID, t, beta, query=x + h)
        - local_entropy(F_RUGGED, GRID, t, beta, query=x - h)
    ) / (2 * h)
    analytic = local_entropy_grad(rugged, x, t, beta, grid=GRID)
    np.testing.assert_allclose(analytic, numeric, atol=1e-6)
    assert np.max(np.abs(analytic)) > 1.0


def test_default_grid_matches_explicit_grid():
    x = np.array([-0.9, 0.1, 1.1])
    np.testing.assert_allclose(
        gibbs_mean(rugged, x, 0.2), gibbs_mean(rugged, x, 0.2, grid=GRID), atol=1e-9
    )


# ---------------------------------------------------------------------------- inviscid limit
def test_inviscid_limit_is_hopf_lax():
    """``f_t^beta -> u_HopfLax`` as ``beta -> infinity``, at the Laplace rate:
    ``beta (f_t - u) -> log(1 + t f''(y*)) / 2`` with ``y* = prox_{tf}(x)``.

    At ``beta = 1000`` the next Laplace term is O(1/beta) times derivatives of ``f`` up to the
    fourth (~3e3 for the ripple), so ~0.02 is expected (measured 0.020): tolerance 0.05.
    """
    t = 0.3
    x = np.linspace(-1.5, 1.5, 31)
    u = hopf_lax(F_RUGGED, GRID, t, query=x)
    gaps = {
        beta: local_entropy(F_RUGGED, GRID, t, beta, query=x) - u for beta in (10.0, 100.0, 1000.0)
    }
    sup = {beta: np.max(np.abs(gap)) for beta, gap in gaps.items()}
    assert sup[1000.0] < 1.5e-3
    assert sup[1000.0] < sup[100.0] / 5 < sup[10.0] / 25
    laplace = 0.5 * np.log1p(t * rugged_curvature(prox(rugged, x, t, grid=GRID)))
    np.testing.assert_allclose(1000.0 * gaps[1000.0], laplace, atol=0.05)


# ---------------------------------------------------------------------------- 2-D
def test_local_entropy_2d_separable_is_sum_of_1d():
    """``f(y0, y1) = g(y0) + h(y1)``: the kernel factorises, so ``f_t = g_t + h_t``."""
    t, beta, a = 0.3, 2.0, 1.5
    g0 = np.linspace(-4.0, 4.0, 401)
    g1 = np.linspace(-5.0, 5.0, 161)
    f = rugged(g0)[:, None] + 0.5 * a * g1[None, :] ** 2
    got = local_entropy_2d(f, g0, g1, t, beta)
    expected = local_entropy(rugged(g0), g0, t, beta)[:, None] + (
        a * g1[None, :] ** 2 / (2 * (1 + a * t)) + math.log1p(a * t) / (2 * beta)
    )
    inner = (np.abs(g0) <= 1.5)[:, None] & (np.abs(g1) <= 2.0)[None, :]
    np.testing.assert_allclose(got[inner], expected[inner], atol=1e-9)


def test_local_entropy_2d_rotated_quadratic():
    """``f = y^T A y / 2``: ``f_t = x^T A (I + tA)^-1 x / 2 + log det(I + tA) / (2 beta)``."""
    t, beta = 0.4, 1.0
    c, s = math.cos(0.6), math.sin(0.6)
    rotation = np.array([[c, -s], [s, c]])
    a = rotation @ np.diag([1.0, 3.0]) @ rotation.T
    g = np.linspace(-8.0, 8.0, 241)
    y0, y1 = np.meshgrid(g, g, indexing="ij")
    f = 0.5 * (a[0, 0] * y0**2 + 2 * a[0, 1] * y0 * y1 + a[1, 1] * y1**2)
    got = local_entropy_2d(f, g, g, t, beta)
    m = a @ np.linalg.inv(np.eye(2) + t * a)
    expected = 0.5 * (m[0, 0] * y0**2 + 2 * m[0, 1] * y0 * y1 + m[1, 1] * y1**2) + np.log(
        np.linalg.det(np.eye(2) + t * a)
    ) / (2 * beta)
    inner = (np.abs(y0) <= 2.0) & (np.abs(y1) <= 2.0)
    np.testing.assert_allclose(got[inner], expected[inner], atol=1e-9)


# ---------------------------------------------------------------------------- input checks
@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: local_entropy(F_RUGGED, GRID, 0.0), "Invalid t"),
        (lambda: local_entropy(F_RUGGED, GRID, 0.1, beta=-1.0), "Invalid beta"),
        (lambda: local_entropy(F_RUGGED[:-1], GRID, 0.1), "shape"),
        (lambda: local_entropy(GRID**2, GRID**3, 0.1), "uniform"),
        (lambda: local_entropy(F_RUGGED, GRID, 1e-7), "refine the grid"),
        (lambda: hopf_lax(F_RUGGED * np.nan, GRID, 0.1), "NaN"),
        (lambda: gibbs_mean(lambda y: 1.0, 0.0, 0.1), "elementwise"),
    ],
)
def test_bad_input_raises_value_error(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def test_excluded_points_are_skipped():
    """``f = +inf`` outside ``[-1, 1]``: a hard wall, still finite inside."""
    f = np.where(np.abs(GRID) <= 1.0, 0.0, np.inf)
    x = np.array([-0.5, 0.0, 0.5])
    assert np.all(np.isfinite(local_entropy(f, GRID, 0.1, query=x)))
    np.testing.assert_allclose(hopf_lax(f, GRID, 0.1, query=x), 0.0, atol=1e-12)


def test_exit_rate_is_the_censored_maximum_likelihood():
    """Two exits at times 1 and 3, two runs censored at 10: rate = 2 / (1 + 3 + 10 + 10)."""
    times = np.array([1.0, 3.0, np.inf, np.inf])
    assert exit_rate(times, horizon=10.0) == pytest.approx(2.0 / 24.0)


# ---------------------------------------------------------------------------- Entropy-SGD
def test_entropy_sgd_inner_loop_estimates_local_entropy_gradient():
    """The real optimizer's Langevin inner loop estimates ``grad f_gamma(x) = gamma (x - <y>)``.

    ``f(y) = (y^2 - 1)^2``, ``gamma = 1`` (``t = 1``), ``noise = 1`` (``beta = 1``), anchor
    ``x = 0.8``. Quadrature: ``grad f_t(0.8) = 0.3156`` while ``f'(0.8) = -1.152``: the local
    entropy pulls towards the barrier, against the loss's own slope, because at ``beta = 1`` the
    barrier is one ``kT`` and the smoothed landscape has a single basin.

    The parameter is a vector of 2048 coordinates; ``sum_i f(y_i)`` is separable and every update
    is elementwise, so these are 2048 independent 1-D chains with one anchor value. Inner steps
    ``y <- y - lr' (f'(y) + gamma (y - x)) + sqrt(2 lr') xi`` with ``lr' = 0.005``, momentum 0;
    ``num_inner_steps = 20000``, so the anchor stays fixed until the last step.

    Error budget for the average of ``y`` over steps 1000..19999 (5 time units of burn-in against
    a relaxation time ~1):
    - discretisation bias of the Euler-Maruyama chain, O(lr'): measured separately with 20000
      chains at lr' = 0.02, 0.01, 0.005 as +4.2%, +2.0%, +0.95% of the gradient (linear in lr');
    - Monte Carlo: ``std(y) = 0.72`` under ``rho``, integrated autocorrelation time
      ``tau ~ 0.7`` time units, so one chain's mean over ``T = 95`` has standard deviation
      ``sqrt(2 tau / T) std(y) ~ 0.087``; over 2048 chains 0.0019, i.e. 0.6% of the gradient.
    Bias plus five standard deviations is 4%, inside the 5% tolerance (seeds 0-9 gave -0.4% to
    +2.3%, mean +1.1%; seed 0: 0.31733 against 0.31563, +0.5%).

    The optimizer's own estimate, ``gamma (x - z)`` with ``z`` the EMA (``alpha = 0.9995``,
    a window of 2000 steps), is read off the outer step (``lr = 1``, momentum 0:
    ``x_new = z``); its window is ten times shorter, hence a 10% tolerance (5 std: 6.5%,
    plus the 1% bias; seeds 0-9 gave -0.7% to +2.7%).
    """
    x, gamma, num_chains, num_steps, burn_in = 0.8, 1.0, 2048, 20_000, 1_000
    y = torch.nn.Parameter(torch.full((num_chains,), x, dtype=torch.float64))
    opt = EntropySGD(
        [y],
        lr=1.0,
        inner_lr=0.005,
        momentum=0.0,
        num_inner_steps=num_steps,
        gamma=gamma,
        alpha=0.9995,
        noise=1.0,
        seed=0,
    )
    total = torch.zeros_like(y, requires_grad=False)
    for n in range(1, num_steps + 1):
        opt.zero_grad()
        double_well(y).sum().backward()
        opt.step()
        if burn_in <= n < num_steps:  # the last step is the outer step: y is then the new anchor
            total += y.detach()
    inner_estimate = gamma * (x - total.mean().item() / (num_steps - burn_in))
    outer_estimate = gamma * (x - y.detach().mean().item())
    exact = float(local_entropy_grad(double_well, x, 1.0 / gamma))
    print(
        f"grad f_gamma(0.8): quadrature {exact:.5f}, inner average {inner_estimate:.5f} "
        f"({inner_estimate / exact - 1:+.2%}), outer step {outer_estimate:.5f} "
        f"({outer_estimate / exact - 1:+.2%})"
    )
    assert exact == pytest.approx(0.31563, abs=1e-4)
    assert inner_estimate == pytest.approx(exact, rel=0.05)
    assert outer_estimate == pytest.approx(exact, rel=0.10)
