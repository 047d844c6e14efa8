"""DiLoCo: replicas run AdamW alone for H steps, then one outer Nesterov step on their mean."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from torch import Tensor

from elastic_entropy.comm.base import Communicator
from elastic_entropy.optim import functional as F
from elastic_entropy.optim.adamw import ADAM_STATE, adamw_inner_step, check_adam
from elastic_entropy.optim.parle import Parle


class DiLoCo(Parle):
    r"""DiLoCo (Douillard et al., "DiLoCo: Distributed Low-Communication Training of Language
    Models", 2023): the hard-consensus corner of Parle with an AdamW inner loop.

    Every replica starts each round at the shared outer parameters ``x`` and takes
    ``H = num_inner_steps`` AdamW steps on its own minibatches (its Adam moments persist across
    rounds, as the paper's inner optimizer state does); then, with one all-reduce of one flat
    buffer::

        delta = x - mean_a y^a              (the outer gradient: the replicas' mean step, reversed)
        u = m u + delta ;  x = x - lr (delta + m u)        (Nesterov: lr 0.7, m 0.9 in the paper)
        y^a <- x

    Against Parle's outer step ``d = (x - z) + rho (x - r)``: no average ``z`` of the inner
    iterates (the last one is what counts), one shared ``x`` rather than an anchor per replica
    pulled to the mean, so no ``rho``; and no proximal ``gamma`` in the inner loop. Its corners,
    each a parity test: outer ``lr = 1`` without momentum is local AdamW with averaging (FedAvg;
    with an SGD inner step, :class:`LocalSGD`); ``H = 1`` with an SGD inner step is data-parallel
    SGD on an n-times batch; one replica is Lookahead around AdamW.

    ``lr``, ``momentum``, ``nesterov`` are the outer step's; ``inner_lr``, ``betas``, ``eps``,
    ``weight_decay`` the inner AdamW's (weight decay decoupled); ``inner_optimizer="sgd"`` makes
    the inner step plain SGD (``y -= inner_lr (g + wd y)``) for the corners above. The replicas
    must start equal (``same_init=True`` across processes, and one ``state_dict`` loaded into
    the replicas of a process); the reference ``mean_a x^a`` is then ``x``.

    Example::

        opt = DiLoCo(replica_param_groups(m.parameters() for m in models), lr=0.7,
                     inner_lr=4e-4, num_inner_steps=50, comm=comm)
    """

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]],
        lr: float = 0.7,
        *,
        inner_lr: float = 1e-3,
        num_inner_steps: int = 50,
        momentum: float = 0.9,
        nesterov: bool = True,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        comm: Communicator | None = None,
        same_init: bool = True,
        inner_optimizer: str = "adamw",
        inner_lr_follows_lr: bool = False,
    ) -> None:
        if not isinstance(num_inner_steps, int) or num_inner_steps < 1:
            raise ValueError(
                f"Invalid num_inner_steps value: {num_inner_steps} (DiLoCo's H: an int >= 1)"
            )
        check_adam(inner_lr, betas, eps, name="inner_lr")
        super().__init__(
            params,
            lr,
            inner_lr=inner_lr,
            momentum=momentum,
            nesterov=nesterov,
            num_inner_steps=num_inner_steps,
            gamma=0.0,
            rho=0.0,
            weight_decay=weight_decay,
            comm=comm,
            same_init=same_init,
            # off by default: the outer and inner rates are separate choices here
            inner_lr_follows_lr=inner_lr_follows_lr,
            inner_optimizer=inner_optimizer,
            betas=betas,
            eps=eps,
            fused=False,  # its own steps (AdamW's) are eager
        )

    def _state_names(self, num_inner_steps: int) -> tuple[str, ...]:
        adam = ADAM_STATE if self.inner_optimizer == "adamw" else ()
        return ("anchor", *adam, "outer_momentum")

    def _inner_step(self) -> None:
        for segment, storage in self.buffers.segment_storages():
            group, cols = self.param_groups[segment.group_index], segment.cols
            # no proximal pull (gamma = 0), and no average of the inner iterates to keep
            if self.inner_optimizer == "adamw":
                adamw_inner_step(storage, group, cols, self.num_steps + 1, group["inner_lr"], 0.0)
                continue
            # plain SGD (the parity corners: local SGD, data-parallel SGD)
            y, grad = storage.live[:, cols], storage.grad[:, cols]
            if group["weight_decay"] != 0.0:
                grad = storage.scratch[:, cols].copy_(y).mul_(group["weight_decay"]).add_(grad)
            y.add_(grad, alpha=-group["inner_lr"])

    def _outer_step(self) -> None:
        # the mean of the replicas' last inner iterates, where they are finite
        means, valid_global = self.average("live", rho=0.0)
        for segment, storage in self.buffers.segment_storages():
            group, cols = self.param_groups[segment.group_index], segment.cols
            # d = (x - r) for every replica: Parle's (x - z) + rho (x - r) with z = r, rho = 0
            F.outer_step(
                [storage.state["anchor"][:, cols]],
                [means[segment.key][cols]],
                [storage.state["outer_momentum"][:, cols]],
                [None],
                [storage.scratch[:, cols]],
                lr=group["lr"],
                momentum=group["momentum"],
                nesterov=group["nesterov"],
                rho=0.0,
            )
        for storage in self.buffers.storages.values():
            storage.live.copy_(storage.state["anchor"])
        self.consensus.quarantine(valid_global, self.num_steps + 1)

