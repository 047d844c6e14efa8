"""The flatness measures held to what is known exactly: a quadratic
``f(w) = (w - c)^T A (w - c) / 2`` run through the same code path as a network (an nn.Module whose
parameters are ``w``), and a small MLP against its dense Hessian."""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np
import pytest
import torch
from torch import Tensor, nn

from elastic_entropy.flatness import (
    TrainingLoss,
    default_inner_lr,
    gibbs_chain,
    hessian_trace,
    local_entropy,
    measure,
    perturbation_rises,
    top_eigenvalue,
)
from elastic_entropy.local_entropy import pde
from elastic_entropy.local_entropy.landscapes import double_well

D = 17  # w = weight (3 x 4) and bias (5): two tensors, one vector


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    """Tensors of a few dozen numbers: a second intra-op thread only waits for the first, and on
    a loaded machine that wait makes these tests ten times slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


class Quadratic(nn.Module):
    """``f(w) = (w - c)^T A (w - c) / 2`` whatever the input."""

    def __init__(self, a: Tensor, c: Tensor, w: Tensor) -> None:
        super().__init__()
        self.weight = nn.Parameter(w[:12].reshape(3, 4).clone())
        self.bias = nn.Parameter(w[12:].clone())
        self.register_buffer("a", a)
        self.register_buffer("c", c)

    def forward(self, x: Tensor) -> Tensor:
        delta = torch.cat([self.weight.reshape(-1), self.bias]) - self.c
        return 0.5 * delta @ self.a @ delta + 0.0 * x.sum()


def _value(out: Tensor, y: Tensor) -> Tensor:
    return out


def _spd(eigenvalues: list[float], seed: int = 0) -> Tensor:
    generator = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(D, D, generator=generator, dtype=torch.float64))
    return q @ torch.diag(torch.tensor(eigenvalues, dtype=torch.float64)) @ q.T


def _quadratic(a: Tensor, at_minimum: bool = False, seed: int = 1) -> TrainingLoss:
    generator = torch.Generator().manual_seed(seed)
    c = torch.randn(D, generator=generator, dtype=torch.float64)
    w = c.clone() if at_minimum else torch.randn(D, generator=generator, dtype=torch.float64)
    # two chunks of 3 and 1 samples: their weights 3/4 and 1/4 must add up to f
    batches = [(torch.zeros(3, 2), torch.zeros(3)), (torch.zeros(1, 2), torch.zeros(1))]
    return TrainingLoss(Quadratic(a, c, w).double(), batches, _value)


EIGS = [4.0, 2.5, 2.0, 1.5, 1.2, 1.0, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1, 0.05, 0.02, 0.0]


def test_hvp_and_value_are_the_quadratic() -> None:
    a = _spd(EIGS)
    loss = _quadratic(a)
    w, c = loss.get(), loss.model.c
    v = torch.randn(D, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    assert loss.value() == pytest.approx(float(0.5 * (w - c) @ a @ (w - c)), rel=1e-14)
    torch.testing.assert_close(loss.hvp(v), a @ v, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(loss.value_and_grad()[1], a @ (w - c), rtol=1e-12, atol=1e-12)


def test_top_eigenvalue_is_the_largest_eigenvalue_of_a() -> None:
    loss = _quadratic(_spd(EIGS))
    top = top_eigenvalue(loss, iterations=500, tolerance=1e-14, seed=0)
    assert top.is_converged
    assert top.value == pytest.approx(max(EIGS), rel=1e-10)
    capped = top_eigenvalue(loss, iterations=3, tolerance=1e-14, seed=0)
    assert not capped.is_converged and capped.iterations == 3


def test_top_eigenvalue_at_a_saddle_is_the_top_one_not_the_largest_in_size() -> None:
    eigs = [-8.0, 3.0, 2.0, *[1.0 / k for k in range(1, D - 2)]]
    top = top_eigenvalue(_quadratic(_spd(eigs)), iterations=2000, tolerance=1e-13, seed=0)
    assert top.value == pytest.approx(3.0, rel=1e-8)


def test_hutchinson_is_exact_for_a_diagonal_hessian() -> None:
    a = torch.diag(torch.tensor(EIGS, dtype=torch.float64))
    trace = hessian_trace(_quadratic(a), probes=3, seed=5)
    assert trace.value == pytest.approx(sum(EIGS), rel=1e-14)
    assert trace.stderr == pytest.approx(0.0, abs=1e-12)


def test_hutchinson_is_within_its_standard_error_of_the_trace() -> None:
    a = _spd(EIGS)
    probes = 1000
    trace = hessian_trace(_quadratic(a), probes=probes, seed=5)
    # the variance of one Rademacher probe is 2 sum_{i != j} A_ij^2
    off = float((a**2).sum() - (torch.diagonal(a) ** 2).sum())
    assert trace.stderr == pytest.approx(math.sqrt(2 * off / probes), rel=0.15)
    assert abs(trace.value - sum(EIGS)) < 4 * trace.stderr


def test_rises_at_the_minimum_of_an_isotropic_quadratic_are_exact() -> None:
    a = 2.5 * torch.eye(D, dtype=torch.float64)
    loss = _quadratic(a, at_minimum=True)
    size = float(loss.get().norm())
    for rise in perturbation_rises(loss, [0.01, 0.1], draws=4, seed=0):
        expected = 0.5 * rise.radius**2 * size**2 * 2.5
        assert rise.mean == pytest.approx(expected, rel=1e-12)
        assert rise.max == pytest.approx(expected, rel=1e-12)


def test_mean_rise_is_r2_w2_trace_over_2d() -> None:
    a = _spd(EIGS)
    loss = _quadratic(a)  # away from the minimum: the linear term averages out
    size = float(loss.get().norm())
    for rise in perturbation_rises(loss, [0.02, 0.05], draws=3000, seed=0):
        expected = rise.radius**2 * size**2 * sum(EIGS) / (2 * D)
        assert abs(rise.mean - expected) < 4 * rise.stderr, (rise, expected)


def test_weights_are_restored_bitwise_even_when_the_loss_fails() -> None:
    loss = _quadratic(_spd(EIGS))
    before = [p.detach().clone() for p in loss.params]
    perturbation_rises(loss, [0.013, 0.1, 0.37], draws=5, seed=0)
    assert all(torch.equal(p, q) for p, q in zip(loss.params, before))
    calls = []

    def failing(out: Tensor, y: Tensor) -> Tensor:
        calls.append(1)
        if len(calls) > 6:  # the base value and a few perturbed ones, then it breaks
            raise RuntimeError("out of memory")
        return out

    loss.loss_fn = failing
    with pytest.raises(RuntimeError, match="out of memory"):
        perturbation_rises(loss, [0.3], draws=5, seed=0)
    assert all(torch.equal(p, q) for p, q in zip(loss.params, before))


def _gibbs_mean(a: Tensor, c: Tensor, x: Tensor, strength: float, gamma: float) -> Tensor:
    """The mode (= mean) of exp(-beta (strength f(y) + gamma |x - y|^2 / 2)):
    (strength A + gamma I) <y> = strength A c + gamma x."""
    k = strength * a + gamma * torch.eye(D, dtype=torch.float64)
    return torch.linalg.solve(k, strength * a @ c + gamma * x)


def _chain_mean_loss(
    a: Tensor, c: Tensor, x: Tensor, strength: float, gamma: float, noise: float, lr: float
) -> float:
    """E[f(y)] under the chain's own stationary law: mean as above, covariance
    noise^2 K^{-1} (I - lr K / 2)^{-1} for K = strength A + gamma I (Euler-Maruyama's bias)."""
    k = strength * a + gamma * torch.eye(D, dtype=torch.float64)
    kappa, q = torch.linalg.eigh(k)
    cov = q @ torch.diag(noise**2 / (kappa * (1 - lr * kappa / 2))) @ q.T
    mu = _gibbs_mean(a, c, x, strength, gamma)
    return float(0.5 * torch.trace(a @ cov) + 0.5 * (mu - c) @ a @ (mu - c))


def test_noiseless_chain_converges_to_the_proximal_point() -> None:
    a = _spd(EIGS)
    loss = _quadratic(a)
    x, c, gamma = loss.get(), loss.model.c, 0.7
    lr = default_inner_lr(max(EIGS), gamma)
    chain = gibbs_chain(
        loss, x, strength=1.0, gamma=gamma, noise=0.0, inner_lr=lr, num_steps=2000,
        generator=torch.Generator().manual_seed(0),
    )  # fmt: skip
    torch.testing.assert_close(chain.mean_y, _gibbs_mean(a, c, x, 1.0, gamma), rtol=0, atol=1e-11)
    assert torch.equal(loss.get(), x)  # x back in the parameters


# at the minimum only the temperature's part is left: E[f] = tr(A Sigma) / 2 and
# f_gamma = noise^2 / 2 sum_i log(1 + a_i / gamma), so a wrong temperature cannot hide in the noise
@pytest.mark.parametrize("at_minimum", [False, True], ids=["away", "at the minimum"])
def test_noisy_chain_mean_and_loss_match_the_gibbs_measure(at_minimum: bool) -> None:
    a = _spd(EIGS)
    loss = _quadratic(a, at_minimum=at_minimum)
    x, c, gamma, noise = loss.get(), loss.model.c, 1.0, 0.3
    lr = default_inner_lr(max(EIGS), gamma)
    steps = 5000
    chain = gibbs_chain(
        loss, x, strength=1.0, gamma=gamma, noise=noise, inner_lr=lr, num_steps=steps,
        generator=torch.Generator().manual_seed(0),
    )  # fmt: skip
    expected = _chain_mean_loss(a, c, x, 1.0, gamma, noise, lr)
    assert abs(chain.mean_loss - expected) < 4 * chain.loss_stderr, (chain, expected)
    # the error of <y>: per eigen-direction an AR(1) chain with phi = 1 - lr k
    kappa = torch.linalg.eigvalsh(a + gamma * torch.eye(D, dtype=torch.float64))
    phi = 1 - lr * kappa
    var = noise**2 / (kappa * (1 - lr * kappa / 2)) * (1 + phi) / (1 - phi) / (steps / 2)
    error = float((chain.mean_y - _gibbs_mean(a, c, x, 1.0, gamma)).square().sum())
    assert error < 9 * float(var.sum())


def _moreau(a: Tensor, c: Tensor, x: Tensor, gamma: float, noise: float) -> float:
    """f_gamma of the quadratic: delta^T A (I + A/gamma)^{-1} delta / 2
    + noise^2 / 2 sum_i log(1 + a_i / gamma)."""
    eye = torch.eye(D, dtype=torch.float64)
    delta = x - c
    smooth = 0.5 * delta @ a @ torch.linalg.solve(eye + a / gamma, delta)
    return float(smooth + noise**2 / 2 * torch.log1p(torch.linalg.eigvalsh(a) / gamma).sum())


def test_noiseless_local_entropy_is_the_moreau_envelope() -> None:
    a = _spd(EIGS)
    loss = _quadratic(a)
    x, c, gamma = loss.get(), loss.model.c, 2.0
    lr = default_inner_lr(max(EIGS), gamma)
    found = local_entropy(
        loss, gamma=gamma, noise=0.0, inner_lr=lr, num_inner_steps=600, num_nodes=8, seed=0
    )
    assert found.local_entropy == pytest.approx(_moreau(a, c, x, gamma, 0.0), rel=1e-8)
    assert found.local_entropy_stderr < 1e-9  # gradient descent: no sampling error
    mu = _gibbs_mean(a, c, x, 1.0, gamma)
    assert found.grad_norm == pytest.approx(gamma * float((x - mu).norm()), rel=1e-9)
    assert found.gibbs_loss == pytest.approx(
        float(0.5 * (mu - c) @ a @ (mu - c)), rel=1e-9
    )  # the loss at the proximal point
    assert found.loss == pytest.approx(loss.value(), rel=0)
    assert torch.equal(loss.get(), x)


# at the minimum only the temperature's part is left: E[f] = tr(A Sigma) / 2 and
# f_gamma = noise^2 / 2 sum_i log(1 + a_i / gamma), so a wrong temperature cannot hide in the noise
@pytest.mark.parametrize("at_minimum", [False, True], ids=["away", "at the minimum"])
def test_noisy_local_entropy_is_the_closed_form_within_its_errors(at_minimum: bool) -> None:
    a = _spd(EIGS)
    loss = _quadratic(a, at_minimum=at_minimum)
    x, c, gamma, noise, nodes = loss.get(), loss.model.c, 2.0, 0.5, 3
    lr = default_inner_lr(max(EIGS), gamma)
    found = local_entropy(
        loss, gamma=gamma, noise=noise, inner_lr=lr, num_inner_steps=1200, num_nodes=nodes, seed=0
    )
    # the integral of the chains' own E_lambda[f] (their lr bias included) by the same rule
    s, w = np.polynomial.legendre.leggauss(nodes)
    quadrature = sum(
        wk / 2 * _chain_mean_loss(a, c, x, (sk + 1) / 2, gamma, noise, lr) for sk, wk in zip(s, w)
    )
    assert abs(found.local_entropy - quadrature) < 4 * found.local_entropy_stderr
    # and that rule is the closed form up to the chains' bias (a few lr * curvature)
    exact = _moreau(a, c, x, gamma, noise)
    assert quadrature == pytest.approx(exact, rel=0.05)
    assert abs(found.local_entropy - exact) < 0.05 * exact + 4 * found.local_entropy_stderr
    expected = _chain_mean_loss(a, c, x, 1.0, gamma, noise, lr)
    assert abs(found.gibbs_loss - expected) < 4 * found.gibbs_loss_stderr


class Wells(nn.Module):
    """``f(y) = sum_i g(y_i)`` for the double well ``g``: independent coordinates, so that
    ``f_gamma(x) = sum_i g_gamma(x_i)`` and every coordinate is one more sample of a 1-D chain."""

    def __init__(self, x0: float, num: int, barrier: float) -> None:
        super().__init__()
        self.y = nn.Parameter(torch.full((num,), x0, dtype=torch.float64))
        self.barrier = barrier

    def forward(self, x: Tensor) -> Tensor:
        return double_well(self.y, self.barrier).sum()


def test_local_entropy_of_double_wells_is_the_hopf_cole_quadrature() -> None:
    """Off the quadratics: the 1-D toolkit's quadrature of ``f_gamma`` and ``<y>`` (Hopf-Cole,
    ``t = 1 / gamma``, ``beta = 1 / noise^2``) against the chains, on 1,024 copies of a double well
    (a barrier of 0.25 the chains cross many times at this temperature)."""
    num, x0, gamma, noise, barrier = 1024, 0.3, 1.0, 0.5, 0.25
    loss = TrainingLoss(Wells(x0, num, barrier), [(torch.zeros(1), torch.zeros(1))], _value)
    grid = np.linspace(-6.0, 6.0, 24001)
    beta = 1.0 / noise**2
    well = double_well(grid, barrier)
    exact = float(pde.local_entropy(well, grid, t=1.0 / gamma, beta=beta, query=[x0])[0])
    found = local_entropy(
        loss, gamma=gamma, noise=noise, inner_lr=0.01, num_inner_steps=1000, num_nodes=4, seed=0
    )
    assert abs(found.local_entropy / num - exact) < 4 * found.local_entropy_stderr / num
    chain = gibbs_chain(
        loss, loss.get(), strength=1.0, gamma=gamma, noise=noise, inner_lr=0.01, num_steps=1000,
        generator=torch.Generator().manual_seed(1),
    )  # fmt: skip
    mean = float(pde.gibbs_mean(lambda y: double_well(y, barrier), x0, t=1.0 / gamma, beta=beta))
    spread = float(chain.mean_y.std()) / math.sqrt(num)  # the coordinates are independent chains
    assert abs(float(chain.mean_y.mean()) - mean) < 4 * spread


class MLP(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(5, 6), nn.BatchNorm1d(6), nn.Tanh(), nn.Dropout(0.5), nn.Linear(6, 3)
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


def _mlp() -> tuple[MLP, list[tuple[Tensor, Tensor]]]:
    torch.manual_seed(0)
    model = MLP().double()
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(24, 5, generator=generator, dtype=torch.float64)
    y = torch.randint(0, 3, (24,), generator=generator)
    model.train()
    with torch.no_grad():
        model(x)  # BatchNorm running statistics that are not the defaults
    return model, [(x[:16], y[:16]), (x[16:], y[16:])]


def _dense_hessian(model: nn.Module, batches: list[tuple[Tensor, Tensor]]) -> Tensor:
    """The Hessian of the eval-mode loss over all parameters, by autograd.functional."""
    names = [n for n, _ in model.named_parameters()]
    shapes = [p.shape for p in model.parameters()]
    sizes = [p.numel() for p in model.parameters()]
    x = torch.cat([xb for xb, _ in batches])
    y = torch.cat([yb for _, yb in batches])

    def f(w: Tensor) -> Tensor:
        params = {n: t.view(s) for n, t, s in zip(names, torch.split(w, sizes), shapes)}
        out = torch.func.functional_call(model, params, (x,))
        return nn.functional.cross_entropy(out, y)

    model.eval()
    w = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    hessian = torch.autograd.functional.hessian(f, w)
    model.train()
    return hessian


def test_mlp_measures_match_its_dense_hessian_in_eval_mode() -> None:
    model, batches = _mlp()
    hessian = _dense_hessian(model, batches)
    eigs = torch.linalg.eigvalsh(hessian)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    result = measure(
        model, batches, iterations=300, tolerance=1e-10, probes=100, radii=[0.001], draws=2,
        num_inner_steps=0, seed=0,
    )  # fmt: skip
    assert model.training and all(m.training for m in model.modules())  # modes given back
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    top = float(eigs.max())
    assert result["top_eigenvalue_converged"]
    assert result["top_eigenvalue"] == pytest.approx(top, rel=1e-5)
    assert abs(result["trace"] - float(torch.trace(hessian))) < 4 * result["trace_stderr"]
    assert result["num_parameters"] == hessian.shape[0] and result["num_samples"] == 24
    model.eval()
    loss = TrainingLoss(model, batches)
    v = torch.randn(hessian.shape[0], generator=torch.Generator().manual_seed(2)).double()
    torch.testing.assert_close(loss.hvp(v), hessian @ v, rtol=1e-10, atol=1e-12)
    assert "local_entropy" not in result


def test_measure_is_deterministic_per_seed_and_reports_the_local_entropy() -> None:
    model, batches = _mlp()
    kwargs = dict(
        iterations=20, probes=4, radii=[0.01, 0.1], draws=2, num_inner_steps=10, num_nodes=2
    )
    first = measure(model, batches, seed=3, **kwargs)
    assert measure(model, batches, seed=3, **kwargs) == first
    assert measure(model, batches, seed=4, **kwargs)["trace"] != first["trace"]
    entropy = first["local_entropy"]
    assert entropy["inner_lr"] == pytest.approx(default_inner_lr(first["top_eigenvalue"], 1.0))
    assert entropy["loss"] == pytest.approx(first["loss"])
    assert [r["radius"] for r in first["rises"]] == [0.01, 0.1]


def test_a_sequence_model_is_measured_on_its_next_token_loss() -> None:
    """``[B, T, V]`` logits, as the language models' passes train them: the mean over tokens."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Embedding(5, 4), nn.Tanh(), nn.Linear(4, 5)).double()
    generator = torch.Generator().manual_seed(1)
    x = torch.randint(0, 5, (6, 7), generator=generator)
    y = torch.randint(0, 5, (6, 7), generator=generator)
    loss = TrainingLoss(model, [(x[:4], y[:4]), (x[4:], y[4:])])
    every = nn.functional.cross_entropy(model(x).reshape(-1, 5), y.reshape(-1))
    assert loss.value() == pytest.approx(float(every.detach()), rel=1e-12)
    result = measure(model, [(x, y)], iterations=20, probes=2, radii=[0.1], draws=1,
                     num_inner_steps=4, num_nodes=1)  # fmt: skip
    assert math.isfinite(result["top_eigenvalue"]) and math.isfinite(result["trace"])
