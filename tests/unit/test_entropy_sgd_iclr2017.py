"""``EntropySGD(variant="iclr2017")`` against the Entropy-SGD authors' update, written out per
tensor as ucla-vision/entropy-sgd's ``python/optim.py`` has it: the inner momentum reset every
outer step, momentum on the gradient (+ weight decay) alone, the coupling and the Langevin noise
added after it, weight decay in the outer step too."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from elastic_entropy.optim import EntropySGD
from elastic_entropy.scoping import Schedule

LR, LLR, MOM, WD, EPS, ALPHA = 0.5, 0.1, 0.9, 1e-3, 1e-2, 0.75
L, OUTER = 4, 3
GAMMA0, GAMMA_RATE = 0.03, 0.2


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(5, 7), nn.Tanh(), nn.Linear(7, 3)).double()


def _batches() -> list[tuple[torch.Tensor, torch.Tensor]]:
    generator = torch.Generator().manual_seed(1)
    return [
        (
            torch.randn(8, 5, generator=generator, dtype=torch.float64),
            torch.randint(0, 3, (8,), generator=generator),
        )
        for _ in range(L * OUTER)
    ]


def _grads(model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> list[torch.Tensor]:
    model.zero_grad()
    nn.functional.cross_entropy(model(batch[0]), batch[1]).backward()
    return [p.grad.detach().clone() for p in model.parameters()]


def _ours(noise: float) -> tuple[list[list[torch.Tensor]], list[list[torch.Tensor]]]:
    """Our optimizer's inner iterates after every minibatch, and the noise each step drew."""
    model = _model()
    opt = EntropySGD(
        model.parameters(),
        lr=LR,
        inner_lr=LLR,
        momentum=MOM,
        num_inner_steps=L,
        alpha=ALPHA,
        noise=noise,
        weight_decay=WD,
        gamma_schedule=Schedule(GAMMA0, GAMMA_RATE, 1.0),
        seed=3,
        variant="iclr2017",
    )
    iterates, noises = [], []
    for batch in _batches():
        opt.zero_grad()
        nn.functional.cross_entropy(model(batch[0]), batch[1]).backward()
        opt.step()
        iterates.append([p.detach().clone() for p in model.parameters()])
        (storage,) = opt.buffers.storages.values()
        drawn = storage.noise[0] if storage.noise is not None else None
        # the step's standard normals, cut into the parameters' shapes (the flat layout's order)
        cut, start = [], 0
        for p in model.parameters():
            piece = drawn[start : start + p.numel()] if drawn is not None else torch.zeros(0)
            cut.append(piece.view_as(p).clone() if drawn is not None else torch.zeros_like(p))
            start += p.numel()
        noises.append(cut)
    return iterates, noises


def _authors(noises: list[list[torch.Tensor]], noise: float) -> list[list[torch.Tensor]]:
    """python/optim.py's ``EntropySGD.step``, one call per outer step, per tensor; its ``eta``
    is the negative of our ``xi`` (one law: ``y += eps sqrt(2 llr) xi`` here)."""
    model = _model()
    params = list(model.parameters())
    batches = iter(_batches())
    outer_mdw = [torch.zeros_like(p) for p in params]  # theirs starts at a first gradient
    iterates = []
    for t in range(OUTER):
        wc = [p.detach().clone() for p in params]
        mw = [p.detach().clone() for p in params]
        mdw = [torch.zeros_like(p) for p in params]  # lp['mdw'][i].zero_(): reset every step
        g = min(GAMMA0 * (1 + GAMMA_RATE) ** t, 1.0)
        for i in range(L):
            grads = _grads(model, next(batches))
            with torch.no_grad():
                for k, w in enumerate(params):
                    dw = grads[k] + WD * w
                    mdw[k] = MOM * mdw[k] + dw
                    dw = dw + MOM * mdw[k]
                    eta = -noises[t * L + i][k]
                    dw = dw - g * (wc[k] - w) + noise / math.sqrt(0.5 * LLR) * eta
                    w -= LLR * dw
                    mw[k] = ALPHA * mw[k] + (1 - ALPHA) * w
            if i < L - 1:
                iterates.append([p.detach().clone() for p in params])
        with torch.no_grad():
            for k, w in enumerate(params):
                w.copy_(wc[k])
                dw = (w - mw[k]) + WD * w
                outer_mdw[k] = MOM * outer_mdw[k] + dw
                w -= LR * (dw + MOM * outer_mdw[k])
        iterates.append([p.detach().clone() for p in params])
    return iterates


@pytest.mark.parametrize("noise", [0.0, EPS])
def test_iclr2017_variant_is_the_authors_update(noise: float) -> None:
    ours, noises = _ours(noise)
    theirs = _authors(noises, noise)
    assert len(ours) == len(theirs) == L * OUTER
    for step, (a, b) in enumerate(zip(ours, theirs)):
        for x, y in zip(a, b):
            torch.testing.assert_close(x, y, rtol=0, atol=1e-13, msg=f"minibatch {step + 1}")


def test_the_variants_differ_and_only_iclr2017_resets_the_inner_momentum() -> None:
    results = {}
    for variant in ("parle", "iclr2017"):
        model = _model()
        opt = EntropySGD(
            model.parameters(), lr=LR, inner_lr=LLR, num_inner_steps=L, variant=variant
        )
        for batch in _batches()[:L]:
            opt.zero_grad()
            nn.functional.cross_entropy(model(batch[0]), batch[1]).backward()
            opt.step()
        (storage,) = opt.buffers.storages.values()
        results[variant] = (storage.live.clone(), storage.state["inner_momentum"].clone())
    assert not torch.equal(results["parle"][0], results["iclr2017"][0])
    assert bool(results["parle"][1].abs().sum() > 0)
    assert bool(results["iclr2017"][1].abs().sum() == 0)


def test_an_unknown_variant_is_refused() -> None:
    with pytest.raises(ValueError, match="Invalid variant: 'lua'"):
        EntropySGD(_model().parameters(), lr=1.0, variant="lua")
