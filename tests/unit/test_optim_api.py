"""Parle as a torch.optim.Optimizer: argument checks, state_dict, zero_grad, schedulers, AMP."""

from __future__ import annotations

import copy
import io
import warnings

import pytest
import torch
from torch import nn

from elastic_entropy.comm import LocalCommunicator
from elastic_entropy.optim import EntropySGD, Parle, replica_param_groups
from elastic_entropy.scoping import Schedule


def _params() -> list[nn.Parameter]:
    return [nn.Parameter(torch.randn(4, 3)), nn.Parameter(torch.randn(3))]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(lr=-0.1), "Invalid lr value: -0.1"),
        (dict(lr=0.1, gamma=-1.0), "Invalid gamma value: -1.0"),
        (dict(lr=0.1, rho=-0.5), "Invalid rho value: -0.5"),
        (dict(lr=0.1, noise=-1e-3), "Invalid noise value: -0.001"),
        (dict(lr=0.1, alpha=1.0), "Invalid alpha value: 1.0"),
        (dict(lr=0.1, alpha=-0.1), "Invalid alpha value: -0.1"),
        (dict(lr=0.1, num_inner_steps=-1), "Invalid num_inner_steps value: -1"),
        (dict(lr=0.1, momentum=1.5), "Invalid momentum value: 1.5"),
        (dict(lr=0.1, weight_decay=-1.0), "Invalid weight_decay value: -1.0"),
        (dict(lr=0.1, inner_lr=-1.0), "Invalid inner_lr value: -1.0"),
        (dict(lr=0.1, num_inner_steps=0, noise=0.1), "noise > 0 needs an inner loop"),
    ],
)
def test_bad_hyper_parameters_raise_value_error(kwargs, message) -> None:
    with pytest.raises(ValueError, match=message.replace(".", r"\.").replace("(", r"\(")):
        Parle(_params(), **kwargs)


def test_overshooting_elastic_step_is_refused_with_the_reason() -> None:
    with pytest.raises(ValueError, match=r"Unstable elastic coupling: .* 5\.7 >= 2") as info:
        Parle(_params(), lr=0.3, rho_schedule=Schedule(1.0, 0.1, 10.0))
    assert "keep rho_max below 3.51" in str(info.value)
    Parle(_params(), lr=0.1, rho_schedule=Schedule(1.0, 0.1, 10.0))  # 1.9 < 2 is fine


def test_uncapped_rho_warns() -> None:
    with pytest.warns(UserWarning, match="rho grows without a cap"):
        Parle(_params(), lr=0.1, rho_schedule=Schedule(1.0, 0.1))


def test_frozen_parameters_and_mismatched_replicas_are_refused() -> None:
    frozen = nn.Parameter(torch.zeros(2), requires_grad=False)
    with pytest.raises(ValueError, match="requires_grad=False"):
        Parle([frozen], lr=0.1)
    groups = replica_param_groups([[nn.Parameter(torch.zeros(2))], [nn.Parameter(torch.zeros(3))]])
    with pytest.raises(ValueError, match="differ in shape"):
        Parle(groups, lr=0.1)
    groups = replica_param_groups([_params(), _params()])
    with pytest.raises(ValueError, match="replicas_per_process=2"):
        Parle(groups, lr=0.1, comm=LocalCommunicator(3))
    with pytest.raises(ValueError, match="add_param_group"):
        Parle(_params(), lr=0.1).add_param_group({"params": [nn.Parameter(torch.zeros(1))]})


def _train(model: nn.Module, opt: Parle, steps: int, seed: int) -> None:
    generator = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        x = torch.randn(8, 5, generator=generator)
        nn.functional.mse_loss(model(x), x.sum(1, keepdim=True)).backward()
        opt.step()
        opt.zero_grad()


def _make(model: nn.Module) -> Parle:
    return Parle(
        model.parameters(),
        lr=0.05,
        num_inner_steps=4,
        noise=1e-3,
        weight_decay=1e-4,
        gamma_schedule=Schedule(0.03, 0.1, 1.0),
        rho_schedule=Schedule(0.5, 0.1, 5.0),
        seed=7,
    )


def test_state_dict_round_trip_resumes_bitwise_mid_outer_step() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 16), nn.Tanh(), nn.Linear(16, 1))
    opt = _make(model)
    _train(model, opt, 13, seed=1)  # 13 = 3 outer steps + 1 inner step
    buffer = io.BytesIO()
    torch.save({"model": model.state_dict(), "optim": opt.state_dict()}, buffer)

    resumed_model = nn.Sequential(nn.Linear(5, 16), nn.Tanh(), nn.Linear(16, 1))
    resumed = _make(resumed_model)
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)
    resumed_model.load_state_dict(saved["model"])
    resumed.load_state_dict(saved["optim"])
    assert resumed.num_steps == 13 and resumed.gamma_schedule.t == 3

    _train(model, opt, 11, seed=2)
    _train(resumed_model, resumed, 11, seed=2)
    for p, q in zip(model.parameters(), resumed_model.parameters()):
        assert torch.equal(p, q)
    for p, q in zip(opt.reference(), resumed.reference()):
        assert torch.equal(p, q)


