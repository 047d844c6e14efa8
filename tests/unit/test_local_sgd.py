"""Local SGD: independent torch SGD runs whose parameters are averaged every H steps."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from elastic_entropy.comm import LocalCommunicator
from elastic_entropy.models import cnn1d
from elastic_entropy.optim import LocalSGD, replica_param_groups


def _model() -> nn.Module:
    torch.manual_seed(0)
    return cnn1d((40,), 10, channels=8)


def _batches(num: int, seed: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    generator = torch.Generator().manual_seed(seed)
    return [
        (torch.randn(16, 40, generator=generator), torch.randint(0, 10, (16,), generator=generator))
        for _ in range(num)
    ]


def _train(opt: LocalSGD, models: list[nn.Module], steps: int, start: int = 0) -> None:
    streams = [_batches(start + steps, seed=1 + a)[start:] for a in range(len(models))]
    for batches in zip(*streams):
        for model, (x, y) in zip(models, batches):
            nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
        opt.zero_grad()


def test_replicas_are_torch_sgd_runs_averaged_every_h_steps() -> None:
    H, steps = 4, 14  # ends mid-period: the last 2 steps are local
    ours = [_model(), _model(), _model()]
    opt = LocalSGD(replica_param_groups(m.parameters() for m in ours), lr=0.05, num_local_steps=H)
    _train(opt, ours, steps)

    theirs = [_model(), _model(), _model()]
    sgds = [torch.optim.SGD(m.parameters(), lr=0.05, momentum=0.9, nesterov=True) for m in theirs]
    streams = [_batches(steps, seed=1 + a) for a in range(3)]
    for step, batches in enumerate(zip(*streams), start=1):
        for model, sgd, (x, y) in zip(theirs, sgds, batches):
            sgd.zero_grad()
            nn.functional.cross_entropy(model(x), y).backward()
            sgd.step()
        if step % H == 0:
            with torch.no_grad():
                for params in zip(*(m.parameters() for m in theirs)):
                    mean = torch.stack(params).mean(0)
                    for p in params:
                        p.copy_(mean)
    for mine, spec in zip(ours, theirs):
        for p, q in zip(mine.parameters(), spec.parameters()):
            torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)
    # replicas differ after the 2 local steps since the last average, yet were equal at step 12
    assert not torch.equal(next(ours[0].parameters()), next(ours[1].parameters()))
    assert opt.comm.stats.num_outer_means == steps // H
    assert opt.steps_per_exchange == H and not opt.is_outer_step_done


def test_state_dict_resumes_mid_period_bit_for_bit() -> None:
    whole = [_model(), _model()]
    opt = LocalSGD(replica_param_groups(m.parameters() for m in whole), lr=0.05, num_local_steps=3)
    _train(opt, whole, 10)

    first = [_model(), _model()]
    opt1 = LocalSGD(replica_param_groups(m.parameters() for m in first), lr=0.05, num_local_steps=3)
    _train(opt1, first, 5)
    state = opt1.state_dict()
    second = [_model(), _model()]
    with torch.no_grad():
        for mine, saved in zip(second, first):
            for p, q in zip(mine.parameters(), saved.parameters()):
                p.copy_(q)
    opt2 = LocalSGD(
        replica_param_groups(m.parameters() for m in second), lr=0.05, num_local_steps=3
    )
    opt2.load_state_dict(state)
    _train(opt2, second, 5, start=5)
    for a, b in zip(whole, second):
        for p, q in zip(a.parameters(), b.parameters()):
            assert torch.equal(p, q)


def test_other_period_or_bad_value_is_refused() -> None:
    params = replica_param_groups(m.parameters() for m in (_model(), _model()))
    with pytest.raises(ValueError, match="num_local_steps"):
        LocalSGD(params, lr=0.1, num_local_steps=0)
    state = LocalSGD(params, lr=0.1, num_local_steps=2, comm=LocalCommunicator(2)).state_dict()
    with pytest.raises(ValueError, match="num_local_steps=2 but this run has 5"):
        LocalSGD(params, lr=0.1, num_local_steps=5, comm=LocalCommunicator(2)).load_state_dict(
            state
        )
