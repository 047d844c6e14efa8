r"""Pictures of local entropy, scoping, flat minima and metastability (PNG, matplotlib Agg).

Each ``figure_*`` function writes one PNG into ``out`` and returns its path with a one-line
summary of the numbers it measured. Figures are built with ``matplotlib.figure.Figure`` rather
than ``pyplot``, so nothing touches a global backend or opens a window.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from elastic_entropy.local_entropy import landscapes, simulate
from elastic_entropy.local_entropy.pde import hopf_lax, local_entropy
from elastic_entropy.scoping import Schedule

# the quadrature grid: wide enough that exp(-beta f) is negligible at its ends for every landscape
# drawn here; the curves are evaluated only at the points _X drawn
_GRID = np.linspace(-4.0, 4.0, 4001)
_X = np.linspace(-1.8, 1.8, 721)


@dataclass(frozen=True)
class Written:
    """A PNG written, and what it showed in numbers."""

    path: Path
    summary: str


def _save(fig: Figure, out: Path, name: str) -> Path:
    path = out / name
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    return path


def _plot_on(ax: Axes, values: np.ndarray, **style: object) -> None:
    ax.plot(_X, values, **style)


def _smoothed(f_grid: np.ndarray, t: float, beta: float = 1.0) -> np.ndarray:
    """``f_t`` at the drawn points ``_X``, integrating over the whole grid."""
    return local_entropy(f_grid, _GRID, t, beta, query=_X)


# ---------------------------------------------------------------------------- (a) local entropy
def figure_landscape(out: Path) -> Written:
    """A rugged loss and its local entropy: several ``t`` at ``beta = 1``; several ``beta``."""
    f_grid = landscapes.rugged(_GRID)
    f = landscapes.rugged(_X)
    fig = Figure(figsize=(11, 4.2))
    left, right = fig.subplots(1, 2)
    _plot_on(left, f, color="k", lw=2, label="f")
    times = (0.02, 0.1, 0.3, 1.0)
    smoothed = [_smoothed(f_grid, t) for t in times]
    for t, f_t in zip(times, smoothed):
        _plot_on(left, f_t, label=f"$f_t$, t = {t}")
    left.set_title(r"local entropy $f_t = -\log(G_t * e^{-f})$, $\beta = 1$")
    t = 0.3
    _plot_on(right, f, color="k", lw=2, label="f")
    for beta in (1.0, 4.0, 16.0):
        _plot_on(right, _smoothed(f_grid, t, beta), label=rf"$\beta$ = {beta:g}")
    moreau = hopf_lax(f_grid, _GRID, t, query=_X)
    _plot_on(right, moreau, color="r", ls="--", label="Hopf-Lax (β → ∞)")
    right.set_title(f"t = {t}: the inviscid limit is the Moreau envelope")
    for ax in (left, right):
        ax.set_xlabel("x")
        ax.legend(fontsize=8)
    path = _save(fig, out, "local_entropy.png")
    minima = ", ".join(f"t={t}: {_count_minima(f_t)}" for t, f_t in zip(times, smoothed))
    return Written(path, f"local minima in [-1.8, 1.8] of f: {_count_minima(f)}; of f_t: {minima}")


def _count_minima(values: np.ndarray) -> int:
    return int(np.sum((values[1:-1] < values[:-2]) & (values[1:-1] < values[2:])))


# ---------------------------------------------------------------------------- (b) scoping
def _scoped_times(num_steps: int) -> np.ndarray:
    """``t_k = 1 / gamma_k`` read from the optimizers' own schedule object."""
    schedule = Schedule(0.5, 0.1, 50.0)
    gammas = []
    for _ in range(num_steps):
        gammas.append(schedule.value)
        schedule.step()
    return 1.0 / np.asarray(gammas)


