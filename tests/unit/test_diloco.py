"""The AdamW corners of the family, each held to what the maths says it equals: Entropy-Adam's
inner step to torch's AdamW and to a written-out loop; DiLoCo to a written-out loop, to local
AdamW with averaging (outer lr 1), to data-parallel SGD on an n-times batch (H = 1, SGD inner
step), and with one replica to Lookahead."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import Tensor, nn

from elastic_entropy.optim import AdamW, DataParallelAdamW, DiLoCo, Parle, replica_param_groups

DTYPE = torch.float64  # the parity is of the arithmetic: no float32 roundings between orders


def _net(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 3)).to(DTYPE)


def _batches(count: int, seed: int = 1) -> list[tuple[Tensor, Tensor]]:
    g = torch.Generator().manual_seed(seed)
    return [
        (torch.randn(6, 4, generator=g, dtype=DTYPE), torch.randint(0, 3, (6,), generator=g))
        for _ in range(count)
    ]


def _grad(model: nn.Module, batch: tuple[Tensor, Tensor]) -> None:
    model.zero_grad()
    nn.functional.cross_entropy(model(batch[0]), batch[1]).backward()


def _adamw(p: Tensor, g: Tensor, m: Tensor, v: Tensor, t: int, lr: float, wd: float) -> None:
    """AdamW as the paper writes it (betas 0.9, 0.999, eps 1e-8), one tensor."""
    p.mul_(1 - lr * wd)
    m.mul_(0.9).add_(g, alpha=0.1)
    v.mul_(0.999).add_(g * g, alpha=0.001)
    p.sub_(lr * (m / (1 - 0.9**t)) / ((v / (1 - 0.999**t)).sqrt() + 1e-8))


def test_the_adamw_inner_step_is_torchs_adamw_bit_for_bit() -> None:
    """gamma = 0 and one replica: the inner steps before the first outer step are AdamW's."""
    ours, theirs = _net(0), _net(0)
    opt = Parle(
        ours.parameters(), lr=0.1, inner_lr=0.01, num_inner_steps=6, gamma=0.0, rho=0.0,
        weight_decay=0.05, inner_optimizer="adamw", inner_lr_follows_lr=False,
    )  # fmt: skip
    reference = torch.optim.AdamW(theirs.parameters(), lr=0.01, weight_decay=0.05, foreach=False)
    for batch in _batches(5):
        for model, step in ((ours, opt.step), (theirs, reference.step)):
            _grad(model, batch)
            step()
        opt.zero_grad()
        assert all(torch.equal(p, q) for p, q in zip(ours.parameters(), theirs.parameters()))


def test_entropy_adam_is_its_written_out_loop_across_outer_steps() -> None:
    """Two replicas, Parle's outer step around an AdamW inner loop whose gradient carries the
    coupling gamma (y - x), per tensor, over three outer steps."""
    models = [_net(0), _net(7)]
    loops = [copy.deepcopy(m) for m in models]
    lr, inner_lr, gamma, rho, wd, L = 0.5, 0.02, 0.3, 0.7, 0.01, 4
    opt = Parle(
        replica_param_groups(m.parameters() for m in models), lr=lr, inner_lr=inner_lr,
        num_inner_steps=L, gamma=gamma, rho=rho, alpha=0.75, weight_decay=wd,
        inner_optimizer="adamw", inner_lr_follows_lr=False,
    )  # fmt: skip
    ys = [list(m.parameters()) for m in loops]
    xs = [[p.detach().clone() for p in y] for y in ys]
    zs = [[p.detach().clone() for p in y] for y in ys]
    ms = [[torch.zeros_like(p) for p in y] for y in ys]
    vs = [[torch.zeros_like(p) for p in y] for y in ys]
    us = [[torch.zeros_like(p) for p in y] for y in ys]
    batches = _batches(3 * L)
    for t in range(1, len(batches) + 1):
        for a, model in enumerate(models):
            _grad(model, batches[(t - 1 + a) % len(batches)])
        opt.step()
        opt.zero_grad()
        for a, model in enumerate(loops):
            _grad(model, batches[(t - 1 + a) % len(batches)])
            with torch.no_grad():
                for i, y in enumerate(ys[a]):
                    g = y.grad + gamma * (y - xs[a][i])
                    _adamw(y, g, ms[a][i], vs[a][i], t, inner_lr, wd)
                    zs[a][i].mul_(0.75).add_(y, alpha=0.25)
        if t % L == 0:
            with torch.no_grad():
                for i in range(len(ys[0])):
                    r = (zs[0][i] + zs[1][i]) / 2
                    for a in range(2):
                        d = (xs[a][i] - zs[a][i]) + rho * (xs[a][i] - r)
                        us[a][i].mul_(0.9).add_(d)
                        xs[a][i].sub_(lr * (d + 0.9 * us[a][i]))
                        ys[a][i].copy_(xs[a][i])
                        zs[a][i].copy_(xs[a][i])
    for model, loop in zip(models, loops):
        for p, q in zip(model.parameters(), loop.parameters()):
            assert torch.allclose(p, q, rtol=1e-10, atol=1e-12)


