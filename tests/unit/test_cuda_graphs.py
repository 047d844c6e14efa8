"""The CUDA-graph path of the replicas-per-device benchmark gives the plain path's numbers."""

from __future__ import annotations

import pytest
import torch

from benchmarks.replicas_per_device import Replicas, captured

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def test_four_replicas_in_one_graph_step_like_four_plain_steps() -> None:
    device = torch.device("cuda")
    torch.manual_seed(0)
    plain = Replicas(16, 4, 32, device)
    torch.manual_seed(0)
    graphed = Replicas(16, 4, 32, device)
    replay = captured(graphed)  # 3 warm-up steps, then the capture (which runs nothing)
    for _ in range(3 + 5):
        plain.step()
    for _ in range(5):
        replay()
    torch.cuda.synchronize()
    for mine, theirs in zip(graphed.models, plain.models):
        for p, q in zip(mine.parameters(), theirs.parameters()):
            torch.testing.assert_close(p.float(), q.float(), rtol=2e-2, atol=2e-3)
    # and they trained: the parameters moved away from the initialisation
    torch.manual_seed(0)
    fresh = Replicas(16, 4, 32, device)
    moved = next(graphed.models[0].parameters()) - next(fresh.models[0].parameters())
    assert moved.abs().max() > 0
