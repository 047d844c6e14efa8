"""The bookkeeping of the app's CUDA-graph path, on a CPU.

A CPU cannot record a CUDA graph, so these tests give :class:`GraphedPasses` a capture that
behaves as a graph does towards its caller (replay reruns the recorded pass and returns the same
output tensor, overwritten) and hold the app's training step to the plain path, bit for bit:
static input buffers, warm-up, the check after capture, and the fallbacks. The real capture is
held to the plain path in ``test_cuda_graphs.py`` where CUDA is present.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from torch import Tensor

from elastic_entropy.distributed import DistInfo
from elastic_entropy.training.checkpointer import config_changes, plain_config
from elastic_entropy.training.graphs import GraphedPasses
from elastic_entropy.training.loop import train_step
from elastic_entropy.training.run import Run, build_run
from tests.conftest import compose_config

CPU = DistInfo(0, 1, 0, torch.device("cpu"), None)
STEPS = 12  # 3 warm-up calls, the capture and check, 8 replays


def _run(tmp: Path, name: str, *overrides: str) -> Run:
    cfg = compose_config(
        "progress=false",
        "cluster.replicas_per_process=3",
        "model.channels=8",  # cnn1d with BatchNorm: buffers a pass moves on
        *overrides,
    )
    (tmp / name).mkdir()
    return build_run(cfg, CPU, tmp / name)


def _replay_like_a_graph(fn: Callable[[], Tensor]) -> Callable[[], Tensor]:
    """Records nothing now; each replay runs the pass and writes into one output tensor."""
    out: list[Tensor] = []

    def replay() -> Tensor:
        result = fn()
        if not out:
            out.append(result)
        else:
            out[0].copy_(result)
        return out[0]

    return replay


def _graphed(run: Run, capture: Callable, strict: bool = False) -> GraphedPasses:
    data = run.data
    batch = run.cfg.data.batch_size
    return GraphedPasses(
        run.models, data.x_train, data.y_train, batch, capture=capture, strict=strict
    )


def _train(run: Run) -> list[Tensor]:
    return [train_step(run) for _ in range(STEPS)]


def _state(run: Run) -> list[Tensor]:
    return [t for m in run.models for t in (*m.parameters(), *m.buffers())]


def _assert_same_training(mine: Run, mine_stats: list[Tensor], plain: Run) -> None:
    plain_stats = _train(plain)
    for got, expected in zip(mine_stats, plain_stats):
        assert torch.equal(got, expected)
    for got, expected in zip(_state(mine), _state(plain)):
        assert torch.equal(got, expected)


@pytest.mark.parametrize("algorithm", ["algorithm.num_inner_steps=4", "algorithm=sgd"])
def test_graph_path_trains_as_the_plain_path_bit_for_bit(tmp_path: Path, algorithm: str) -> None:
    graphed = _run(tmp_path, "graphed", algorithm)
    graphed = replace(graphed, graphed=_graphed(graphed, _replay_like_a_graph))
    stats = _train(graphed)
    assert graphed.graphed.is_active and graphed.graphed.max_difference is None
    # every step's statistics are its own, not the last replay's output seen twice
    assert len({tuple(s.flatten().tolist()) for s in stats}) == STEPS
    _assert_same_training(graphed, stats, _run(tmp_path, "plain", algorithm))


def _wrong_gradients(run: Run) -> Callable:
    """A capture whose replay leaves gradients off by 0.01, as a miscaptured graph would."""

    def capture(fn: Callable[[], Tensor]) -> Callable[[], Tensor]:
        def replay() -> Tensor:
            out = fn()
            for p in run.models[0].parameters():
                assert p.grad is not None
                p.grad.add_(1e-2)
            return out

        return replay

    return capture


def _moved_gradients(run: Run) -> Callable:
    """A capture after which the gradients live in new tensors, not in the optimizer's buffer."""

    def capture(fn: Callable[[], Tensor]) -> Callable[[], Tensor]:
        for p in run.models[1].parameters():
            p.grad = torch.zeros_like(p)
        return _replay_like_a_graph(fn)

    return capture


def _failing(run: Run) -> Callable:
    def capture(fn: Callable[[], Tensor]) -> Callable[[], Tensor]:
        raise RuntimeError("operation not permitted when stream is capturing")

    return capture


@pytest.mark.parametrize(
    ("capture", "why"),
    [
        (_wrong_gradients, "its replay differs from the eager pass by 0.01"),
        (_moved_gradients, "its gradients are not the optimizer's buffer"),
        (_failing, "capture failed (RuntimeError: operation not permitted"),
    ],
)
def test_a_graph_that_fails_its_check_is_dropped_and_nothing_is_lost(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, capture: Callable, why: str
) -> None:
    run = _run(tmp_path, "graphed", "algorithm.num_inner_steps=4")
    run = replace(run, graphed=_graphed(run, capture(run)))
    with caplog.at_level(logging.WARNING, logger="elastic_entropy.training.graphs"):
        stats = _train(run)
    assert not run.graphed.is_active and run.graphed.is_dropped
    assert f"CUDA graphs off for this run: {why}" in caplog.text
    # the step that checked kept the eager pass, and the steps after it ran eagerly
    _assert_same_training(run, stats, _run(tmp_path, "plain", "algorithm.num_inner_steps=4"))


def test_cuda_graphs_on_insists_in_one_line(tmp_path: Path) -> None:
    run = _run(tmp_path, "strict", "algorithm.num_inner_steps=4")
    run = replace(run, graphed=_graphed(run, _wrong_gradients(run), strict=True))
    message = (
        r"^cluster.cuda_graphs=on but the CUDA graph cannot be used: its replay differs from "
        r"the eager pass by 0.01; use cluster.cuda_graphs=auto to step eagerly instead$"
    )
    with pytest.raises(ValueError, match=message):
        _train(run)


def test_cpu_runs_take_the_plain_path_and_say_so(tmp_path: Path) -> None:
    run = _run(tmp_path, "auto")  # cluster.cuda_graphs=auto, the default
    assert run.graphed is None
    with pytest.raises(ValueError, match=r"Invalid cluster.cuda_graphs: 'on' \(the device is cpu"):
        _run(tmp_path, "on", "cluster.cuda_graphs=on")


def test_a_run_stopped_by_cuda_graphs_on_resumes_with_auto() -> None:
    """`on` stops a run whose graph fails its check; the README says to resume with `auto`."""
    saved = plain_config(compose_config("cluster.cuda_graphs=on", "cluster.device=cuda"))
    here = plain_config(compose_config("cluster.device=cuda"))
    assert config_changes(saved, here) == []
    other = plain_config(compose_config("cluster.device=cuda", "model.channels=8"))
    assert config_changes(saved, other) != []