def _diloco_loop(
    models: list[nn.Module], batches: list[tuple[Tensor, Tensor]], H: int, outer_lr: float,
    momentum: float, inner: str, inner_lr: float,
) -> list[Tensor]:  # fmt: skip
    """DiLoCo written out: per replica AdamW (or SGD) for H steps, then Nesterov on x - mean y."""
    x = [p.detach().clone() for p in models[0].parameters()]
    u = [torch.zeros_like(p) for p in x]
    inner_opts = [
        torch.optim.AdamW(m.parameters(), lr=inner_lr, weight_decay=0.0, foreach=False)
        if inner == "adamw"
        else torch.optim.SGD(m.parameters(), lr=inner_lr)
        for m in models
    ]
    for t, _ in enumerate(batches, start=1):
        for a, (model, inner_opt) in enumerate(zip(models, inner_opts)):
            _grad(model, batches[(t - 1 + a) % len(batches)])
            inner_opt.step()
        if t % H == 0:
            with torch.no_grad():
                for i, params in enumerate(zip(*(m.parameters() for m in models))):
                    delta = x[i] - sum(params) / len(params)
                    u[i].mul_(momentum).add_(delta)
                    x[i].sub_(outer_lr * (delta + momentum * u[i]))
                    for p in params:
                        p.copy_(x[i])
    return x


def _diloco(
    models: list[nn.Module],
    batches: list[tuple[Tensor, Tensor]],
    steps: int | None = None,
    **kwargs: object,
) -> DiLoCo:
    groups = replica_param_groups(m.parameters() for m in models)
    opt = DiLoCo(groups, **kwargs)  # type: ignore[arg-type]
    for t in range(1, (steps or len(batches)) + 1):
        for a, model in enumerate(models):
            _grad(model, batches[(t - 1 + a) % len(batches)])
        opt.step()
        opt.zero_grad()
    return opt


@pytest.mark.parametrize(
    ("outer_lr", "momentum", "inner"),
    [(0.7, 0.9, "adamw"), (1.0, 0.0, "adamw"), (0.5, 0.0, "sgd")],
    ids=["diloco", "local AdamW (FedAvg)", "sgd inner"],
)
def test_diloco_is_its_written_out_loop_and_its_corners(
    outer_lr: float, momentum: float, inner: str
) -> None:
    """The paper's DiLoCo; outer lr 1 without momentum is local AdamW averaged every H steps
    (the written-out loop is then exactly FedAvg: x = mean y)."""
    models = [_net(0) for _ in range(3)]  # DiLoCo's replicas start equal
    loops = [copy.deepcopy(m) for m in models]
    batches, H = _batches(12), 4
    inner_lr = 0.01 if inner == "adamw" else 0.1
    opt = _diloco(
        models, batches, lr=outer_lr, momentum=momentum, num_inner_steps=H,
        inner_lr=inner_lr, inner_optimizer=inner,
    )  # fmt: skip
    x = _diloco_loop(loops, batches, H, outer_lr, momentum, inner, inner_lr)
    for got, want in zip(opt.reference(), x):
        assert torch.allclose(got, want, rtol=1e-10, atol=1e-12)
    assert opt.comm.stats.num_collectives >= 3  # one mean per H steps: 12 / 4


def test_with_an_sgd_inner_step_and_h_1_diloco_is_data_parallel_sgd_on_an_n_times_batch() -> None:
    models = [_net(0) for _ in range(3)]
    batches = _batches(6)
    opt = _diloco(
        models, batches, lr=1.0, momentum=0.0, num_inner_steps=1, inner_lr=0.2,
        inner_optimizer="sgd",
    )  # fmt: skip
    big = _net(0)
    sgd = torch.optim.SGD(big.parameters(), lr=0.2)
    for t in range(len(batches)):
        three = [batches[(t + a) % len(batches)] for a in range(3)]
        # the mean of three minibatch means: one minibatch three times as large
        big.zero_grad()
        loss = sum(nn.functional.cross_entropy(big(x), y) for x, y in three) / 3
        loss.backward()
        sgd.step()
    for got, want in zip(opt.reference(), big.parameters()):
        assert torch.allclose(got, want, rtol=1e-10, atol=1e-12)


