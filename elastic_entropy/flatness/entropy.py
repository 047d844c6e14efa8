r"""The local entropy at ``x = w``: Langevin chains of the inner loop's Gibbs measure and the
thermodynamic integration of ``f_gamma``."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

from elastic_entropy.flatness.loss import (
    TrainingLoss,
    normal_vector,
    seeded_generator,
    standard_error,
)


@dataclass
class Chain:
    mean_y: Tensor  # <y> over the kept half
    mean_loss: float  # E[f(y)] over the kept half
    loss_stderr: float  # batch means (10 batches) of f(y)


NUM_BATCH_MEANS = 10


def gibbs_chain(
    loss: TrainingLoss,
    x: Tensor,
    *,
    strength: float,
    gamma: float,
    noise: float,
    inner_lr: float,
    num_steps: int,
    generator: torch.Generator,
) -> Chain:
    """Langevin samples of ``exp(-beta U)``, ``U(y) = strength f(y) + gamma |x - y|^2 / 2``,
    ``beta = 1 / noise^2``: the inner loop's step without its momentum,
    ``y <- y - eta' grad U(y) + noise sqrt(2 eta') xi``, from ``y = x``; the first half is burn-in,
    the second half is averaged (uniformly, not the inner loop's exponential average, so that its
    error is the chain's). On a quadratic the chain's law is Gaussian with the exact mean and, per
    eigenvalue ``k`` of ``nabla^2 U``, the variance ``noise^2 / (k (1 - eta' k / 2))``."""
    if num_steps < 2:
        raise ValueError(f"Invalid num_steps: {num_steps} (must be >= 2: half burn-in)")
    y, kept = x.clone(), num_steps - num_steps // 2
    scale = noise * math.sqrt(2.0 * inner_lr)
    total_y, losses = torch.zeros_like(x), []
    try:
        for k in range(num_steps):
            loss.set(y)
            value, grad = loss.value_and_grad()
            if k >= num_steps - kept:  # f and y of the same state of the chain
                losses.append(value)
                total_y += y
            y = y - inner_lr * (strength * grad + gamma * (y - x))
            if scale > 0.0:
                y = y + scale * normal_vector(loss, generator)
    finally:
        loss.set(x)
    means = [float(np.mean(b)) for b in np.array_split(losses, min(NUM_BATCH_MEANS, kept))]
    return Chain(total_y / kept, float(np.mean(losses)), standard_error(means))


@dataclass
class LocalEntropy:
    gamma: float
    noise: float
    inner_lr: float
    num_inner_steps: int
    loss: float  # f(x)
    gibbs_loss: float  # E[f(y)] under exp(-beta f(y) - beta gamma |x - y|^2 / 2)
    gibbs_loss_stderr: float
    grad_norm: float  # |grad f_gamma(x)| = gamma |x - <y>|
    local_entropy: float  # f_gamma(x), thermodynamic integration
    local_entropy_stderr: float  # its sampling error (the quadrature's is not included)
    # 1 / (inner_lr gamma): the steps the slowest direction (curvature gamma) takes to relax;
    # the averaged half of a chain should span several
    relaxation_steps: float = math.nan
    nodes: list[float] = field(default_factory=list)
    node_losses: list[float] = field(default_factory=list)  # E_lambda[f] at the nodes


def local_entropy(
    loss: TrainingLoss,
    *,
    gamma: float,
    noise: float,
    inner_lr: float,
    num_inner_steps: int,
    num_nodes: int = 4,
    seed: int = 0,
) -> LocalEntropy:
    r"""``f_gamma`` at ``x = w`` and the Gibbs mean the inner loop estimates.

    Thermodynamic integration over the strength ``lambda`` of the loss: with
    ``U_lambda = lambda f(y) + gamma |x - y|^2 / 2`` and
    ``F(lambda) = -(1/beta) log((beta gamma / 2 pi)^{d/2} int exp(-beta U_lambda) dy)``,
    ``F(0) = 0`` (a normalised Gaussian), ``F(1) = f_gamma(x)`` and
    ``F'(lambda) = E_lambda[f(y)]``::

        f_gamma(x) = int_0^1 E_lambda[f(y)] d lambda ~ sum_k w_k E_{lambda_k}[f(y)]

    with Gauss-Legendre nodes ``lambda_k`` on [0, 1], one chain each, and one chain more at
    ``lambda = 1`` for ``<y>``, ``gamma |x - <y>|`` and ``E[f(y)]``. For ``noise = 0`` (``beta =
    inf``) the chains are gradient descent to the proximal points and the same integral gives the
    Moreau envelope ``min_y f(y) + gamma |x - y|^2 / 2`` (the envelope theorem). The quadrature is
    exact when ``E_lambda[f]`` is a polynomial of degree ``<= 2 num_nodes - 1``; on a quadratic
    ``f = (w - c)^T A (w - c) / 2`` it is the rational function
    ``sum_i a_i noise^2 / (2 (lambda a_i + gamma))
    + a_i gamma^2 delta_i^2 / (2 (lambda a_i + gamma)^2)``
    whose poles ``-gamma / a_i`` lie off [0, 1], and the result tends to the closed form
    ``delta^T A (I + A / gamma)^{-1} delta / 2 + (noise^2 / 2) sum_i log(1 + a_i / gamma)``
    (``delta = x - c`` in the eigenbasis of ``A``) geometrically in ``num_nodes``. The chains'
    own bias is of order ``inner_lr`` times the curvature (see :func:`gibbs_chain`).
    """
    generator = seeded_generator(seed)
    x = loss.get()
    nodes, weights = np.polynomial.legendre.leggauss(num_nodes)
    nodes, weights = (nodes + 1.0) / 2.0, weights / 2.0

    def chain(strength: float) -> Chain:
        return gibbs_chain(
            loss,
            x,
            strength=strength,
            gamma=gamma,
            noise=noise,
            inner_lr=inner_lr,
            num_steps=num_inner_steps,
            generator=generator,
        )

    at_nodes = [chain(float(s)) for s in nodes]
    full = chain(1.0)
    estimate = float(sum(w * c.mean_loss for w, c in zip(weights, at_nodes)))
    stderr = math.sqrt(sum((w * c.loss_stderr) ** 2 for w, c in zip(weights, at_nodes)))
    return LocalEntropy(
        gamma=gamma,
        noise=noise,
        inner_lr=inner_lr,
        num_inner_steps=num_inner_steps,
        loss=loss.value(),
        gibbs_loss=full.mean_loss,
        gibbs_loss_stderr=full.loss_stderr,
        grad_norm=gamma * float((x - full.mean_y).norm()),
        local_entropy=estimate,
        local_entropy_stderr=stderr,
        relaxation_steps=1.0 / (inner_lr * gamma),
        nodes=[float(s) for s in nodes],
        node_losses=[c.mean_loss for c in at_nodes],
    )


# the chain's default step: stable (eta' k < 2) with room, its variance bias at most 1/(1 - 0.1)
# in the stiffest direction, which has curvature about lambda_max + gamma at x
STEP_FRACTION = 0.2


def default_inner_lr(top: float, gamma: float) -> float:
    """``STEP_FRACTION / (max(lambda_max, 0) + gamma)``."""
    return STEP_FRACTION / (max(top, 0.0) + gamma)