def figure_scoping(out: Path) -> Written:
    """``gamma_k = min(gamma_0 (1 + rate)^k, gamma_max)``: ``t_k = 1 / gamma_k`` shrinks."""
    times = _scoped_times(61)
    fig = Figure(figsize=(11, 4.2))
    left, right = fig.subplots(1, 2)
    left.semilogy(np.arange(times.size), times, marker=".")
    left.set_xlabel("outer step k")
    left.set_ylabel(r"$t_k = 1/\gamma_k$")
    left.set_title(r"scoping: $\gamma_k = \min(0.5 \cdot 1.1^k, 50)$")
    f_grid = landscapes.rugged(_GRID)
    f = landscapes.rugged(_X)
    _plot_on(right, f, color="k", lw=2, label="f")
    snapshots = {k: _smoothed(f_grid, float(times[k])) for k in (0, 10, 20, 30, 60)}
    for k, f_t in snapshots.items():
        _plot_on(right, f_t, label=f"k = {k}, t = {times[k]:.3g}")
    right.set_title(r"$f_{t_k}$ returns towards f as the coupling grows")
    right.set_xlabel("x")
    right.legend(fontsize=8)
    path = _save(fig, out, "scoping.png")
    argmins = ", ".join(f"k={k}: {_argmin(f_t):+.3f}" for k, f_t in snapshots.items())
    return Written(
        path,
        f"t from {times[0]:.3g} to {times[-1]:.3g}; argmin of f_t {argmins} "
        f"(argmin of f {_argmin(f):+.3f})",
    )


def _argmin(values: np.ndarray) -> float:
    return float(_X[np.argmin(values)])


# ---------------------------------------------------------------------------- (c) flat minima
# shifting the landscape mimics a test loss that differs a little from the training loss
_SHIFT = 0.2
_START = -0.7


def _esgd_finals(num_runs: int, seed: int) -> tuple[np.ndarray, float]:
    """Entropy-SGD at ``noise = 1`` (``beta = 1``), ``gamma`` scoped from 0.5 to 10.

    At ``beta = 1`` and ``t = 1 / 0.5 = 2`` the local entropy has one basin, on the wide side,
    so the anchors leave the start; the coupling then grows to 10 (``t = 0.1``) and they settle.
    ``inner_lr = 0.02`` keeps the Langevin step stable in the narrow well (``f'' ~ 90``,
    ``lr' f'' < 2``); ``alpha = 0.95`` averages ~20 of the 50 inner iterates.
    """
    gamma0 = 0.5
    finals = simulate.entropy_sgd_runs(
        landscapes.narrow_and_wide,
        _START,
        num_runs=num_runs,
        num_outer_steps=100,
        num_inner_steps=50,
        lr=0.5,
        inner_lr=0.02,
        gamma_schedule=Schedule(gamma0, 0.05, 10.0),
        noise=1.0,
        alpha=0.95,
        grad_noise=1.0,
        seed=seed,
    )
    return finals, 1.0 / gamma0


def _stats(finals: np.ndarray) -> tuple[float, float, float]:
    f = landscapes.narrow_and_wide
    wide = float(np.mean(finals > 0.0))
    return float(np.mean(f(finals))), float(np.mean(f(finals - _SHIFT))), wide


