"""Elastic-SGD: Parle without the inner loop (``num_inner_steps = 0``)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from torch import Tensor

from elastic_entropy.comm.base import Communicator
from elastic_entropy.optim.parle import Parle
from elastic_entropy.scoping import Schedule


class ElasticSGD(Parle):
    r"""Synchronous Elastic-SGD (EASGD, Zhang et al. 2015, with the reference equal to the mean).

    Every minibatch, every replica takes a Nesterov step on
    ``d = grad f_B(x) + wd x + rho_t (x - mean_a x^a)``: one all-reduce per step, and ``rho``
    grows under scoping so that the replicas collapse onto their average.

    Example::

        opt = ElasticSGD(model.parameters(), lr=0.1, rho=1.0, comm=DistributedCommunicator())
    """

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]],
        lr: float,
        *,
        momentum: float = 0.9,
        nesterov: bool = True,
        rho: float = 1.0,
        weight_decay: float = 0.0,
        rho_schedule: Schedule | None = None,
        comm: Communicator | None = None,
        same_init: bool = True,
        fused: bool | None = None,
    ) -> None:
        super().__init__(
            params,
            lr,
            momentum=momentum,
            nesterov=nesterov,
            num_inner_steps=0,
            gamma=0.0,
            rho=rho,
            weight_decay=weight_decay,
            rho_schedule=rho_schedule,
            comm=comm,
            same_init=same_init,
            fused=fused,
        )
