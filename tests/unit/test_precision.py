"""precision=bf16: the training forward under autocast, the optimizer's float32 state untouched."""

from __future__ import annotations

import torch
from torch import nn

from elastic_entropy.models import build_model
from elastic_entropy.optim import Parle
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
