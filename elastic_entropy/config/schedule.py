"""The ``lr_schedule/`` group: how lr (and the inner loop's rate, following it or fixed) moves over
the run."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from elastic_entropy.config._checks import _require

LR_SCHEDULES = ("constant", "cosine", "step")
# the inner loop's rate under a schedule: scaled with lr, or left where the algorithm set it
INNER_LR_MODES = ("follow", "fixed")


@dataclass
class LRScheduleConfig:
    """``constant``; ``cosine`` (from the algorithm's lr to 0 over the run); ``step``: from
    epoch ``milestones[i]`` on, lr is ``factors[i]`` times the algorithm's lr (the papers' step
    drops: SGD x0.2 at 60, 120, 160 is ``milestones=[60,120,160] factors=[0.2,0.04,0.008]``).
    ``warmup_epochs``: a linear rise from 0 first, under any of them. Epochs are counted in the
    run's ``epoch_unit`` (a pass, or the authors' epoch of ``nb`` outer steps: their ``--lrs
    [[1,0.1],[2,0.02]]`` is ``epoch_unit=nb_outer_steps milestones=[1] factors=[0.2]``).

    ``inner_lr``: ``follow`` scales the inner loop's rate with ``lr``; ``fixed`` moves ``lr``
    alone and keeps the inner rate at ``algorithm.inner_lr`` (at the algorithm's initial ``lr``
    when that is null), as the authors' Parle and Entropy-SGD did (``llr = 0.1`` throughout)."""

    name: str = "constant"
    milestones: list[float] = field(default_factory=list)
    factors: list[float] = field(default_factory=list)
    warmup_epochs: float = 0.0
    inner_lr: str = "follow"

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
        _require(
            self.inner_lr in INNER_LR_MODES,
            "lr_schedule.inner_lr",
            self.inner_lr,
            f"choose one of {', '.join(INNER_LR_MODES)}",
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

    def inner_lr_at(self, inner_lr: float | None, lr: float, factor: float) -> float | None:
        """The inner loop's rate when ``lr`` is scaled by ``factor``: ``None`` to run at the
        scheduled ``lr`` itself (``follow`` with no explicit ``inner_lr``)."""
        if self.inner_lr == "fixed":
            return inner_lr if inner_lr is not None else lr
        return inner_lr * factor if inner_lr is not None else None
