"""Data-parallel SGD: every minibatch, the gradient averaged over all replicas (the baseline)."""

from __future__ import annotations

import torch

from elastic_entropy.optim.parle import DivergedError
from elastic_entropy.optim.sgd import SGD


class DataParallelSGD(SGD):
    r"""Synchronous data-parallel SGD: what ``DistributedDataParallel`` + ``torch.optim.SGD``
    compute, on the same flat buffers and communicator as Parle (same arguments as :class:`SGD`).

    Every call all-reduces the whole gradient (one collective of one flat buffer, the traffic
    Parle is compared against), then takes the same Nesterov step on every replica, so that the
    replicas never differ: ``n`` replicas with batch ``B`` each are SGD with batch ``n B``.

    Example::

        opt = DataParallelSGD(model.parameters(), lr=0.1, comm=DistributedCommunicator())
    """

    def _elastic_step(self) -> None:
        for storage in self._storages.values():
            mean = self.comm.mean(storage.grad)
            # one shared gradient: if it is not finite, every replica has diverged alike
            if not bool(torch.isfinite(mean.sum(dtype=torch.float64))):
                raise DivergedError(
                    f"the averaged gradient is not finite at step {self.num_steps + 1}; lower lr"
                )
            storage.grad.copy_(mean.expand_as(storage.grad))
        self._elastic_update(None, 0.0)


class SGDAfterDDP(SGD):
    r"""The optimizer half of ``algorithm=ddp``: torch's ``DistributedDataParallel`` has averaged
    the gradients during ``backward()``; this takes ``torch.optim.SGD``'s step on them (the
    parity-tested SGD corner) with no collective of its own, and stops on a non-finite gradient
    as :class:`DataParallelSGD` does.
    """

    def _elastic_step(self) -> None:
        for storage in self._storages.values():
            if not bool(torch.isfinite(storage.grad.sum(dtype=torch.float64))):
                raise DivergedError(
                    f"the averaged gradient is not finite at step {self.num_steps + 1}; lower lr"
                )
        self._elastic_update(None, 0.0)
