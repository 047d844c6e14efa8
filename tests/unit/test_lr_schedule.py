"""The lr_schedule group: step drops at epoch milestones (the papers'), cosine, linear warmup."""

from __future__ import annotations

import math

import pytest

from elastic_entropy.config import LRScheduleConfig
from tests.conftest import compose_config


def test_the_papers_sgd_steps_drop_by_five_at_60_120_160() -> None:
    schedule = compose_config("lr_schedule=step").lr_schedule
    per_epoch = 10
    factors = [schedule.factor(e * per_epoch, 2000, per_epoch) for e in (0, 59, 60, 119, 120, 160)]
    assert factors == pytest.approx([1.0, 1.0, 0.2, 0.2, 0.04, 0.008])


def test_warmup_rises_linearly_then_leaves_the_schedule_alone() -> None:
    schedule = LRScheduleConfig(name="cosine", warmup_epochs=1.0)
    assert schedule.factor(0, 100, 10) == pytest.approx(0.1 * 0.5 * (1 + math.cos(0)))
    assert schedule.factor(4, 100, 10) == pytest.approx(0.5 * 0.5 * (1 + math.cos(math.pi * 0.04)))
    assert schedule.factor(50, 100, 10) == pytest.approx(0.5)
    assert LRScheduleConfig().factor(7, 100, 10) == 1.0


@pytest.mark.parametrize(
    ("milestones", "factors", "rule"),
    [
        ([60], [], "one factor per milestone"),
        ([60, 30], [0.2, 0.1], "increasing"),
        ([1], [0.0], "> 0"),
    ],
)
def test_a_bad_step_schedule_is_named(milestones: list, factors: list, rule: str) -> None:
    with pytest.raises(ValueError, match=rf"Invalid lr_schedule\.\w+: .*{rule}"):
        LRScheduleConfig(name="step", milestones=milestones, factors=factors)
