"""AdamW on the Parle machinery: the baseline of Entropy-Adam and DiLoCo."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from torch import Tensor

from elastic_entropy.comm.base import Communicator
from elastic_entropy.optim.adamw import ADAM_STATE, adamw_inner_step, check_adam
from elastic_entropy.optim.dp_sgd import require_finite
from elastic_entropy.optim.parle import Parle


class AdamW(Parle):
    r"""AdamW as the ``L = 0, rho = 0`` corner of the family: ``torch.optim.AdamW(lr, betas, eps,
    weight_decay)`` step for step (``foreach=False``, bit for bit; a parity test holds it), on the
    same trainer, flat buffers and reference as Parle: the baseline of Entropy-Adam and DiLoCo.
    Several replicas are independent runs.

    Example::

        opt = AdamW(model.parameters(), lr=1e-3, weight_decay=0.01)
    """

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]],
        lr: float = 1e-3,
        *,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        comm: Communicator | None = None,
        same_init: bool = True,
    ) -> None:
        check_adam(lr, betas, eps)
        super().__init__(
            params,
            lr,
            num_inner_steps=0,
            gamma=0.0,
            rho=0.0,
            weight_decay=weight_decay,
            comm=comm,
            same_init=same_init,
            inner_optimizer="adamw",
            betas=betas,
            eps=eps,
            fused=False,  # its own steps (AdamW's) are eager
        )

    def _state_names(self, num_inner_steps: int) -> tuple[str, ...]:
        return ADAM_STATE

    def exchange(self) -> Tensor | None:
        """Every replica's own AdamW step; nothing is exchanged but the finite-rows flags."""
        valid_global = self.consensus.exchange_validity("live", self.num_steps + 1)
        self._adamw_step()
        return valid_global

    def _adamw_step(self) -> None:
        for segment, storage in self.buffers.segment_storages():
            group = self.param_groups[segment.group_index]
            adamw_inner_step(storage, group, segment.cols, self.num_steps + 1, group["lr"], 0.0)


class DataParallelAdamW(AdamW):
    r"""Synchronous data-parallel AdamW: every call all-reduces the whole gradient (one collective
    of one flat buffer), then every replica takes the same AdamW step, so that ``n`` replicas with
    batch ``B`` are AdamW with batch ``n B``: DiLoCo's baseline (same arguments as
    :class:`AdamW`)."""

    def exchange(self) -> None:
        for grad in self.buffers.flat("grad").values():
            mean = self.comm.mean(grad)
            require_finite(mean, self.num_steps + 1)
            grad.copy_(mean.expand_as(grad))
        self._adamw_step()