def test_one_replica_of_diloco_is_lookahead_around_adamw() -> None:
    """Lookahead (Zhang et al. 2019): fast weights take k AdamW steps, the slow weights move a
    fraction alpha toward them, the fast restart from the slow; AdamW's state is kept."""
    model, fast = _net(0), _net(0)
    batches, k, alpha = _batches(9), 3, 0.5
    opt = _diloco([model], batches, lr=alpha, momentum=0.0, num_inner_steps=k, inner_lr=0.01)
    slow = [p.detach().clone() for p in fast.parameters()]
    adamw = torch.optim.AdamW(fast.parameters(), lr=0.01, weight_decay=0.0, foreach=False)
    for t, batch in enumerate(batches, start=1):
        _grad(fast, batch)
        adamw.step()
        if t % k == 0:
            with torch.no_grad():
                for s, p in zip(slow, fast.parameters()):
                    s.add_(p - s, alpha=alpha)
                    p.copy_(s)
    for got, want in zip(opt.reference(), slow):
        assert torch.allclose(got, want, rtol=1e-10, atol=1e-12)


def test_a_resumed_diloco_goes_on_exactly() -> None:
    """Mid-round: the Adam moments, the outer momentum and x are in the state_dict."""
    batches = _batches(10)
    whole = [_net(0) for _ in range(2)]
    _diloco(whole, batches, num_inner_steps=4, inner_lr=0.01)
    first = [_net(0) for _ in range(2)]
    cut = _diloco(first, batches, 6, num_inner_steps=4, inner_lr=0.01)
    state = copy.deepcopy(cut.state_dict())
    second = [copy.deepcopy(m) for m in first]
    groups = replica_param_groups(m.parameters() for m in second)
    opt = DiLoCo(groups, num_inner_steps=4, inner_lr=0.01)
    opt.load_state_dict(state)
    for t in range(6, 10):
        for a, model in enumerate(second):
            _grad(model, batches[(t + a) % len(batches)])
        opt.step()
        opt.zero_grad()
    for p, q in zip(
        (p for m in whole for p in m.parameters()), (p for m in second for p in m.parameters())
    ):
        assert torch.equal(p, q)


def test_bad_diloco_settings_are_one_line() -> None:
    params = _net(0).parameters
    for kwargs, message in (
        ({"num_inner_steps": 0}, "DiLoCo's H"),
        ({"betas": (0.9, 1.0)}, "Invalid betas value"),
        ({"eps": 0.0}, "Invalid eps value"),
        ({"inner_optimizer": "lion"}, "choose sgd or adamw"),
    ):
        with pytest.raises(ValueError, match=message):
            DiLoCo(params(), **kwargs)  # type: ignore[arg-type]


def test_the_adamw_corner_is_torchs_adamw_bit_for_bit_on_every_replica() -> None:
    models, theirs = [_net(0), _net(3)], [_net(0), _net(3)]
    opt = AdamW(
        replica_param_groups(m.parameters() for m in models), lr=0.01, weight_decay=0.1,
        betas=(0.8, 0.99), eps=1e-6,
    )  # fmt: skip
    references = [
        torch.optim.AdamW(m.parameters(), lr=0.01, weight_decay=0.1, betas=(0.8, 0.99), eps=1e-6,
                          foreach=False)
        for m in theirs
    ]  # fmt: skip
    for t, _ in enumerate(_batches(6)):
        batches = _batches(6)
        for a in range(2):
            _grad(models[a], batches[(t + a) % 6])
            _grad(theirs[a], batches[(t + a) % 6])
            references[a].step()
        opt.step()
        opt.zero_grad()
    for model, reference in zip(models, theirs):
        assert all(torch.equal(p, q) for p, q in zip(model.parameters(), reference.parameters()))


def test_data_parallel_adamw_is_adamw_on_an_n_times_batch() -> None:
    models = [_net(0) for _ in range(3)]
    opt = DataParallelAdamW(replica_param_groups(m.parameters() for m in models), lr=0.01)
    big = _net(0)
    adamw = torch.optim.AdamW(big.parameters(), lr=0.01, weight_decay=0.0, foreach=False)
    batches = _batches(6)
    for t in range(len(batches)):
        three = [batches[(t + a) % len(batches)] for a in range(3)]
        for model, batch in zip(models, three):
            _grad(model, batch)
        opt.step()
        opt.zero_grad()
        big.zero_grad()
        (sum(nn.functional.cross_entropy(big(x), y) for x, y in three) / 3).backward()
        adamw.step()
    for model in models:  # every replica the same, and AdamW's on the large batch
        for p, q in zip(model.parameters(), big.parameters()):
            assert torch.allclose(p, q, rtol=1e-10, atol=1e-12)
