"""Entropy-SGD: Parle without the elastic coupling (``rho = 0``)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from torch import Tensor

from elastic_entropy.comm.base import Communicator
from elastic_entropy.defaults import NUM_INNER_STEPS
from elastic_entropy.optim.parle import Parle
from elastic_entropy.scoping import Schedule


class EntropySGD(Parle):
    r"""Entropy-SGD (Chaudhari et al., ICLR 2017): gradient descent on the local entropy.

    The inner loop of :class:`Parle` (``L`` Langevin steps pulled towards the anchor by ``gamma``,
    averaged into ``z``) estimates ``<y>`` under ``exp(-f(y) - gamma |x - y|^2 / 2)``, so that
    ``x - z`` is ``grad f_gamma(x) / gamma``; the outer step is Nesterov on it. Several replicas
    (``comm``) are independent: without ``rho`` nothing couples them.

    Example::

        opt = EntropySGD(model.parameters(), lr=1.0, inner_lr=0.1, num_inner_steps=20, noise=1e-4)
    """

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]],
        lr: float,
        *,
        inner_lr: float | None = None,
        momentum: float = 0.9,
        nesterov: bool = True,
        num_inner_steps: int = NUM_INNER_STEPS,
        gamma: float = 0.03,
        alpha: float = 0.75,
        noise: float = 0.0,
        weight_decay: float = 0.0,
        gamma_schedule: Schedule | None = None,
        comm: Communicator | None = None,
        seed: int | None = None,
    ) -> None:
        if num_inner_steps < 1:
            raise ValueError(
                f"Invalid num_inner_steps value: {num_inner_steps} (Entropy-SGD needs an inner "
                "loop, >= 1; use SGD for none)"
            )
        super().__init__(
            params,
            lr,
            inner_lr=inner_lr,
            momentum=momentum,
            nesterov=nesterov,
            num_inner_steps=num_inner_steps,
            gamma=gamma,
            rho=0.0,
            alpha=alpha,
            noise=noise,
            weight_decay=weight_decay,
            gamma_schedule=gamma_schedule,
            comm=comm,
            seed=seed,
        )
