"""The loss scale of ``precision=fp16``: gradients that fp16 would flush to zero are kept by
scaling the loss before backward, and divided back before the optimizer sees them.

The rule is torch's ``GradScaler``'s (start at 2^16; halve on a non-finite gradient and skip the
step; double after 2,000 finite steps in a row), written here because the skip must be one
decision of the whole job: Parle's replicas exchange every ``num_inner_steps`` steps, so a rank
that skipped a step while another took it would meet it at another outer step. Every rank takes
part in a one-number all-reduce per step (only under fp16), and a skipped step advances nothing:
not the optimizer's step counter, not its inner loop, not the loop's count of steps (the
minibatch is spent: the samplers move on).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

GROWTH_FACTOR = 2.0
BACKOFF_FACTOR = 0.5
GROWTH_INTERVAL = 2000


class LossScale:
    """The current scale, the finite steps since it last changed, and the steps skipped."""

    def __init__(self, initial: float = 2.0**16) -> None:
        if not (initial > 0.0 and initial < float("inf")):
            raise ValueError(f"Invalid loss_scale: {initial} (must be finite and > 0)")
        self.scale = float(initial)
        self.finite_steps = 0  # in a row, since the scale last changed
        self.skipped_steps = 0

    def unscale(self, params: list[nn.Parameter]) -> Tensor:
        """Divide the gradients of ``params`` by the scale, in place; a 0-d tensor that is 1.0
        where one of them holds an inf or a NaN (left on the device: no wait here)."""
        grads = [p.grad for p in params if p.grad is not None]
        if not grads:
            return torch.zeros(())
        torch._foreach_mul_(grads, 1.0 / self.scale)
        # a non-finite value stays non-finite in a sum: one reduction per tensor, then one
        sums = torch.stack([g.float().sum() for g in grads])
        return (~torch.isfinite(sums.sum())).float()

    def update(self, is_finite: bool) -> None:
        """After the job's decision: back off and count a skip, or grow after a finite run."""
        if not is_finite:
            self.scale *= BACKOFF_FACTOR
            self.finite_steps = 0
            self.skipped_steps += 1
            return
        self.finite_steps += 1
        if self.finite_steps == GROWTH_INTERVAL:
            self.scale *= GROWTH_FACTOR
            self.finite_steps = 0

    def metrics(self) -> dict[str, float]:
        return {"loss_scale": self.scale, "skipped_steps": self.skipped_steps}

    def state_dict(self) -> dict[str, Any]:
        return {
            "scale": self.scale,
            "finite_steps": self.finite_steps,
            "skipped_steps": self.skipped_steps,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.scale = float(state["scale"])
        self.finite_steps = int(state["finite_steps"])
        self.skipped_steps = int(state["skipped_steps"])
