"""CUDA graphs give the plain path's numbers: the benchmark's, and the app's training step."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from benchmarks.replicas_per_device import Replicas, captured
from elastic_entropy.distributed import DistInfo
from elastic_entropy.training.loop import train_step
from elastic_entropy.training.run import Run, build_run
from tests.conftest import compose_config, run_cli

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


def _cuda_run(tmp: Path, mode: str) -> Run:
    cfg = compose_config(
        "progress=false",
        "cluster.device=cuda",
        f"cluster.cuda_graphs={mode}",
        "cluster.replicas_per_process=4",
        "algorithm.num_inner_steps=4",
        "model.channels=16",
    )
    (tmp / mode).mkdir()
    return build_run(cfg, DistInfo(0, 1, 0, torch.device("cuda"), None), tmp / mode)


def test_the_apps_graph_path_trains_as_its_plain_path(tmp_path: Path) -> None:
    graphed, plain = _cuda_run(tmp_path, "on"), _cuda_run(tmp_path, "off")
    assert graphed.graphed is not None and plain.graphed is None
    graphed_stats = [train_step(graphed) for _ in range(20)]
    plain_stats = [train_step(plain) for _ in range(20)]
    assert graphed.graphed.is_active, graphed.graphed.max_difference
    # the same kernels, but cuDNN's atomics may sum in another order
    torch.testing.assert_close(
        torch.stack(graphed_stats), torch.stack(plain_stats), rtol=1e-4, atol=1e-5
    )
    for mine, theirs in zip(graphed.models, plain.models):
        for p, q in zip(
            [*mine.parameters(), *mine.buffers()], [*theirs.parameters(), *theirs.buffers()]
        ):
            torch.testing.assert_close(p, q, rtol=1e-4, atol=1e-5)


def test_a_gpu_run_takes_the_graph_path_by_default(tmp_path: Path) -> None:
    args = ["max_steps=40", "progress=false", f"hydra.run.dir={tmp_path / 'run'}"]
    result = run_cli(args, tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    assert json.loads((tmp_path / "run" / "results.json").read_text())["cuda_graphs"] is True
