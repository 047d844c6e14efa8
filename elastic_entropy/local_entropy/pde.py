r"""Local entropy as the solution of a viscous Hamilton-Jacobi PDE, by quadrature on a grid.

Deep Relaxation (Chaudhari, Oberman, Osher, Soatto, Carlier, 2018) writes the local entropy of a
loss ``f`` at time (variance) ``t`` and inverse temperature ``beta`` as

    f_t(x) = -(1/beta) log( G_{t/beta} * exp(-beta f) )(x),
    G_s(d) = (2 pi s)^(-1/2) exp(-d^2 / (2 s)),

which solves ``u_t = -1/2 |u_x|^2 + 1/(2 beta) u_xx`` with ``u(x, 0) = f(x)``: by Hopf-Cole,
``v = exp(-beta u)`` solves the heat equation ``v_t = 1/(2 beta) v_xx``, whose solution is the
Gaussian convolution above. Its gradient is ``grad f_t(x) = (x - <y>) / t``, with ``<y>`` the
mean of the Gibbs measure ``rho(y; x) ∝ exp(-beta [f(y) + |x - y|^2 / (2 t)])``. As
``beta -> infinity`` the PDE loses its viscosity and ``f_t`` tends to the Hopf-Lax formula
``u(x, t) = min_y f(y) + |x - y|^2 / (2 t)`` (the Moreau envelope), whose argmin is the proximal
map.

The optimizers store a coupling *strength* ``gamma``; the PDE time is ``t = 1 / gamma``.

Everything here is float64 numpy on a uniform grid. The integrals run over the grid's span only,
so the grid must reach several ``sqrt(t / beta)`` beyond the points you query, or ``f`` must be
large at its ends. The trapezoid rule on a smooth integrand that vanishes at the ends converges
faster than any power of the spacing, so the quadrature error is negligible once the spacing
resolves both ``f`` and the kernel width ``sqrt(t / beta)``.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
from numpy.typing import ArrayLike, NDArray

Array = NDArray[np.float64]
Loss = Callable[[Array], ArrayLike]

# entries of one (queries x grid) block; bounds memory at ~32 MiB whatever the sizes
_BLOCK_ENTRIES = 4_000_000
# a default grid for a callable f reaches this many kernel widths sqrt(t / beta) beyond the queries
_DEFAULT_REACH = 12.0
_DEFAULT_POINTS = 4001
# leads every concatenation of blocks, so that an empty list of queries gives an empty answer
_EMPTY = np.empty(0)


# ---------------------------------------------------------------------------- validation
def _check_positive(name: str, value: float) -> float:
    if not math.isfinite(value) or value <= 0.0:
        raise ValueError(f"Invalid {name} value: {value} (must be finite and > 0)")
    return float(value)


def _check_grid(grid: ArrayLike, name: str = "grid") -> Array:
    """A 1-D, increasing, uniform grid of at least three points, as float64."""
    g = np.asarray(grid, dtype=np.float64)
    if g.ndim != 1 or g.size < 3:
        raise ValueError(f"{name} must be 1-D with at least 3 points, got shape {g.shape}")
    steps = np.diff(g)
    if not np.all(np.isfinite(g)) or np.any(steps <= 0.0):
        raise ValueError(f"{name} must be finite and strictly increasing")
    if not np.allclose(steps, steps[0], rtol=1e-6, atol=0.0):
        raise ValueError(
            f"{name} must be uniform (spacing from {steps.min():.3g} to {steps.max():.3g}); "
            "build it with np.linspace"
        )
    return g


def _check_values(f_values: ArrayLike, shape: tuple[int, ...]) -> Array:
    values = np.asarray(f_values, dtype=np.float64)
    if values.shape != shape:
        raise ValueError(f"f_values has shape {values.shape} but the grid needs {shape}")
    if np.any(np.isnan(values)) or np.any(values == -np.inf):
        raise ValueError("f_values must not hold NaN or -inf (+inf marks excluded points)")
    return values


def _points(x: ArrayLike) -> Array:
    points = np.asarray(x, dtype=np.float64)
    if not np.all(np.isfinite(points)):
        raise ValueError("query points must be finite")
    return points


def _queries(query: ArrayLike | None, grid: Array) -> Array:
    return grid if query is None else _points(query)


# ---------------------------------------------------------------------------- quadrature
def _log_trapezoid_weights(grid: Array) -> Array:
    """``log`` of the trapezoid weights (half a step at each end)."""
    h = grid[1] - grid[0]
    log_w = np.full(grid.shape, math.log(h))
    log_w[[0, -1]] -= math.log(2.0)
    return log_w


def _exponent_blocks(log_mass: Array, grid: Array, x: Array, variance: float) -> list[Array]:
    """Blocks of rows of ``E[i, j] = log_mass[j] - (x_i - y_j)^2 / (2 variance)``.

    ``log_mass`` already holds the quadrature weights and ``-beta f``; ``variance`` is the
    kernel's, ``t / beta``. Blocking keeps the memory bounded for long query lists.
    """
    rows = max(1, _BLOCK_ENTRIES // grid.size)
    return [
        log_mass[None, :] - (x[i : i + rows, None] - grid[None, :]) ** 2 / (2.0 * variance)
        for i in range(0, x.size, rows)
    ]


def _row_max(e: Array) -> Array:
    """Each row's largest exponent; a row of ``-inf`` is a query no grid point can reach."""
    top = np.max(e, axis=1)
    if np.any(top == -np.inf):
        raise ValueError(
            "the Gibbs weight exp(-beta f(y) - beta |x - y|^2 / (2 t)) underflows to zero on the "
            "whole grid for some query; widen the grid or use a larger t"
        )
    return top


