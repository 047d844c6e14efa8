"""An explicit inner_lr follows torch's LR schedulers (issue 12), exactly where lr never moves."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from torch import nn
from torch.optim import lr_scheduler

from elastic_entropy.optim import Parle

LR, INNER_LR = 0.1, 0.05
# the loss is <c, w>: a constant gradient, so each inner step moves w by exactly -inner_lr * c
C = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)


def _parle(**kwargs: object) -> tuple[nn.Parameter, Parle]:
    w = nn.Parameter(torch.zeros(3, dtype=torch.float64))
    # no momentum, no proximal pull, no outer step within the test: y <- y - inner_lr * g
    opt = Parle([w], lr=LR, inner_lr=INNER_LR, momentum=0.0, gamma=0.0, rho=0.0,
                num_inner_steps=1000, **kwargs)  # fmt: skip
    return w, opt


def _step(w: nn.Parameter, opt: Parle) -> torch.Tensor:
    """One opt.step() on <c, w>; the rate it moved w by."""
    before = w.detach().clone()
    (C * w).sum().backward()
    opt.step()
    opt.zero_grad()
    return (before - w.detach()) / C


SCHEDULERS: dict[str, Callable[[Parle], lr_scheduler.LRScheduler]] = {
    "step": lambda opt: lr_scheduler.StepLR(opt, step_size=2, gamma=0.1),
    "one_cycle": lambda opt: lr_scheduler.OneCycleLR(
        opt, max_lr=1.0, total_steps=12, cycle_momentum=False
    ),
    "cosine": lambda opt: lr_scheduler.CosineAnnealingLR(opt, T_max=12),
}


@pytest.mark.parametrize("name", sorted(SCHEDULERS))
def test_the_inner_steps_take_inner_lr_scaled_as_lr(name: str) -> None:
    w, opt = _parle()
    scheduler = SCHEDULERS[name](opt)
    moved = 0
    for _ in range(10):
        lr = opt.param_groups[0]["lr"]
        moved += lr != LR
        rate = _step(w, opt)
        want = INNER_LR * lr / LR
        torch.testing.assert_close(rate, torch.full_like(rate, want), rtol=1e-9, atol=0.0)
        assert opt.param_groups[0]["inner_lr"] == pytest.approx(want, rel=1e-12)
        scheduler.step()
    assert moved >= 5  # the schedule did move lr


def test_the_issue_three_step_lr_decays() -> None:
    w, opt = _parle()
    scheduler = lr_scheduler.StepLR(opt, step_size=1, gamma=0.1)
    for _ in range(3):
        _step(w, opt)
        scheduler.step()
    rate = _step(w, opt)
    group = opt.param_groups[0]
    assert group["lr"] == pytest.approx(1e-4)
    assert group["inner_lr"] == pytest.approx(5e-5)
    torch.testing.assert_close(rate, torch.full_like(rate, 5e-5))


def test_inner_lr_stays_bitwise_while_lr_does_not_move() -> None:
    inner_lr = 0.1 / 3  # one whose x * (y / y) could round away from x
    w = nn.Parameter(torch.zeros(3, dtype=torch.float64))
    opt = Parle([w], lr=0.07, inner_lr=inner_lr, momentum=0.0, gamma=0.0, rho=0.0,
                num_inner_steps=1000)  # fmt: skip
    for _ in range(3):
        rate = _step(w, opt)
    assert opt.param_groups[0]["inner_lr"] == inner_lr
    want = torch.zeros(3, dtype=torch.float64).sub_(C * inner_lr).sub_(C * inner_lr)
    assert torch.equal(w.detach(), want.sub_(C * inner_lr))
    assert rate.shape == (3,)


def test_a_hand_set_inner_lr_is_taken_then_followed() -> None:
    w, opt = _parle()
    group = opt.param_groups[0]
    group["lr"] = 0.05  # as a scheduler does: inner_lr follows, halved
    torch.testing.assert_close(_step(w, opt), torch.full((3,), 0.025, dtype=torch.float64))
    group["inner_lr"] = 0.02  # set by hand (the app's cosine schedule sets both rates)
    torch.testing.assert_close(_step(w, opt), torch.full((3,), 0.02, dtype=torch.float64))
    assert group["inner_lr"] == 0.02
    group["lr"] = 0.025  # halved again from the lr the hand-set value was given at
    torch.testing.assert_close(_step(w, opt), torch.full((3,), 0.01, dtype=torch.float64))


def test_resume_carries_the_ratio_exactly() -> None:
    def run(steps: int, state: dict | None = None) -> tuple[nn.Parameter, Parle, object]:
        w, opt = _parle()
        scheduler = lr_scheduler.StepLR(opt, step_size=2, gamma=0.3)
        if state is not None:
            w.data.copy_(state["w"])
            opt.load_state_dict(state["opt"])
            scheduler.load_state_dict(state["scheduler"])
        for _ in range(steps):
            _step(w, opt)
            scheduler.step()
        return w, opt, scheduler

    straight, _, _ = run(10)
    w, opt, scheduler = run(5)
    saved = {"w": w.detach().clone(), "opt": opt.state_dict(), "scheduler": scheduler.state_dict()}
    resumed, opt2, _ = run(5, saved)
    assert torch.equal(straight.detach(), resumed.detach())
    assert opt2.param_groups[0]["inner_lr"] != INNER_LR  # it did follow the decay
