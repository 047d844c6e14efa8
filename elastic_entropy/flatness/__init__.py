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

from collections.abc import Sequence
from dataclasses import asdict
from typing import Any

from torch import nn

from elastic_entropy.flatness.curvature import (
    Eigenvalue,
    Rise,
    Trace,
    hessian_trace,
    perturbation_rises,
    top_eigenvalue,
)
from elastic_entropy.flatness.entropy import (
    Chain,
    LocalEntropy,
    default_inner_lr,
    gibbs_chain,
    local_entropy,
)
from elastic_entropy.flatness.loss import (
    Batches,
    LossFn,
    TrainingLoss,
    cross_entropy,
    eval_mode,
    fixed_batches,
)

__all__ = [
    "Batches",
    "Chain",
    "Eigenvalue",
    "LocalEntropy",
    "LossFn",
    "Rise",
    "Trace",
    "TrainingLoss",
    "cross_entropy",
    "default_inner_lr",
    "eval_mode",
    "fixed_batches",
    "gibbs_chain",
    "hessian_trace",
    "local_entropy",
    "measure",
    "perturbation_rises",
    "top_eigenvalue",
]


def measure(
    model: nn.Module,
    batches: Batches,
    *,
    loss_fn: LossFn = cross_entropy,
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
