"""Scoping schedules for the couplings ``gamma`` (inner, proximal) and ``rho`` (elastic).

Couplings are stored as *strengths that grow*: ``gamma_t = min(initial * (1 + rate)^t, max_value)``
with ``t`` counted in outer steps. In Deep Relaxation units the variance (time of the PDE) is
``1 / gamma``, so a growing coupling is a shrinking smoothing: the relaxed problem returns to the
original one as training goes on.

The authors' default growth (``DistESGD`` in pratikac/distributed-ensembles, ``parle_mpi.py``) is
``rate = 0.5 / nb`` per outer step, with ``nb`` the minibatches in ONE PASS over a replica's own
data (its fraction or shard, under ``data.policy=frac`` or ``shard``): their training epoch loops
``nb`` outer steps of ``L`` minibatches each, so the couplings grow by about ``e^0.5`` per ``L``
passes over the data, not per pass. :func:`papers_rate` is that rate; the app takes it when
``scoping.gamma_rate`` / ``rho_rate`` are null (``scoping.rate_period=nb_outer_steps``, the
default; ``pass`` is the rate of runs made before that key: ``e^0.5`` per pass, ``L`` times faster).

The original PyTorch port of Entropy-SGD never advanced its counter, so its scoping was a silent
no-op; here the optimizer calls :meth:`Schedule.step` once per outer step and the tests check it.
"""

from __future__ import annotations

import math
from typing import Any


class Schedule:
    """``value(t) = min(initial * (1 + rate)^t, max_value)``; ``rate = 0`` is a constant."""

    def __init__(self, initial: float, rate: float = 0.0, max_value: float = math.inf) -> None:
        if not math.isfinite(initial) or initial < 0.0:
            raise ValueError(f"Invalid schedule initial value: {initial} (must be finite and >= 0)")
        if not math.isfinite(rate) or rate < 0.0:
            raise ValueError(f"Invalid schedule rate: {rate} (must be finite and >= 0)")
        if math.isnan(max_value) or max_value < initial:
            raise ValueError(
                f"Invalid schedule cap: max_value={max_value} is below initial={initial}; "
                "raise the cap or lower the initial value"
            )
        self.initial = float(initial)
        self.rate = float(rate)
        self.max_value = float(max_value)
        self.t = 0

    @property
    def value(self) -> float:
        """The coupling at the current outer step ``t``."""
        if self.rate == 0.0 or self.initial == 0.0:
            return min(self.initial, self.max_value)
        # log-space keeps (1 + rate)^t finite for any t before the cap applies
        log_value = math.log(self.initial) + self.t * math.log1p(self.rate)
        if log_value >= math.log(self.max_value):
            return self.max_value
        return math.exp(log_value) if log_value < 709.0 else math.inf  # exp overflows past 709

    @property
    def upper_bound(self) -> float:
        """The largest value the schedule will ever reach (``inf`` when it grows uncapped)."""
        if self.rate == 0.0 or self.initial == 0.0:
            return min(self.initial, self.max_value)
        return self.max_value

    def step(self) -> None:
        """Advance by one outer step."""
        self.t += 1

    def state_dict(self) -> dict[str, Any]:
        return {
            "initial": self.initial,
            "rate": self.rate,
            "max_value": self.max_value,
            "t": self.t,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for key in ("initial", "rate", "max_value"):
            if float(state[key]) != getattr(self, key):
                raise ValueError(
                    f"Schedule mismatch on load: saved {key}={state[key]} but this schedule has "
                    f"{getattr(self, key)}; build the schedule with the saved settings"
                )
        self.t = int(state["t"])

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(initial={self.initial}, rate={self.rate}, "
            f"max_value={self.max_value}, t={self.t})"
        )


def constant(value: float) -> Schedule:
    """A coupling that does not change."""
    return Schedule(value)


def exponential(initial: float, rate: float, max_value: float = math.inf) -> Schedule:
    """The papers' scoping: grow by ``(1 + rate)`` per outer step, capped at ``max_value``."""
    return Schedule(initial, rate, max_value)


def papers_rate(nb: int) -> float:
    """The authors' growth rate ``0.5 / nb`` per outer step, ``nb`` the minibatches in one pass over
    a replica's own data: a factor of about ``e^0.5`` every ``nb`` outer steps (their epoch)."""
    if nb < 1:
        raise ValueError(f"Invalid nb: {nb} (minibatches per pass over a replica's data, >= 1)")
    return 0.5 / nb
