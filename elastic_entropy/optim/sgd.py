"""SGD as the ``n = 1, L = 0, rho = 0`` corner of Parle: the baseline on the same machinery."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from torch import Tensor

from elastic_entropy.comm.base import Communicator
from elastic_entropy.optim.parle import Parle


class SGD(Parle):
    r"""Nesterov SGD, step for step ``torch.optim.SGD(lr, momentum, nesterov, weight_decay)``.

    It exists so that the baseline runs through the same trainer, flat buffers and reference as
    Parle (a parity test holds it to ``torch.optim.SGD``). Several replicas are independent runs.

    Example::

        opt = SGD(model.parameters(), lr=0.1, momentum=0.9)
    """

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]],
        lr: float,
        *,
        momentum: float = 0.9,
        nesterov: bool = True,
        weight_decay: float = 0.0,
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
            rho=0.0,
            weight_decay=weight_decay,
            comm=comm,
            same_init=same_init,
            fused=fused,
        )
