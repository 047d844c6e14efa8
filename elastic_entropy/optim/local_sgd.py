"""Local SGD: replicas take SGD steps alone and are replaced by their average every H steps."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from torch import Tensor

from elastic_entropy.comm.base import Communicator
from elastic_entropy.optim.sgd import SGD


class LocalSGD(SGD):
    r"""Local SGD with periodic averaging (model averaging, "post-local SGD" once warm):
    the baseline that, like Parle, talks once every few steps but without any coupling.

    Every call takes each replica's own Nesterov step on its own minibatch; every
    ``num_local_steps``-th call then sets every replica to ``mean_a x^a`` (one all-reduce of one
    flat buffer, so Parle with ``L = num_local_steps`` and local SGD send the same bytes). Each
    replica keeps its own momentum across the averaging, as PyTorch's model averagers do. A
    replica whose parameters are not finite is left out of the mean and reset like Parle's.

    Example::

        opt = LocalSGD(model.parameters(), lr=0.1, num_local_steps=10, comm=comm)
    """

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]],
        lr: float,
        *,
        num_local_steps: int = 10,
        momentum: float = 0.9,
        nesterov: bool = True,
        weight_decay: float = 0.0,
        comm: Communicator | None = None,
        same_init: bool = True,
        fused: bool | None = None,
    ) -> None:
        if not isinstance(num_local_steps, int) or num_local_steps < 1:
            raise ValueError(
                f"Invalid num_local_steps value: {num_local_steps} (must be an int >= 1)"
            )
        super().__init__(
            params,
            lr,
            momentum=momentum,
            nesterov=nesterov,
            weight_decay=weight_decay,
            comm=comm,
            same_init=same_init,
            fused=fused,
        )
        self.num_local_steps = num_local_steps

    @property
    def steps_per_exchange(self) -> int:
        return self.num_local_steps

    def exchange(self) -> Tensor | None:
        """Every replica's own step; every ``num_local_steps``-th call, then the average."""
        self.elastic_update()
        if (self.num_steps + 1) % self.num_local_steps != 0:
            return None
        means, valid_global = self.average("live", rho=0.0)
        self.buffers.assign_live(means)
        return valid_global

    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        state["parle"]["num_local_steps"] = self.num_local_steps
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        saved = state_dict["parle"].get("num_local_steps")
        if saved != self.num_local_steps:
            raise ValueError(
                f"optimizer state was saved with num_local_steps={saved} but this run has "
                f"{self.num_local_steps}; resume with the same settings"
            )
        super().load_state_dict(state_dict)
