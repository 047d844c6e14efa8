"""Parle against torch.optim.SGD and against the spec's equations, written out per tensor."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

from elastic_entropy.models import cnn1d
from elastic_entropy.optim import SGD, ElasticSGD, EntropySGD, Parle, replica_param_groups
from elastic_entropy.scoping import Schedule


def _model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return cnn1d((40,), 10, channels=8, batchnorm=True)


def _batches(num: int, seed: int = 1) -> list[tuple[torch.Tensor, torch.Tensor]]:
    generator = torch.Generator().manual_seed(seed)
    return [
        (torch.randn(16, 40, generator=generator), torch.randint(0, 10, (16,), generator=generator))
        for _ in range(num)
    ]


def _assert_matches_torch_sgd(make, nesterov: bool, weight_decay: float, steps: int) -> None:
    ours, theirs = _model(), _model()
    opt = make(ours.parameters())
    ref = torch.optim.SGD(
        theirs.parameters(), lr=0.05, momentum=0.9, nesterov=nesterov, weight_decay=weight_decay
    )
    for x, y in _batches(steps):
        for model, optimizer in ((ours, opt), (theirs, ref)):
            optimizer.zero_grad()
            nn.functional.cross_entropy(model(x), y).backward()
            optimizer.step()
    for p, q in zip(ours.parameters(), theirs.parameters()):
        torch.testing.assert_close(p, q, rtol=0, atol=1e-6)
    for b, c in zip(ours.buffers(), theirs.buffers()):
        torch.testing.assert_close(b, c, rtol=0, atol=1e-6)


@pytest.mark.parametrize("nesterov", [True, False])
@pytest.mark.parametrize("weight_decay", [0.0, 1e-3])
def test_sgd_corner_matches_torch_sgd(nesterov: bool, weight_decay: float) -> None:
    def make(params):
        return Parle(
            params,
            lr=0.05,
            momentum=0.9,
            nesterov=nesterov,
            num_inner_steps=0,
            rho=0.0,
            weight_decay=weight_decay,
        )

    _assert_matches_torch_sgd(make, nesterov, weight_decay, steps=40)


def test_sgd_preset_is_the_same_corner() -> None:
    def make(params):
        return SGD(params, lr=0.05, momentum=0.9, weight_decay=1e-4)

    _assert_matches_torch_sgd(make, True, 1e-4, steps=10)


# ---------------------------------------------------------------- the spec, written out per tensor
class SpecParle:
    """The update of Parle (Chaudhari et al., SysML 2018) as plain per-tensor Python, for n
    replicas in lockstep."""

    def __init__(
        self,
        params: list[list[torch.Tensor]],
        *,
        lr,
        inner_lr,
        momentum,
        L,
        gamma: Schedule,
        rho: Schedule,
        alpha,
        weight_decay,
        stale: bool = False,
    ) -> None:
        self.y = [[p.detach().clone() for p in ps] for ps in params]
        self.x = copy.deepcopy(self.y)
        self.z = copy.deepcopy(self.y)
        self.v = [[torch.zeros_like(p) for p in ps] for ps in self.y]
        self.u = [[torch.zeros_like(p) for p in ps] for ps in self.y]
        self.lr, self.inner_lr, self.m, self.L = lr, inner_lr, momentum, L
        self.gamma, self.rho, self.alpha, self.wd = gamma, rho, alpha, weight_decay
        self.calls = 0
        self.stale = stale  # overlap=True: the outer step uses the previous outer step's mean
        self.previous_r = None

    def step(self, grads: list[list[torch.Tensor]]) -> None:
        n, m = len(self.y), self.m
        if self.L == 0:
            rho = self.rho.value
            xbar = [sum(self.y[a][k] for a in range(n)) / n for k in range(len(self.y[0]))]
            for a in range(n):
                for k, g in enumerate(grads[a]):
                    d = g + self.wd * self.y[a][k] + rho * (self.y[a][k] - xbar[k])
                    self.u[a][k] = m * self.u[a][k] + d
                    self.y[a][k] = self.y[a][k] - self.lr * (d + m * self.u[a][k])
            self.gamma.step()
            self.rho.step()
            return
        gamma = self.gamma.value
        for a in range(n):
            for k, g in enumerate(grads[a]):
                y, x = self.y[a][k], self.x[a][k]
                gg = g + self.wd * y + gamma * (y - x)
                self.v[a][k] = m * self.v[a][k] + gg
                y = y - self.inner_lr * (gg + m * self.v[a][k])
                self.y[a][k] = y
                self.z[a][k] = self.alpha * self.z[a][k] + (1 - self.alpha) * y
        self.calls += 1
        if self.calls % self.L:
            return
        rho = self.rho.value
        r = [sum(self.z[a][k] for a in range(n)) / n for k in range(len(self.y[0]))]
        if self.stale:
            r, self.previous_r = (self.previous_r or r), r
        for a in range(n):
            for k in range(len(self.y[a])):
                x = self.x[a][k]
                d = (x - self.z[a][k]) + rho * (x - r[k])
                self.u[a][k] = m * self.u[a][k] + d
                x = x - self.lr * (d + m * self.u[a][k])
                self.x[a][k] = x
                self.y[a][k] = x.clone()
                self.z[a][k] = x.clone()
        self.gamma.step()
        self.rho.step()


def _quadratic_problem(dim: int = 6, seed: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    a = torch.randn(dim, dim, generator=generator)
    return a @ a.T / dim + 0.1 * torch.eye(dim), torch.randn(dim, generator=generator)


def _full_batch_grad(
    params: list[torch.Tensor], curvature: torch.Tensor, target: torch.Tensor, replica: int
):
    """Gradient of a full-batch nonlinear loss; each replica gets its own shift so they differ."""
    w, b = params
    loss = 0.5 * (w - target - 0.1 * replica) @ curvature @ (w - target - 0.1 * replica)
    loss = loss + torch.cos(w).sum() * 0.1 + (b**2).sum() * 0.5 + (w[:2] * b).sum() * 0.2
    return torch.autograd.grad(loss, [w, b])


def _run_both(num_replicas: int, steps: int, make_opt, spec_kwargs) -> None:
    torch.manual_seed(0)
    init = [torch.randn(6), torch.randn(2)]
    replicas = [[nn.Parameter(t.clone()) for t in init] for _ in range(num_replicas)]
    opt = make_opt(replica_param_groups(replicas))
    spec = SpecParle([[t.clone() for t in init] for _ in range(num_replicas)], **spec_kwargs)
    curvature, target = _quadratic_problem()
    for _ in range(steps):
        for a, params in enumerate(replicas):
            for p, g in zip(params, _full_batch_grad(params, curvature, target, a)):
                p.grad.copy_(g)
        spec_grads = []
        for a in range(num_replicas):
            ys = [t.clone().requires_grad_(True) for t in spec.y[a]]
            spec_grads.append([g.detach() for g in _full_batch_grad(ys, curvature, target, a)])
        opt.step()
        spec.step(spec_grads)
        for a in range(num_replicas):
            for p, y in zip(replicas[a], spec.y[a]):
                torch.testing.assert_close(p.detach(), y, rtol=1e-5, atol=1e-6)
    for a in range(num_replicas):
        for p_anchor, x in zip(opt.anchors(a), spec.x[a] if spec.L else spec.y[a]):
            torch.testing.assert_close(p_anchor, x, rtol=1e-5, atol=1e-6)


def test_entropy_sgd_follows_the_spec() -> None:
    kwargs = dict(lr=0.7, inner_lr=0.05, momentum=0.9, alpha=0.75, weight_decay=1e-3)
    _run_both(
        1,
        40,
        lambda groups: EntropySGD(
            groups, num_inner_steps=5, gamma_schedule=Schedule(0.03, 0.2, 0.1), **kwargs
        ),
        dict(L=5, gamma=Schedule(0.03, 0.2, 0.1), rho=Schedule(0.0), **kwargs),
    )


def test_elastic_sgd_two_replicas_follows_the_spec() -> None:
    kwargs = dict(lr=0.05, momentum=0.9, weight_decay=1e-3)
    _run_both(
        2,
        30,
        lambda groups: ElasticSGD(groups, rho_schedule=Schedule(0.5, 0.1, 5.0), **kwargs),
        dict(
            L=0,
            inner_lr=None,
            alpha=0.0,
            gamma=Schedule(0.0),
            rho=Schedule(0.5, 0.1, 5.0),
            **kwargs,
        ),
    )


def test_parle_three_replicas_follows_the_spec() -> None:
    kwargs = dict(lr=0.1, inner_lr=0.05, momentum=0.9, alpha=0.75, weight_decay=1e-4)
    _run_both(
        3,
        36,
        lambda groups: Parle(
            groups,
            num_inner_steps=4,
            gamma_schedule=Schedule(0.03, 0.5, 1.0),
            rho_schedule=Schedule(1.0, 0.5, 8.0),
            **kwargs,
        ),
        dict(L=4, gamma=Schedule(0.03, 0.5, 1.0), rho=Schedule(1.0, 0.5, 8.0), **kwargs),
    )


def test_parle_reference_is_the_mean_of_anchors() -> None:
    replicas = [[nn.Parameter(torch.randn(5)), nn.Parameter(torch.randn(3, 2))] for _ in range(3)]
    opt = Parle(replica_param_groups(replicas), lr=0.1, num_inner_steps=2, rho=1.0)
    for _ in range(5):  # mid outer step at the end: anchors differ from the live parameters
        for params in replicas:
            for p in params:
                p.grad.copy_(torch.randn_like(p))
        opt.step()
    for k, ref in enumerate(opt.reference()):
        expected = sum(opt.anchors(a)[k] for a in range(3)) / 3
        torch.testing.assert_close(ref, expected)
    assert not opt.is_outer_step_done
    assert not torch.equal(opt.anchors(0)[0], replicas[0][0].detach())
    assert math.isclose(opt.rho_schedule.value, 1.0)


def test_parle_overlap_follows_the_stale_spec() -> None:
    """overlap=True: r of outer step t is the mean of z at outer step t - 1."""
    kwargs = dict(lr=0.1, inner_lr=0.05, momentum=0.9, alpha=0.75, weight_decay=1e-4)
    _run_both(
        3,
        24,
        lambda groups: Parle(
            groups, num_inner_steps=4, gamma=0.03, rho=2.0, overlap=True, **kwargs
        ),
        dict(L=4, gamma=Schedule(0.03), rho=Schedule(2.0), stale=True, **kwargs),
    )


def test_data_parallel_sgd_is_sgd_on_the_averaged_gradient() -> None:
    """Two replicas, two minibatches: both take the torch SGD step of the mean gradient."""
    from elastic_entropy.optim import DataParallelSGD

    replicas = [_model(), _model()]
    reference = _model()
    opt = DataParallelSGD(
        replica_param_groups(m.parameters() for m in replicas), lr=0.05, weight_decay=1e-3
    )
    ref = torch.optim.SGD(
        reference.parameters(), lr=0.05, momentum=0.9, nesterov=True, weight_decay=1e-3
    )
    for (x1, y1), (x2, y2) in zip(_batches(15, seed=1), _batches(15, seed=2)):
        for m, (x, y) in zip(replicas, ((x1, y1), (x2, y2))):
            nn.functional.cross_entropy(m(x), y).backward()
        ref.zero_grad()
        # the mean of the two minibatch gradients, computed on the reference model
        for x, y in ((x1, y1), (x2, y2)):
            (nn.functional.cross_entropy(reference(x), y) / 2).backward()
        opt.step()
        opt.zero_grad()
        ref.step()
    for p0, p1, q in zip(
        replicas[0].parameters(), replicas[1].parameters(), reference.parameters()
    ):
        assert torch.equal(p0, p1)
        torch.testing.assert_close(p0, q, rtol=1e-5, atol=1e-6)
    assert opt.comm.stats.num_collectives == 15
