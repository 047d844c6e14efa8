"""Data-parallel SGD: every minibatch, the gradient averaged over all replicas (the baseline)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor

from elastic_entropy.comm.base import Communicator
from elastic_entropy.optim import functional as F
from elastic_entropy.optim.parle import DivergedError, Parle


class DataParallelSGD(Parle):
    r"""Synchronous data-parallel SGD: what ``DistributedDataParallel`` + ``torch.optim.SGD``
    compute, on the same flat buffers and communicator as Parle.

    Every call all-reduces the whole gradient (one collective of one flat buffer, the traffic
    Parle is compared against), then takes the same Nesterov step on every replica, so that the
    replicas never differ: ``n`` replicas with batch ``B`` each are SGD with batch ``n B``.

    Example::

        opt = DataParallelSGD(model.parameters(), lr=0.1, comm=DistributedCommunicator())
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
        )

    def _elastic_step(self) -> None:
        for storage in self._storages.values():
            mean = self.comm.mean(storage.grad)
            # one shared gradient: if it is not finite, every replica has diverged alike
            if not bool(torch.isfinite(mean.sum(dtype=torch.float64))):
                raise DivergedError(
                    f"the averaged gradient is not finite at step {self.num_steps + 1}; lower lr"
                )
            storage.grad.copy_(mean.expand_as(storage.grad))
        for segment in self._segments:
            storage, cols = self._views(segment)
            group = self.param_groups[segment.group_index]
            F.elastic_step(
                [storage.live[:, cols]],
                [storage.grad[:, cols]],
                [storage.state["outer_momentum"][:, cols]],
                [None],
                [storage.scratch[:, cols]],
                lr=group["lr"],
                momentum=group["momentum"],
                nesterov=group["nesterov"],
                weight_decay=group["weight_decay"],
                rho=0.0,
            )