def test_state_dict_of_another_model_or_layout_is_refused() -> None:
    opt = Parle(_params(), lr=0.1, num_inner_steps=3)
    state = opt.state_dict()
    with pytest.raises(ValueError, match="num_inner_steps=3"):
        Parle(_params(), lr=0.1, num_inner_steps=2).load_state_dict(state)
    other = Parle(
        [nn.Parameter(torch.zeros(5, 3)), nn.Parameter(torch.zeros(3))], lr=0.1, num_inner_steps=3
    )
    with pytest.raises(ValueError, match="another model"):
        other.load_state_dict(state)
    with pytest.raises(ValueError, match="not a Parle optimizer state"):
        opt.load_state_dict(torch.optim.SGD(_params(), lr=0.1).state_dict())


def test_user_zero_grad_to_none_and_fresh_grads_still_count() -> None:
    torch.manual_seed(0)
    a = nn.Linear(3, 2)
    b = copy.deepcopy(a)
    opt_a = Parle(a.parameters(), lr=0.1, num_inner_steps=0, rho=0.0)
    opt_b = torch.optim.SGD(b.parameters(), lr=0.1, momentum=0.9, nesterov=True)
    x = torch.randn(4, 3)
    for _ in range(3):
        a.zero_grad(set_to_none=True)  # drops the optimizer's gradient views
        b.zero_grad()
        a(x).square().sum().backward()
        b(x).square().sum().backward()
        opt_a.step()
        opt_b.step()
    for p, q in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(p, q)


def test_lr_scheduler_and_grad_scaler_work() -> None:
    model = nn.Linear(3, 1)
    opt = Parle(model.parameters(), lr=0.1, num_inner_steps=2, inner_lr=None)
    scheduler = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    before = [p.detach().clone() for p in model.parameters()]
    for _ in range(4):
        loss = model(torch.randn(5, 3)).square().mean()
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        opt.zero_grad()
        scheduler.step()
    assert opt.param_groups[0]["lr"] == pytest.approx(0.1 / 16)
    assert all(not torch.equal(p, q) for p, q in zip(before, model.parameters()))
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_parameters_are_views_of_one_flat_buffer() -> None:
    replicas = [nn.Linear(4, 3) for _ in range(3)]
    opt = Parle(replica_param_groups(m.parameters() for m in replicas), lr=0.1)
    storages = {p.untyped_storage().data_ptr() for m in replicas for p in m.parameters()}
    grads = {p.grad.untyped_storage().data_ptr() for m in replicas for p in m.parameters()}
    assert len(storages) == 1 and len(grads) == 1
    assert opt.num_params_per_replica == 15


def test_entropy_sgd_alone_never_communicates() -> None:
    comm = LocalCommunicator(1)
    p = nn.Parameter(torch.zeros(3))
    opt = EntropySGD([p], lr=1.0, num_inner_steps=2, comm=comm)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for _ in range(6):
            p.grad = torch.ones(3)
            opt.step()
    assert comm.stats.num_collectives == 0


def test_parle_counts_one_collective_per_outer_step() -> None:
    replicas = [nn.Linear(4, 3) for _ in range(2)]
    comm = LocalCommunicator(2)
    opt = Parle(
        replica_param_groups(m.parameters() for m in replicas), lr=0.1, num_inner_steps=5, comm=comm
    )
    for _ in range(20):
        for m in replicas:
            m(torch.randn(2, 4)).sum().backward()
        opt.step()
        opt.zero_grad()
    assert comm.stats.num_collectives == 4
    # 15 parameters and one validity flag per replica
    assert comm.stats.bytes_per_replica == 4 * (15 + 2) * 4


def test_overlapped_mean_survives_a_state_dict_round_trip() -> None:
    """The all-reduce in flight at save time is part of the state: resumption stays exact."""

    def build() -> tuple[list[nn.Module], Parle]:
        torch.manual_seed(0)
        models = [nn.Linear(5, 1) for _ in range(2)]
        models[1].load_state_dict(models[0].state_dict())
        groups = replica_param_groups(m.parameters() for m in models)
        return models, Parle(groups, lr=0.05, num_inner_steps=3, rho=1.0, overlap=True)

    def train(models: list[nn.Module], opt: Parle, steps: int, seed: int) -> None:
        generator = torch.Generator().manual_seed(seed)
        for _ in range(steps):
            for m in models:
                x = torch.randn(8, 5, generator=generator)
                nn.functional.mse_loss(m(x), x.sum(1, keepdim=True)).backward()
            opt.step()
            opt.zero_grad()

    models, opt = build()
    train(models, opt, 7, seed=1)  # two outer steps: a mean is in flight
    buffer = io.BytesIO()
    torch.save({"models": [m.state_dict() for m in models], "optim": opt.state_dict()}, buffer)
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)
    resumed_models, resumed = build()
    for m, state in zip(resumed_models, saved["models"]):
        m.load_state_dict(state)
    resumed.load_state_dict(saved["optim"])
    train(models, opt, 9, seed=2)
    train(resumed_models, resumed, 9, seed=2)
    for a, b in zip(opt.reference(), resumed.reference()):
        assert torch.equal(a, b)
