"""A replica with non-finite parameters leaves the mean, is reset to the reference, is logged."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from elastic_entropy.optim import DiLoCo, DivergedError, ElasticSGD, Parle, replica_param_groups


def _replicas(n: int) -> list[nn.Module]:
    torch.manual_seed(0)
    first = nn.Linear(4, 3)
    models = [nn.Linear(4, 3) for _ in range(n)]
    for m in models:
        m.load_state_dict(first.state_dict())
    return models


def _step(models: list[nn.Module], opt: Parle, poisoned: int | None = None) -> None:
    for a, m in enumerate(models):
        x = torch.randn(8, 4, generator=torch.Generator().manual_seed(a + 100 * opt.num_steps))
        m(x).square().mean().backward()
        if a == poisoned:
            m.weight.grad[0, 0] = float("nan")  # the fault: one NaN in one replica's gradient
    opt.step()
    opt.zero_grad()


@pytest.mark.parametrize("num_inner_steps", [0, 3])
def test_nan_gradient_in_one_replica_is_quarantined(num_inner_steps: int) -> None:
    models = _replicas(3)
    opt = Parle(
        replica_param_groups(m.parameters() for m in models),
        lr=0.1,
        noise=0.0,
        num_inner_steps=num_inner_steps,
        rho=0.5,
    )
    for _ in range(6):
        _step(models, opt)
    _step(models, opt, poisoned=1)
    while not opt.is_outer_step_done:
        _step(models, opt)
    if num_inner_steps == 0:
        _step(models, opt)  # elastic: the NaN is in the parameters, caught at the next step
    assert opt.quarantine_events == [{"step": opt.num_steps, "replica": 1}]
    reference = opt.reference()
    assert all(torch.isfinite(r).all() for r in reference)
    for p, r in zip(opt.anchors(1), reference):
        torch.testing.assert_close(p, r)  # reset to the reference of the other two
    for p, r in zip(models[1].parameters(), reference):
        torch.testing.assert_close(p.detach(), r)
    for _ in range(9):  # and it trains on with the others
        _step(models, opt)
    assert all(torch.isfinite(p).all() for m in models for p in m.parameters())
    assert len(opt.quarantine_events) == 1


def test_all_replicas_diverged_stops_with_a_clear_error() -> None:
    models = _replicas(1)
    opt = ElasticSGD(models[0].parameters(), lr=0.1)
    _step(models, opt, poisoned=0)
    with pytest.raises(DivergedError, match="all 1 replica"):
        _step(models, opt)


def test_uncoupled_sgd_replicas_exchange_only_their_flags_and_still_quarantine() -> None:
    from elastic_entropy.optim import SGD

    models = _replicas(3)
    opt = SGD(replica_param_groups(m.parameters() for m in models), lr=0.1)
    for _ in range(4):
        _step(models, opt)
    # no mean of the parameters: three validity flags of 4 bytes per step
    assert opt.comm.stats.bytes_per_replica == 4 * 3 * 4
    _step(models, opt, poisoned=2)
    _step(models, opt)  # the NaN is in replica 2's parameters now: caught, reset to the others
    assert opt.quarantine_events == [{"step": 6, "replica": 2}]
    others = [torch.stack([p0, p1]).mean(0) for p0, p1 in zip(opt.anchors(0), opt.anchors(1))]
    for p, want in zip(models[2].parameters(), others):
        torch.testing.assert_close(p.detach(), want)


def test_a_diverged_diloco_replica_leaves_the_mean_and_restarts_from_x() -> None:
    """DiLoCo: a NaN in one replica's inner AdamW steps; the outer step takes the mean of the
    other two, and the diverged replica (its Adam moments too) starts again from the shared x."""
    models = _replicas(3)
    opt = DiLoCo(replica_param_groups(m.parameters() for m in models), num_inner_steps=3)
    for _ in range(4):
        _step(models, opt)
    _step(models, opt, poisoned=2)
    while not opt.is_outer_step_done:
        _step(models, opt)
    assert opt.quarantine_events == [{"step": opt.num_steps, "replica": 2}]
    x = opt.reference()
    assert all(torch.isfinite(r).all() for r in x)
    for model in models:  # every replica, the reset one included, starts the round at x
        for p, r in zip(model.parameters(), x):
            torch.testing.assert_close(p.detach(), r)
    for storage in opt.buffers.storages.values():  # the reset replica's moments start afresh
        for name in ("adam_avg", "adam_avg_sq"):
            assert not storage.state[name][2].any() and storage.state[name][0].any()
    for _ in range(6):
        _step(models, opt)
    assert all(torch.isfinite(p).all() for m in models for p in m.parameters())
    assert len(opt.quarantine_events) == 1


def test_large_finite_rows_whose_sum_overflows_are_still_finite() -> None:
    """The one-pass check sums each row in its own dtype; a sum that overflows (finite entries
    of 1e38) is checked entry by entry, so only the row with a NaN or an inf is flagged."""
    models = _replicas(4)
    opt = Parle(replica_param_groups(m.parameters() for m in models), lr=0.1)
    with torch.no_grad():
        models[1].weight.fill_(1e38)  # finite, but the row's float32 sum is inf
        models[2].bias[0] = float("nan")
        models[3].weight[0, 0] = float("-inf")
    assert opt.buffers.finite_rows("live").tolist() == [True, True, False, False]
