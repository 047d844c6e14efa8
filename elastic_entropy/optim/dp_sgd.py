"""Data-parallel SGD: every minibatch, the gradient averaged over all replicas (the baseline)."""

from __future__ import annotations

import torch
from torch import Tensor

from elastic_entropy.optim.consensus import DivergedError
from elastic_entropy.optim.sgd import SGD


def require_finite(grad: Tensor, step: int) -> None:
    # one shared gradient: if it is not finite, every replica has diverged alike
    if not bool(torch.isfinite(grad.sum(dtype=torch.float64))):
        raise DivergedError(f"the averaged gradient is not finite at step {step}; lower lr")


class DataParallelSGD(SGD):
    r"""Synchronous data-parallel SGD: what ``DistributedDataParallel`` + ``torch.optim.SGD``
    compute, on the same flat buffers and communicator as Parle (same arguments as :class:`SGD`).

    Every call all-reduces the whole gradient (one collective of one flat buffer, the traffic
    Parle is compared against), then takes the same Nesterov step on every replica, so that the
    replicas never differ: ``n`` replicas with batch ``B`` each are SGD with batch ``n B``.

    Example::

        opt = DataParallelSGD(model.parameters(), lr=0.1, comm=DistributedCommunicator())
    """

    def exchange(self) -> None:
        """All-reduce the gradients, then every replica takes the same step."""
        for grad in self.buffers.flat("grad").values():
            mean = self.comm.mean(grad)
            require_finite(mean, self.num_steps + 1)
            grad.copy_(mean.expand_as(grad))
        self.elastic_update()


class SGDAfterDDP(SGD):
    r"""The optimizer half of ``algorithm=ddp``: torch's ``DistributedDataParallel`` has averaged
    the gradients during ``backward()``; this takes ``torch.optim.SGD``'s step on them (the
    parity-tested SGD corner) with no collective of its own, and stops on a non-finite gradient
    as :class:`DataParallelSGD` does.
    """

    def exchange(self) -> None:
        """No collective: DDP has averaged the gradients already."""
        for grad in self.buffers.flat("grad").values():
            require_finite(grad, self.num_steps + 1)
        self.elastic_update()
