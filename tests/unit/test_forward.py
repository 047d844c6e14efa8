"""channels_last and compile: how the training forward runs, never what it computes."""

from __future__ import annotations

import logging

import pytest
import torch
from torch import nn

from elastic_entropy.models import build_model
from elastic_entropy.optim import Parle
from elastic_entropy.training.forward import ChannelsLast, Compiled, with_compile, with_layout
from elastic_entropy.training.passes import ReplicaRandomness, forward_backward


def test_channels_last_feeds_the_convolutions_nhwc_and_computes_the_same_step() -> None:
    torch.manual_seed(0)
    model = build_model("lenet", (1, 28, 28), 10, channels=(4, 8), hidden=16, dropout=0.0)
    plain = build_model("lenet", (1, 28, 28), 10, channels=(4, 8), hidden=16, dropout=0.0)
    plain.load_state_dict(model.state_dict())
    Parle(model.parameters(), lr=0.1)  # the parameters become views of the flat buffers
    seen: list[bool] = []
    conv = next(m for m in model.modules() if isinstance(m, nn.Conv2d))
    conv.register_forward_hook(
        lambda m, i, o: seen.append(i[0].is_contiguous(memory_format=torch.channels_last))
    )
    x, y = torch.randn(6, 1, 28, 28), torch.randint(0, 10, (6,))
    (wrapped,) = with_layout([model], channels_last=True)
    assert isinstance(wrapped, ChannelsLast) and with_layout([model], False) == [model]
    stats = forward_backward(wrapped, x.clone(), y)
    expected = forward_backward(plain, x.clone(), y)
    assert seen == [True] and torch.allclose(stats, expected, atol=1e-5)
    for p, q in zip(model.parameters(), plain.parameters()):
        assert p.is_contiguous() and torch.allclose(p.grad, q.grad, atol=1e-5)


def _failing_backend(graph: torch.fx.GraphModule, inputs: list[torch.Tensor]) -> object:
    raise RuntimeError("no compiler on this machine")


def test_a_model_that_cannot_compile_warns_once_and_runs_eagerly(
    caplog: pytest.LogCaptureFixture,
) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 4), nn.ReLU(), nn.Linear(4, 3))
    compiled = Compiled(model, backend=_failing_backend)
    x = torch.randn(2, 5)
    with caplog.at_level(logging.WARNING, logger="elastic_entropy.training.forward"):
        first, second = compiled(x), compiled(x)
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 1 and "torch.compile cannot compile this model" in warnings[0]
    assert compiled.is_eager and torch.equal(first, model(x)) and torch.equal(second, first)


def test_the_compiled_forward_matches_eager_with_each_replicas_dropout_stream() -> None:
    """Inductor's kernels, and dropout masks from the replica's own stream as in eager."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Dropout(0.5), nn.Linear(16, 3))
    (compiled,) = with_compile([model], compile=True)
    assert isinstance(compiled, Compiled) and with_compile([model], False) == [model]
    x, y = torch.randn(8, 6), torch.randint(0, 3, (8,))
    results = []
    for forward in (compiled, model):
        randomness = ReplicaRandomness([5, 6], torch.device("cpu"), enabled=True)
        model.zero_grad()
        losses = []
        for replica in (1, 1, 0):
            with randomness.use(replica):
                losses.append(forward_backward(forward, x, y)[0])
        results.append((torch.stack(losses), [p.grad.clone() for p in model.parameters()]))
    (compiled_losses, compiled_grads), (eager_losses, eager_grads) = results
    assert not compiled.is_eager
    assert torch.allclose(compiled_losses, eager_losses, atol=1e-5)
    assert len(set(eager_losses.tolist())) == 3  # three masks: the stream moved on each time
    assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(compiled_grads, eager_grads))
