from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from elastic_entropy.optim import ElasticSGD, Parle
from elastic_entropy.scoping import Schedule, constant, exponential, papers_rate


def test_exponential_schedule_values_and_cap() -> None:
    s = exponential(0.01, 0.5, 0.05)
    values = []
    for _ in range(6):
        values.append(s.value)
        s.step()
    assert values[:4] == pytest.approx([0.01, 0.015, 0.0225, 0.03375])
    assert values[4:] == [0.05, 0.05]
    assert constant(0.3).value == 0.3
    assert papers_rate(50) == 0.01


def test_schedule_state_dict_round_trip() -> None:
    s = exponential(0.01, 0.1, 1.0)
    for _ in range(7):
        s.step()
    t = exponential(0.01, 0.1, 1.0)
    t.load_state_dict(s.state_dict())
    assert t.t == 7 and t.value == s.value
    with pytest.raises(ValueError, match="rate"):
        exponential(0.01, 0.2, 1.0).load_state_dict(s.state_dict())


def test_huge_step_counts_stay_finite() -> None:
    s = exponential(1.0, 0.5, math.inf)
    s.t = 10_000
    assert s.value == math.inf or math.isfinite(s.value)
    s = exponential(1.0, 0.5, 10.0)
    s.t = 10_000
    assert s.value == 10.0


def test_counter_advances_once_per_outer_step() -> None:
    """The original PyTorch Entropy-SGD never advanced it; here L steps make one outer step."""
    p = nn.Parameter(torch.zeros(3))
    gamma, rho = exponential(0.01, 0.1, 1.0), exponential(0.1, 0.1, 1.0)
    opt = Parle([p], lr=0.1, num_inner_steps=5, gamma_schedule=gamma, rho_schedule=rho)
    for step in range(1, 23):
        p.grad = torch.ones(3)
        opt.step()
        assert gamma.t == rho.t == step // 5
    assert gamma.value == pytest.approx(0.01 * 1.1**4)


def test_counter_advances_every_step_without_inner_loop() -> None:
    p = nn.Parameter(torch.zeros(3))
    rho = exponential(0.1, 0.1, 1.0)
    opt = ElasticSGD([p], lr=0.1, rho_schedule=rho)
    for _ in range(4):
        p.grad = torch.ones(3)
        opt.step()
    assert rho.t == 4


@pytest.mark.parametrize(
    "kwargs", [dict(initial=-1.0), dict(initial=1.0, rate=-0.1), dict(initial=1.0, max_value=0.5)]
)
def test_bad_schedules_are_refused(kwargs) -> None:
    with pytest.raises(ValueError, match="Invalid schedule"):
        Schedule(**kwargs)