def _logsumexp_rows(e: Array) -> Array:
    """``log sum_j exp(e[i, j])``, shifted by the row maximum so nothing overflows."""
    top = _row_max(e)
    return top + np.log(np.sum(np.exp(e - top[:, None]), axis=1))


def _check_resolved(grid: Array, variance: float) -> None:
    # a kernel narrower than the spacing is sampled at a point or two: the sum is then no
    # integral, and the answer would be silently wrong
    h = grid[1] - grid[0]
    if math.sqrt(variance) < 2.0 * h:
        raise ValueError(
            f"the heat kernel's width sqrt(t / beta) = {math.sqrt(variance):.3g} is below twice "
            f"the grid spacing {h:.3g}; refine the grid or use a larger t / beta"
        )


def _log_heat(log_mass: Array, grid: Array, x: Array, variance: float) -> Array:
    """``log ∫ exp(log_mass(y)) G_variance(x - y) dy`` at each ``x``, by log-sum-exp."""
    _check_resolved(grid, variance)
    log_norm = -0.5 * math.log(2.0 * math.pi * variance)
    blocks = _exponent_blocks(log_mass + _log_trapezoid_weights(grid), grid, x, variance)
    return np.concatenate([_EMPTY, *(_logsumexp_rows(e) for e in blocks)]) + log_norm


# ---------------------------------------------------------------------------- local entropy
def local_entropy(
    f_values: ArrayLike,
    grid: ArrayLike,
    t: float,
    beta: float = 1.0,
    query: ArrayLike | None = None,
) -> Array:
    r"""The local entropy ``f_t(x) = -(1/beta) log( G_{t/beta} * exp(-beta f) )(x)``.

    ``f_values`` samples ``f`` on the uniform ``grid`` (``+inf`` excludes a point); the result is
    on the grid, or at the points ``query``. It solves ``u_t = -1/2 u_x^2 + 1/(2 beta) u_xx``
    with ``u(x, 0) = f`` (Hopf-Cole). For ``f = a y^2 / 2`` it is
    ``a x^2 / (2 (1 + a t)) + log(1 + a t) / (2 beta)`` exactly.
    """
    t = _check_positive("t", t)
    beta = _check_positive("beta", beta)
    g = _check_grid(grid)
    values = _check_values(f_values, g.shape)
    x = _queries(query, g)
    flat = x.reshape(-1)
    log_v = _log_heat(-beta * values, g, flat, t / beta)
    return (-log_v / beta).reshape(x.shape)


