"""The ``lr_schedule/`` group: how lr (and an explicit inner_lr, in step) moves over the run."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from elastic_entropy.config._checks import _require

LR_SCHEDULES = ("constant", "cosine", "step")


@dataclass
class LRScheduleConfig:
    """``constant``; ``cosine`` (from the algorithm's lr to 0 over the run); ``step``: from
    epoch ``milestones[i]`` on, lr is ``factors[i]`` times the algorithm's lr (the papers' step
    drops: SGD x0.2 at 60, 120, 160 is ``milestones=[60,120,160] factors=[0.2,0.04,0.008]``).
    ``warmup_epochs``: a linear rise from 0 first, under any of them. Epochs are passes of one
    replica over its training data."""

    name: str = "constant"
    milestones: list[float] = field(default_factory=list)
    factors: list[float] = field(default_factory=list)
    warmup_epochs: float = 0.0

    def __post_init__(self) -> None:
        _require(
            self.name in LR_SCHEDULES,
            "lr_schedule",
            self.name,
            f"choose one of {', '.join(LR_SCHEDULES)}",
        )
        _require(
            self.warmup_epochs >= 0.0,
            "lr_schedule.warmup_epochs",
            self.warmup_epochs,
            "must be >= 0",
        )
        if self.name != "step":
            return
        _require(
            len(self.milestones) == len(self.factors) >= 1,
            "lr_schedule.milestones",
            self.milestones,
            "a step schedule needs one factor per milestone, e.g. lr_schedule.milestones=[60,120]"
            " lr_schedule.factors=[0.2,0.04]",
        )
        _require(
            all(a < b for a, b in zip([0.0, *self.milestones], self.milestones)),
            "lr_schedule.milestones",
            self.milestones,
            "must be increasing epochs > 0",
        )
        _require(
            all(f > 0 for f in self.factors), "lr_schedule.factors", self.factors, "must be > 0"
        )

    def factor(self, step: int, total_steps: int, steps_per_epoch: int) -> float:
        """The multiplier of the learning rates at minibatch ``step`` (0-based)."""
        warmup = self.warmup_epochs * steps_per_epoch
        rise = min(1.0, (step + 1) / warmup) if warmup > 0 else 1.0
        if self.name == "cosine":
            return rise * 0.5 * (1.0 + math.cos(math.pi * step / total_steps))
        if self.name == "step":
            epoch = step / steps_per_epoch
            passed = [f for m, f in zip(self.milestones, self.factors) if epoch >= m]
            return rise * (passed[-1] if passed else 1.0)
        return rise
