r"""Flatness of a solution ``w``: the curvature of the training loss there, and its local entropy.

The loss is ``f(w) = (1/N) sum_i l(model(x_i; w), y_i)`` on a *fixed* sample of ``N`` training
points (chunks of it, for memory), so that every number below is a property of one function of
the weights. The model is held in eval mode while it is measured: dropout off, BatchNorm on its
running statistics (for the reference, the ones recomputed by the final evaluation's dry feed).
In train mode dropout would make ``f`` random and BatchNorm would make it depend on how the sample
is cut into chunks; neither would be the loss whose Hessian we mean.

All parameters that require gradients are one vector ``w`` of ``d`` numbers. What is measured:

- the top eigenvalue of the Hessian ``H = nabla^2 f(w)`` by power iteration on Hessian-vector
  products ``H v = nabla_w (nabla_w f . v)`` (double backward);
- Hutchinson's trace ``tr H = E[v^T H v]`` with Rademacher probes ``v_j = +-1``, and its
  standard error;
- the rise ``f(w + delta) - f(w)`` under random perturbations ``delta = r |w| xi / |xi|``,
  ``xi ~ N(0, I_d)``, for a few relative radii ``r`` (one direction for the whole vector, so that
  ``E[rise] ~ r^2 |w|^2 tr(H) / (2 d)``); the weights are restored bit for bit afterwards;
- the local entropy of Entropy-SGD / Deep Relaxation at ``x = w``, with coupling ``gamma`` and
  inverse temperature ``beta = 1 / noise^2`` (the inner loop's ``y <- y - eta' g + noise
  sqrt(2 eta') xi`` samples ``exp(-beta U)`` for ``U = f(y) + gamma |x - y|^2 / 2``)::

      f_gamma(x) = -(1/beta) log( (beta gamma / 2 pi)^{d/2}
                                  int exp(-beta f(y) - beta gamma |x - y|^2 / 2) dy )

  with its Gibbs mean ``<y>``, the gradient ``grad f_gamma(x) = gamma (x - <y>)``, the Gibbs mean
  loss ``E[f(y)]``, and ``f_gamma(x)`` itself by thermodynamic integration (:func:`local_entropy`).

Everything is deterministic for a seed: the random vectors come from a CPU ``torch.Generator``
(the same draws on every device). Pass a float64 model and inputs for exact checks.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

Batches = Sequence[tuple[Tensor, Tensor]]
LossFn = Callable[[Tensor, Tensor], Tensor]  # (model output, targets) -> mean over the chunk


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

    def __init__(
        self, model: nn.Module, batches: Batches, loss_fn: LossFn = nn.functional.cross_entropy
    ) -> None:
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
        total, grad = (
            0.0,
            torch.zeros(self.dim, dtype=self.params[0].dtype, device=self.params[0].device),
        )
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


def _generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _normal(loss: TrainingLoss, generator: torch.Generator) -> Tensor:
    # drawn on the CPU and moved: the same vector on every device for one seed
    p = loss.params[0]
    return torch.randn(loss.dim, generator=generator, dtype=torch.float64).to(p.device, p.dtype)


def _rademacher(loss: TrainingLoss, generator: torch.Generator) -> Tensor:
    p = loss.params[0]
    signs = torch.randint(0, 2, (loss.dim,), generator=generator, dtype=torch.int64) * 2 - 1
    return signs.to(p.device, p.dtype)


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
    start = _normal(loss, _generator(seed))
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
    generator = _generator(seed)
    samples = []
    for _ in range(probes):
        v = _rademacher(loss, generator)
        samples.append(float(torch.dot(v, loss.hvp(v))))
    return Trace(float(np.mean(samples)), _stderr(samples), probes)


def _stderr(samples: Sequence[float]) -> float:
    return float(np.std(samples, ddof=1) / math.sqrt(len(samples))) if len(samples) > 1 else 0.0


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
    generator = _generator(seed)
    w = loss.get()
    base, size = loss.value(), float(w.norm())
    rises = []
    try:
        for radius in radii:
            samples = []
            for _ in range(draws):
                xi = _normal(loss, generator)
                loss.set(w + (radius * size / xi.norm()) * xi)
                samples.append(loss.value() - base)
            rises.append(Rise(radius, float(np.mean(samples)), _stderr(samples), max(samples)))
    finally:
        loss.set(w)
    return rises


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
                y = y + scale * _normal(loss, generator)
    finally:
        loss.set(x)
    means = [float(np.mean(b)) for b in np.array_split(losses, min(NUM_BATCH_MEANS, kept))]
    return Chain(total_y / kept, float(np.mean(losses)), _stderr(means))


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
    generator = _generator(seed)
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


def measure(
    model: nn.Module,
    batches: Batches,
    *,
    loss_fn: LossFn = nn.functional.cross_entropy,
    iterations: int = 100,
    tolerance: float = 1e-3,
    probes: int = 32,
    radii: Sequence[float] = (0.01, 0.05, 0.1),
    draws: int = 8,
    gamma: float = 1.0,
    noise: float = 0.01,
    num_inner_steps: int = 200,
    num_nodes: int = 4,
    inner_lr: float | None = None,
    seed: int = 0,
) -> dict[str, Any]:
    """All the measures at the model's weights, as a JSON-ready dict; the model in eval mode
    while it is measured, its weights and modes as they were afterwards. ``num_inner_steps = 0``
    leaves out the local entropy; ``inner_lr = None`` takes :func:`default_inner_lr`."""
    with eval_mode(model):
        loss = TrainingLoss(model, batches, loss_fn)
        top = top_eigenvalue(loss, iterations=iterations, tolerance=tolerance, seed=seed)
        trace = hessian_trace(loss, probes=probes, seed=seed + 1)
        rises = perturbation_rises(loss, radii, draws=draws, seed=seed + 2)
        result: dict[str, Any] = {
            "num_samples": loss.num_samples,
            "num_parameters": loss.dim,
            "loss": loss.value(),
            "weight_norm": float(loss.get().norm()),
            "top_eigenvalue": top.value,
            "top_eigenvalue_iterations": top.iterations,
            "top_eigenvalue_converged": top.is_converged,
            "trace": trace.value,
            "trace_stderr": trace.stderr,
            "trace_probes": trace.probes,
            "rises": [asdict(r) for r in rises],
        }
        if num_inner_steps > 0:
            lr = inner_lr if inner_lr is not None else default_inner_lr(top.value, gamma)
            entropy = local_entropy(
                loss,
                gamma=gamma,
                noise=noise,
                inner_lr=lr,
                num_inner_steps=num_inner_steps,
                num_nodes=num_nodes,
                seed=seed + 3,
            )
            result["local_entropy"] = asdict(entropy)
    return result
