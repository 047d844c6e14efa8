"""The fused optimizer step (optim.fused): one compiled pass per update, held to the eager steps.

Real inductor compiles on the CPU (its C++ backend): the same arithmetic as the eager reference,
to rounding (a compiler may contract ``a + b c`` into a fused multiply-add), never by much more.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import pytest
import torch
from torch import nn

from elastic_entropy.optim import SGD, ElasticSGD, EntropySGD, Parle, replica_param_groups
from elastic_entropy.optim.fused import can_fuse_by_default, fused_steps
from elastic_entropy.optim.local_sgd import LocalSGD

SHAPES = [(7, 5), (5,), (3, 2, 2), (11,)]
NUM_REPLICAS = 3


@pytest.fixture(autouse=True)
def _fresh_dynamo() -> None:
    """Each test compiles its own kernels (dynamo's recompile limit counts across tests)."""
    torch._dynamo.reset()


def _replicas(
    dtype: torch.dtype, device: str = "cpu", count: int = NUM_REPLICAS
) -> list[list[nn.Parameter]]:
    generator = torch.Generator().manual_seed(0)
    return [
        [nn.Parameter(torch.randn(s, generator=generator, dtype=dtype).to(device)) for s in SHAPES]
        for _ in range(count)
    ]


def _groups(replicas: list[list[nn.Parameter]], split: bool) -> list[dict[str, Any]]:
    """One group per replica, or two (the second with its own lr and weight decay)."""
    if not split:
        return replica_param_groups(replicas)
    groups = []
    for a, params in enumerate(replicas):
        groups.append({"params": params[:2], "replica": a})
        groups.append({"params": params[2:], "replica": a, "lr": 0.03, "weight_decay": 1e-3})
    return groups


def _train(
    make: Callable[[list[dict[str, Any]], bool], torch.optim.Optimizer],
    *,
    fused: bool,
    steps: int = 12,
    dtype: torch.dtype = torch.float32,
    split: bool = False,
    device: str = "cpu",
    count: int = NUM_REPLICAS,
) -> torch.optim.Optimizer:
    """``steps`` steps on a smooth loss whose gradient is a function of the parameters."""
    replicas = _replicas(dtype, device, count)
    opt = make(_groups(replicas, split), fused)
    for _ in range(steps):
        with torch.no_grad():
            for params in replicas:
                for p in params:
                    p.grad.copy_(torch.sin(3 * p) + 0.2 * p)
        opt.step()
    return opt


def _assert_close(fused: torch.optim.Optimizer, eager: torch.optim.Optimizer, rtol: float) -> None:
    """Every buffer within ``rtol`` of its largest entry (rounding differences compound over the
    steps through the gradient, so an entry near 0 may differ by more than its own ulps)."""
    for key, storage in eager.buffers.storages.items():
        other = fused.buffers.storages[key]
        pairs = {"live": (other.live, storage.live)}
        pairs |= {name: (other.state[name], buf) for name, buf in storage.state.items()}
        for name, (got, want) in pairs.items():
            error = (got - want).abs().max().item()
            scale = want.abs().max().item()
            assert error <= rtol * max(scale, 1e-30), (name, error, scale)


def _parle(**kwargs: Any) -> Callable[[list[dict[str, Any]], bool], Parle]:
    options = {"lr": 0.1, "num_inner_steps": 4, "gamma": 0.03, "rho": 0.5, "weight_decay": 5e-4}
    return lambda groups, fused: Parle(groups, **{**options, **kwargs}, fused=fused)


CASES = {
    "parle": _parle(),
    "parle_noise_seeded": _parle(noise=1e-3, seed=3, inner_lr=0.05),
    "parle_heavy_ball": _parle(nesterov=False),
    "parle_no_momentum": _parle(momentum=0.0),
    "parle_uncoupled": _parle(rho=0.0),
    "entropy_sgd_iclr2017": lambda groups, fused: EntropySGD(
        groups, lr=1.0, inner_lr=0.1, num_inner_steps=3, noise=1e-4, seed=1, weight_decay=5e-4,
        variant="iclr2017", fused=fused,
    ),
    "elastic_sgd": lambda groups, fused: ElasticSGD(
        groups, lr=0.1, rho=0.5, weight_decay=5e-4, fused=fused
    ),
    "sgd": lambda groups, fused: SGD(groups, lr=0.1, weight_decay=5e-4, fused=fused),
    "local_sgd": lambda groups, fused: LocalSGD(
        groups, lr=0.1, num_local_steps=3, nesterov=False, fused=fused
    ),
}  # fmt: skip


@pytest.mark.parametrize("name", list(CASES))
def test_the_fused_steps_match_the_eager_ones_to_rounding(name: str) -> None:
    eager = _train(CASES[name], fused=False)
    fused = _train(CASES[name], fused=True)
    assert fused.is_fused and not eager.is_fused
    _assert_close(fused, eager, rtol=4e-6)


def test_in_float64_with_two_parameter_groups_they_agree_to_1e_15() -> None:
    """The same terms in the same order: in float64 what is left is the last bits' rounding."""
    make = _parle(noise=1e-3, seed=0)
    eager = _train(make, fused=False, dtype=torch.float64, split=True)
    fused = _train(make, fused=True, dtype=torch.float64, split=True)
    assert fused.is_fused
    _assert_close(fused, eager, rtol=1e-13)
    assert fused.param_groups[1]["lr"] == 0.03  # the second group stepped with its own lr


def test_one_replica_whose_mean_is_its_own_row() -> None:
    """Alone, the reference is the replica's own row of z: the kernel reads z for it."""
    eager = _train(_parle(rho=1.0), fused=False, count=1)
    fused = _train(_parle(rho=1.0), fused=True, count=1)
    assert fused.is_fused
    _assert_close(fused, eager, rtol=4e-6)


def test_scoping_and_a_moving_lr_never_recompile() -> None:
    """lr and gamma are the kernels' inputs, not constants: new values, the same kernel."""
    counters = torch._dynamo.utils.counters
    counters.clear()
    replicas = _replicas(torch.float32)
    opt = Parle(replica_param_groups(replicas), lr=0.1, num_inner_steps=2, fused=True)
    for step in range(8):
        for group in opt.param_groups:
            group["lr"] = 0.1 / (1 + step)
        with torch.no_grad():
            for params in replicas:
                for p in params:
                    p.grad.copy_(torch.cos(p))
        opt.step()
    assert opt.is_fused
    assert counters["stats"]["unique_graphs"] == 2  # the inner kernel and the outer one


def test_a_fused_run_is_deterministic_and_its_checkpoint_resumes_eagerly() -> None:
    make = _parle(noise=1e-3, seed=5)
    first, second = _train(make, fused=True), _train(make, fused=True)
    for key, storage in first.buffers.storages.items():
        assert torch.equal(storage.live, second.buffers.storages[key].live)
    # the state is laid out alike: a fused run's checkpoint loads into an eager optimizer
    eager = _train(make, fused=False, steps=0)
    eager.load_state_dict(first.state_dict())
    for key, storage in first.buffers.storages.items():
        assert torch.equal(eager.buffers.storages[key].state["anchor"], storage.state["anchor"])


def test_where_it_cannot_compile_one_warning_and_the_eager_step(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """No C++ compiler (inductor's CPU backend has nothing to build with): the eager step."""
    import torch._inductor.config as inductor_config

    monkeypatch.setattr(inductor_config.cpp, "cxx", ("no-such-compiler-here",))
    make = _parle(noise=1e-3, seed=2)
    eager = _train(make, fused=False)
    with caplog.at_level(logging.WARNING, logger="elastic_entropy.optim.fused"):
        fallen = _train(make, fused=True)
    warnings = [r.getMessage() for r in caplog.records if r.name == "elastic_entropy.optim.fused"]
    assert len(warnings) == 1 and "stepping eagerly" in warnings[0], warnings
    assert not fallen.is_fused
    for key, storage in eager.buffers.storages.items():  # nothing half-written: bit for bit
        assert torch.equal(fallen.buffers.storages[key].live, storage.live)


def test_by_default_fused_only_on_gpus_with_triton() -> None:
    assert not can_fuse_by_default([torch.device("cpu")])
    assert fused_steps(None, [torch.device("cpu")]) is None
    assert fused_steps(True, [torch.device("cpu")]) is not None
    assert fused_steps(False, [torch.device("cuda")]) is None
    opt = Parle([nn.Parameter(torch.zeros(3))], lr=0.1)
    assert not opt.is_fused


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_on_a_gpu_fused_by_default_and_matching_the_eager_steps() -> None:
    make = _parle(noise=1e-3, seed=0)
    eager = _train(make, fused=False, device="cuda")
    fused = _train(lambda groups, _: make(groups, None), fused=True, device="cuda")
    assert fused.is_fused == can_fuse_by_default([torch.device("cuda")])
    _assert_close(fused, eager, rtol=4e-6)