def local_entropy_2d(
    f_values: ArrayLike,
    grid0: ArrayLike,
    grid1: ArrayLike,
    t: float,
    beta: float = 1.0,
) -> Array:
    r"""The local entropy of ``f(y0, y1)`` sampled on the product grid ``grid0 x grid1``.

    The 2-D heat kernel is the product of two 1-D ones,
    ``G_s(d0, d1) = G_s(d0) G_s(d1)``, so the convolution is two 1-D log-domain convolutions:
    first along ``y1`` for every row, then along ``y0``. ``f_values[i, j] = f(grid0[i],
    grid1[j])``; the result has the same layout.
    """
    t = _check_positive("t", t)
    beta = _check_positive("beta", beta)
    g0 = _check_grid(grid0, "grid0")
    g1 = _check_grid(grid1, "grid1")
    values = _check_values(f_values, (g0.size, g1.size))
    variance = t / beta
    # rows of -beta f convolved along y1; each row is one y0
    along1 = np.stack([_log_heat(row, g1, g1, variance) for row in -beta * values])
    along0 = np.stack([_log_heat(col, g0, g0, variance) for col in along1.T]).T
    return -along0 / beta


# ---------------------------------------------------------------------------- Gibbs measure
def _default_grid(x: Array, t: float, beta: float) -> Array:
    reach = _DEFAULT_REACH * math.sqrt(t / beta)
    lo, hi = (float(x.min()), float(x.max())) if x.size else (0.0, 0.0)
    return np.linspace(lo - reach, hi + reach, _DEFAULT_POINTS)


def _sample(f: Loss, grid: Array) -> Array:
    values = np.asarray(f(grid), dtype=np.float64)
    if values.shape != grid.shape:
        raise ValueError(
            f"f must map an array of shape {grid.shape} to one of the same shape (elementwise), "
            f"got {values.shape}"
        )
    return _check_values(values, grid.shape)


def gibbs_mean(
    f: Loss,
    x: ArrayLike,
    t: float,
    beta: float = 1.0,
    grid: ArrayLike | None = None,
) -> Array:
    r"""``<y>`` under ``rho(y; x) ∝ exp(-beta [f(y) + |x - y|^2 / (2 t)])``, by quadrature.

    This is what the inner loop of Entropy-SGD estimates with Langevin dynamics at temperature
    ``1 / beta`` and coupling ``gamma = 1 / t``. ``f`` is elementwise on numpy arrays. The default
    grid spans the queries plus 12 kernel widths ``sqrt(t / beta)`` on each side, which suffices
    unless ``f`` is much lower far away from ``x``: then pass a ``grid`` that covers that mass.
    For ``f = a y^2 / 2``, ``<y> = x / (1 + a t)`` at every ``beta``.
    """
    t = _check_positive("t", t)
    beta = _check_positive("beta", beta)
    xq = _points(x)
    flat = xq.reshape(-1)
    g = _check_grid(grid) if grid is not None else _default_grid(flat, t, beta)
    _check_resolved(g, t / beta)
    log_mass = -beta * _sample(f, g) + _log_trapezoid_weights(g)
    means = []
    for e in _exponent_blocks(log_mass, g, flat, t / beta):
        w = np.exp(e - _row_max(e)[:, None])
        means.append((w @ g) / np.sum(w, axis=1))
    return np.concatenate([_EMPTY, *means]).reshape(xq.shape)


def local_entropy_grad(
    f: Loss,
    x: ArrayLike,
    t: float,
    beta: float = 1.0,
    grid: ArrayLike | None = None,
) -> Array:
    r"""``grad f_t(x) = (x - <y>) / t``, the direction Entropy-SGD descends.

    In the optimizer's units (``gamma = 1 / t``) this is ``gamma (x - <y>)``, the outer step's
    ``gamma (x - z)`` with the inner loop's average ``z`` in place of ``<y>``.
    """
    xq = _points(x)
    return (xq - gibbs_mean(f, xq, t, beta, grid)) / t