def figure_minima(out: Path, seed: int) -> Written:
    """Many SGD and Entropy-SGD runs from one point between a narrow deep and a wide minimum."""
    num_runs = 1000
    # lr * grad_noise^2 / 2 = 0.005 is far too cold to climb out of the narrow well
    sgd = simulate.sgd_runs(
        landscapes.narrow_and_wide,
        _START,
        num_runs=num_runs,
        num_steps=5000,  # the same number of gradients as Entropy-SGD's 100 x 50
        lr=0.01,
        grad_noise=1.0,
        seed=seed,
    )
    esgd, t0 = _esgd_finals(num_runs, seed)
    fig = Figure(figsize=(11, 4.2))
    left, right = fig.subplots(1, 2)
    _plot_on(left, landscapes.narrow_and_wide(_X), color="k", lw=2, label="f (training loss)")
    shifted = landscapes.narrow_and_wide(_X - _SHIFT)
    _plot_on(left, shifted, color="gray", ls=":", label="f shifted (test)")
    f_t = _smoothed(landscapes.narrow_and_wide(_GRID), t0)
    _plot_on(left, f_t, label=f"$f_t$, t = {t0:g}, β = 1 (start of scoping)")
    left.axvline(_START, color="g", ls="--", label="start")
    left.set_xlabel("x")
    left.legend(fontsize=8)
    bins = np.linspace(-1.6, 1.8, 69)
    right.hist(sgd, bins=bins, alpha=0.6, label="SGD")
    right.hist(esgd, bins=bins, alpha=0.6, label="Entropy-SGD")
    right.set_xlabel("final position")
    right.set_ylabel(f"runs (of {num_runs})")
    right.legend(fontsize=8)
    s_train, s_test, s_wide = _stats(sgd)
    e_train, e_test, e_wide = _stats(esgd)
    right.set_title(
        f"E f: SGD {s_train:.2f}, ESGD {e_train:.2f}; "
        f"E f shifted: SGD {s_test:.2f}, ESGD {e_test:.2f}",
        fontsize=9,
    )
    path = _save(fig, out, "flat_minima.png")
    return Written(
        path,
        f"E[f] SGD {s_train:.3f} vs Entropy-SGD {e_train:.3f}; E[f shifted by {_SHIFT}] SGD "
        f"{s_test:.3f} vs Entropy-SGD {e_test:.3f}; in the wide minimum SGD {s_wide:.0%} vs "
        f"Entropy-SGD {e_wide:.0%}",
    )


# ---------------------------------------------------------------------------- (d) metastability
_BARRIER = 1.0


def _survival(exit_times: np.ndarray, times: np.ndarray) -> np.ndarray:
    return np.mean(exit_times[None, :] > times[:, None], axis=1)


def figure_metastability(out: Path, seed: int) -> Written:
    """Langevin on a double well from the wrong well: exit time ~ exp(barrier / T)."""
    temperatures = (0.5, 0.4, 0.33, 0.25)
    dt, num_steps = 0.01, 20_000
    horizon = dt * num_steps
    grad: Callable[[np.ndarray], np.ndarray] = landscapes.double_well_grad
    fig = Figure(figsize=(11, 4.2))
    left, right = fig.subplots(1, 2)
    times = np.linspace(0.0, horizon, 401)
    means = []
    for i, T in enumerate(temperatures):
        exit_times = simulate.langevin_exit_times(
            grad, -1.0, 1.0, temperature=T, num_runs=1000, dt=dt, num_steps=num_steps, seed=seed + i
        )
        means.append(1.0 / simulate.exit_rate(exit_times, horizon))
        left.plot(times, _survival(exit_times, times), label=f"T = {T}")
    left.set_xlabel("time")
    left.set_ylabel("fraction still in the starting well")
    left.set_title(f"double well, barrier {_BARRIER:g}: Langevin from the wrong well")
    left.legend(fontsize=8)
    inverse = 1.0 / np.asarray(temperatures)
    slope, _ = np.polyfit(inverse, np.log(means), 1)
    kramers = [
        simulate.kramers_time(_BARRIER, 8.0 * _BARRIER, -4.0 * _BARRIER, T) for T in temperatures
    ]
    right.semilogy(inverse, means, "o", label=f"measured (slope {slope:.2f})")
    right.semilogy(inverse, kramers, "-", label="Kramers $2\\pi/\\sqrt{32}\\, e^{1/T}$")
    right.set_xlabel("1 / T")
    right.set_ylabel("mean exit time")
    right.set_title("Arrhenius: log exit time grows like barrier / T")
    right.legend(fontsize=8)
    path = _save(fig, out, "metastability.png")
    ratios = ", ".join(f"T={T}: {m / k:.2f}" for T, m, k in zip(temperatures, means, kramers))
    return Written(
        path,
        f"fitted slope of log exit time vs 1/T {slope:.2f} (barrier {_BARRIER:g}); "
        f"measured / Kramers {ratios}",
    )


def write_all(out: Path, seed: int = 0) -> list[Written]:
    """Every figure into ``out`` (which must exist and be writable)."""
    return [
        figure_landscape(out),
        figure_scoping(out),
        figure_minima(out, seed),
        figure_metastability(out, seed),
    ]
