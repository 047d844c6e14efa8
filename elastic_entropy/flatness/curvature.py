"""Curvature at ``w``: the Hessian's top eigenvalue, its trace, and the loss's rise under random
perturbations."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from elastic_entropy.flatness.loss import (
    TrainingLoss,
    normal_vector,
    rademacher_vector,
    seeded_generator,
    standard_error,
)


@dataclass
class Eigenvalue:
    value: float
    iterations: int  # Hessian-vector products used
    is_converged: bool


def _power(
    hvp: Callable[[Tensor], Tensor], v: Tensor, iterations: int, tolerance: float
) -> Eigenvalue:
    """Power iteration ``v <- H v / |H v|`` with the Rayleigh quotient ``v^T H v``; stops when it
    changes by at most ``tolerance`` times its size. Converges to the eigenvalue of largest
    magnitude (at the rate ``(|lambda_2| / |lambda_1|)^{2k}``)."""
    v = v / v.norm()
    previous = math.nan
    for k in range(1, iterations + 1):
        hv = hvp(v)
        value = float(torch.dot(v, hv))
        norm = float(hv.norm())
        if norm == 0.0:  # v in the null space: H v = 0
            return Eigenvalue(value, k, True)
        if abs(value - previous) <= tolerance * abs(value):
            return Eigenvalue(value, k, True)
        previous, v = value, hv / norm
    return Eigenvalue(previous, iterations, False)


def top_eigenvalue(
    loss: TrainingLoss, *, iterations: int = 100, tolerance: float = 1e-3, seed: int = 0
) -> Eigenvalue:
    """``lambda_max(H)`` by power iteration from a Gaussian start (seeded). When the eigenvalue of
    largest magnitude ``mu`` is negative (a saddle), a second run on ``H - mu I``, whose
    eigenvalues ``lambda_i - mu >= 0`` are largest at ``lambda_max``, gives the top one."""
    start = normal_vector(loss, seeded_generator(seed))
    first = _power(loss.hvp, start, iterations, tolerance)
    if first.value >= 0.0:
        return first
    mu = first.value
    shifted = _power(lambda v: loss.hvp(v) - mu * v, start, iterations, tolerance)
    return Eigenvalue(
        shifted.value + mu, first.iterations + shifted.iterations, shifted.is_converged
    )


@dataclass
class Trace:
    value: float
    stderr: float  # std of v^T H v over the probes / sqrt(probes)
    probes: int


def hessian_trace(loss: TrainingLoss, *, probes: int = 32, seed: int = 0) -> Trace:
    """Hutchinson: ``tr H = E[v^T H v]`` for ``v`` with independent entries ``+-1``, the mean over
    ``probes`` draws. Exact for a diagonal ``H`` (``v^T H v = sum_i H_ii v_i^2``); otherwise the
    variance of one probe is ``2 sum_{i != j} H_ij^2``."""
    generator = seeded_generator(seed)
    samples = []
    for _ in range(probes):
        v = rademacher_vector(loss, generator)
        samples.append(float(torch.dot(v, loss.hvp(v))))
    return Trace(float(np.mean(samples)), standard_error(samples), probes)


@dataclass
class Rise:
    radius: float
    mean: float  # f(w + delta) - f(w), mean over the draws
    stderr: float
    max: float


def perturbation_rises(
    loss: TrainingLoss, radii: Sequence[float], *, draws: int = 8, seed: int = 0
) -> list[Rise]:
    """``f(w + delta) - f(w)`` for ``delta = r |w| xi / |xi|``, ``xi ~ N(0, I)``: one random
    direction for the whole vector, of length ``r |w|``. (Per-tensor radii, as in filter-
    normalised plots, would weigh small tensors such as biases more; the whole vector keeps
    ``E[rise] = r^2 |w|^2 tr(H) / (2 d) + O(r^3)``, which the tests hold to a quadratic.) The
    parameters are restored from a copy, bit for bit, even when the loss raises."""
    generator = seeded_generator(seed)
    w = loss.get()
    base, size = loss.value(), float(w.norm())
    rises = []
    try:
        for radius in radii:
            samples = []
            for _ in range(draws):
                xi = normal_vector(loss, generator)
                loss.set(w + (radius * size / xi.norm()) * xi)
                samples.append(loss.value() - base)
            mean = float(np.mean(samples))
            rises.append(Rise(radius, mean, standard_error(samples), max(samples)))
    finally:
        loss.set(w)
    return rises
