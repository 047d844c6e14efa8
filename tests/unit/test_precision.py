"""precision=bf16 and fp16: the training forward under autocast, the optimizer's float32 state
untouched; fp16's loss scale."""

from __future__ import annotations

import math

import torch
from torch import nn

from elastic_entropy.models import build_model
from elastic_entropy.optim import Parle
from elastic_entropy.training.loss_scale import GROWTH_INTERVAL, LossScale
from elastic_entropy.training.passes import Autocast, forward_backward, with_precision


def test_bf16_runs_the_layers_in_bf16_and_gives_float32_logits_and_gradients() -> None:
    torch.manual_seed(0)
    model = build_model("lenet", (1, 8, 8), 10, channels=(4, 8), hidden=16)
    seen: list[torch.dtype] = []
    model[0][0].register_forward_hook(lambda m, i, o: seen.append(o.dtype))
    (fast,) = with_precision([model], "bf16")
    assert isinstance(fast, Autocast) and with_precision([model], "fp32") == [model]
    opt = Parle(model.parameters(), lr=0.1, num_inner_steps=2)
    x, y = torch.randn(6, 1, 8, 8), torch.randint(0, 10, (6,))
    stats = forward_backward(fast, x, y)
    assert seen == [torch.bfloat16] and stats.dtype == torch.float32
    assert all(p.grad is not None and p.grad.dtype == torch.float32 for p in model.parameters())
    opt.step()
    assert all(p.dtype == torch.float32 for p in model.parameters())
    # the same step in float32 differs by bf16's rounding, no more
    torch.manual_seed(0)
    plain = build_model("lenet", (1, 8, 8), 10, channels=(4, 8), hidden=16)
    plain.eval()
    with torch.no_grad():
        low, high = (m(x) for m in (nn.Sequential(Autocast(plain, torch.bfloat16)), plain))
    assert not torch.equal(low, high)
    assert float((low - high).norm() / high.norm()) < 0.05


def _params_with_grads(*grads: list[float]) -> list[nn.Parameter]:
    params = []
    for values in grads:
        p = nn.Parameter(torch.zeros(len(values)))
        p.grad = torch.tensor(values)
        params.append(p)
    return params


def test_fp16_runs_the_layers_in_fp16_and_scales_the_loss_gradient() -> None:
    torch.manual_seed(0)
    model = build_model("mlp", (6,), 3, hidden=(8,))
    x, y = torch.randn(4, 6), torch.randint(0, 3, (4,))
    (fast,) = with_precision([model], "fp16")
    seen: list[torch.dtype] = []
    model[1].register_forward_hook(lambda m, i, o: seen.append(o.dtype))
    forward_backward(fast, x, y)
    once = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    stats = forward_backward(fast, x, y, scale=1024.0)
    assert seen == [torch.float16, torch.float16] and stats.dtype == torch.float32
    scaled = [p.grad for p in model.parameters()]
    # a power of two scales fp16's numbers exactly: the gradient is 1024 times the unscaled one
    assert all(torch.allclose(s, 1024.0 * g, rtol=1e-3, atol=1e-6) for s, g in zip(scaled, once))


def test_the_loss_scale_unscales_finds_overflow_backs_off_and_grows() -> None:
    scale = LossScale(8.0)
    params = _params_with_grads([8.0, 16.0], [-24.0])
    assert float(scale.unscale(params)) == 0.0
    assert [p.grad.tolist() for p in params] == [[1.0, 2.0], [-3.0]]
    for bad in (math.inf, math.nan):
        assert float(scale.unscale(_params_with_grads([1.0], [bad, 2.0]))) == 1.0
    scale.update(is_finite=False)
    assert (scale.scale, scale.skipped_steps) == (4.0, 1)
    for _ in range(GROWTH_INTERVAL - 1):
        scale.update(is_finite=True)
    assert scale.scale == 4.0
    scale.update(is_finite=True)
    assert scale.scale == 8.0 and scale.finite_steps == 0
    again = LossScale()
    again.load_state_dict(scale.state_dict())
    assert again.state_dict() == scale.state_dict() == {
        "scale": 8.0,
        "finite_steps": 0,
        "skipped_steps": 1,
    }