# ---------------------------------------------------------------------------- inviscid limit
def _parabola_vertex(left: Array, mid: Array, right: Array) -> tuple[Array, Array]:
    """Offset (in grid steps) and value of the parabola's vertex through three equispaced points.

    Refining the discrete minimum this way cuts the error of the argmin from O(h) to O(h^2) and
    of the minimum from O(h^2) to O(h^3); a flat or concave triple keeps the grid point.
    """
    with np.errstate(invalid="ignore"):  # +inf neighbours (excluded points) give inf - inf
        curvature = left - 2.0 * mid + right
        slope = right - left
    is_fit = np.isfinite(curvature) & np.isfinite(slope) & (curvature > 0.0)
    safe = np.where(is_fit, curvature, 1.0)
    offset = np.where(is_fit, -np.where(is_fit, slope, 0.0) / (2.0 * safe), 0.0)
    value = np.where(is_fit, mid - np.where(is_fit, slope, 0.0) ** 2 / (8.0 * safe), mid)
    return np.clip(offset, -0.5, 0.5), value


def _moreau(values: Array, grid: Array, x: Array, t: float) -> tuple[Array, Array]:
    """``(min_y phi, argmin_y phi)`` with ``phi(y) = f(y) + |x - y|^2 / (2 t)``, for each ``x``.

    Ties (a non-convex ``f`` where the prox jumps) go to the smallest ``y``.
    """
    h = grid[1] - grid[0]
    rows = max(1, _BLOCK_ENTRIES // grid.size)
    best, where = [], []
    for i in range(0, x.size, rows):
        phi = values[None, :] + (x[i : i + rows, None] - grid[None, :]) ** 2 / (2.0 * t)
        j = np.argmin(phi, axis=1)
        inner = np.clip(j, 1, grid.size - 2)
        r = np.arange(j.size)
        offset, value = _parabola_vertex(phi[r, inner - 1], phi[r, inner], phi[r, inner + 1])
        # a minimum on the grid's edge has no neighbour to fit; keep it as it is
        edge = inner != j
        best.append(np.where(edge, phi[r, j], value))
        where.append(np.where(edge, grid[j], grid[inner] + offset * h))
    return np.concatenate([_EMPTY, *best]), np.concatenate([_EMPTY, *where])


def hopf_lax(
    f_values: ArrayLike,
    grid: ArrayLike,
    t: float,
    query: ArrayLike | None = None,
) -> Array:
    r"""The Hopf-Lax formula ``u(x, t) = min_y f(y) + |x - y|^2 / (2 t)`` (Moreau envelope).

    It solves the inviscid equation ``u_t = -1/2 u_x^2`` and is the ``beta -> infinity`` limit
    of :func:`local_entropy`, which exceeds it by about ``log(1 + t f''(y*)) / (2 beta)``
    (Laplace's method at the minimiser ``y*``). The minimum over the grid is refined by a
    parabola through its neighbours.
    """
    t = _check_positive("t", t)
    g = _check_grid(grid)
    values = _check_values(f_values, g.shape)
    x = _queries(query, g)
    best, _ = _moreau(values, g, x.reshape(-1), t)
    return best.reshape(x.shape)


def prox(f: Loss, x: ArrayLike, t: float, grid: ArrayLike | None = None) -> Array:
    r"""The proximal map ``prox_{t f}(x) = argmin_y f(y) + |x - y|^2 / (2 t)``.

    ``grad u(x, t) = (x - prox_{t f}(x)) / t`` for the Hopf-Lax ``u``: the zero-temperature
    ``<y>``. For ``f = a y^2 / 2`` it is ``x / (1 + a t)``. The default grid is
    :func:`gibbs_mean`'s at ``beta = 1``.
    """
    t = _check_positive("t", t)
    xq = _points(x)
    flat = xq.reshape(-1)
    g = _check_grid(grid) if grid is not None else _default_grid(flat, t, 1.0)
    _, where = _moreau(_sample(f, g), g, flat, t)
    return where.reshape(xq.shape)
