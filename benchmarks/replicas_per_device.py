"""Several replicas on one device: one replica, R replicas one after another, R in one CUDA graph.

    python -m benchmarks.replicas_per_device              # the device there is (CUDA if present)
    python -m benchmarks.replicas_per_device --quick      # one small width, few steps

Each replica's step is forward + backward + an SGD step (fused on CUDA, foreach on CPU) of a small
CNN on 32x32 inputs, batch 128, bf16 on CUDA. A small CNN's step on a GPU is launch-bound, so R
replicas run one after another cost about R times one; captured together in one CUDA graph
(static inputs, the optimizer step inside the graph) the launches go and R replicas should cost
little more than one. The graph column needs CUDA; on a CPU it is left out. The app column is the
training step of ``elastic-entropy`` itself (``cluster.cuda_graphs``: the replicas' forward and
backward in one graph after warm-up, on CUDA, then Parle's step over its flat buffer), which on a
CPU runs eagerly. Prints the table and, last, the ratios of the middle width: ``plainR/one``,
``graphR/one`` and ``appR/one``.
"""

from __future__ import annotations

import argparse
import copy
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from benchmarks.common import median_seconds, write_results
from elastic_entropy.optim import Parle, replica_param_groups
from elastic_entropy.training.graphs import GraphedPasses, cuda_graph_capture

WIDTHS = (8, 16, 32)  # about 0.03M, 0.1M and 0.4M parameters


def small_cnn(width: int) -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, width, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(width, 2 * width, 3, padding=1, stride=2),
        nn.ReLU(),
        nn.Conv2d(2 * width, 4 * width, 3, padding=1, stride=2),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(4 * width, 10),
    )


class Replicas:
    """R models with their optimizers and minibatches, and one training step over all of them."""

    def __init__(self, width: int, num: int, batch: int, device: torch.device) -> None:
        self.dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
        self.models = [small_cnn(width).to(device, self.dtype) for _ in range(num)]
        fused = {"fused": True} if device.type == "cuda" else {"foreach": True}
        self.optimizers = [
            torch.optim.SGD(m.parameters(), lr=0.01, momentum=0.9, nesterov=True, **fused)
            for m in self.models
        ]
        self.x = torch.randn(num, batch, 3, 32, 32, device=device, dtype=self.dtype)
        self.y = torch.randint(0, 10, (num, batch), device=device)

    @property
    def num_params(self) -> int:
        return sum(p.numel() for p in self.models[0].parameters())

    def step(self) -> None:
        for a, (model, opt) in enumerate(zip(self.models, self.optimizers)):
            loss = nn.functional.cross_entropy(model(self.x[a]), self.y[a])
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=False)  # gradients stay where a graph can find them


class AppReplicas:
    """The app's own path for R replicas: :class:`GraphedPasses` (warm-up, then one CUDA graph of
    every replica's forward+backward; eager on a CPU) and Parle's step over its flat buffer."""

    def __init__(self, width: int, num: int, batch: int, device: torch.device) -> None:
        dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
        first = small_cnn(width).to(device, dtype)
        self.models = [first] + [copy.deepcopy(first) for _ in range(num - 1)]
        params = replica_param_groups(m.parameters() for m in self.models)
        self.optimizer = Parle(params, lr=0.01, num_inner_steps=5, gamma=0.03, rho=1.0)
        x_train = torch.randn(4 * batch, 3, 32, 32, device=device, dtype=dtype)
        y_train = torch.randint(0, 10, (4 * batch,), device=device)
        capture = cuda_graph_capture(device) if device.type == "cuda" else None
        self.passes = GraphedPasses(self.models, x_train, y_train, batch, capture=capture)
        self.indices = [torch.randperm(4 * batch)[:batch] for _ in range(num)]

    def step(self) -> None:
        self.passes(self.indices)
        self.optimizer.step()
        self.optimizer.zero_grad()

    def settle(self) -> None:
        """Past warm-up and capture, so that what is timed is what a long run repeats."""
        for _ in range(self.passes.warmup + 1):
            self.step()


def captured(replicas: Replicas) -> Callable[[], None]:
    """All replicas' steps in one CUDA graph: warm up on a side stream, capture, then replay."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):
            replicas.step()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        replicas.step()
    return graph.replay


def measure(width: int, num: int, batch: int, device: torch.device, repeats: int) -> dict:
    one = Replicas(width, 1, batch, device)
    many = Replicas(width, num, batch, device)
    row = {
        "width": width,
        "params": one.num_params,
        "one_ms": 1e3 * median_seconds(one.step, repeats=repeats),
        "plain_ms": 1e3 * median_seconds(many.step, repeats=repeats),
    }
    if device.type == "cuda":
        replay = captured(Replicas(width, num, batch, device))
        row["graph_ms"] = 1e3 * median_seconds(replay, repeats=repeats)
    app = AppReplicas(width, num, batch, device)
    app.settle()
    row["app_ms"] = 1e3 * median_seconds(app.step, repeats=repeats)
    row["app_graphed"] = app.passes.is_active
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda")
    parser.add_argument("--replicas", type=int, default=4)
    parser.add_argument("--batch", type=int, default=None, help="default 128 (32 with --quick)")
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--out", type=Path, default=None, help="results folder")
    args = parser.parse_args()
    name = "cuda" if args.device == "auto" and torch.cuda.is_available() else args.device
    device = torch.device("cpu" if name == "auto" else name)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda but CUDA is not available; use --device cpu")
    widths = WIDTHS[:1] if args.quick else WIDTHS
    batch = args.batch or (32 if args.quick else 128)
    repeats = args.repeats or (3 if args.quick else 20)
    rows = [measure(w, args.replicas, batch, device, repeats) for w in widths]
    r = args.replicas
    lines = [
        f"{r} replicas on one {device.type} device, batch {batch}, median ms per step of all",
        f"  {'width':>6}{'params':>10}{'1 replica':>11}{f'{r} plain':>10}{f'{r} graph':>10}"
        f"{f'{r} app':>10}",
    ]
    for row in rows:
        graph = f"{row['graph_ms']:>10.2f}" if "graph_ms" in row else f"{'n/a':>10}"
        lines.append(
            f"  {row['width']:>6}{row['params']:>10}{row['one_ms']:>11.2f}"
            f"{row['plain_ms']:>10.2f}{graph}{row['app_ms']:>10.2f}"
        )
    table = "\n".join(lines)
    print(table)
    middle = rows[len(rows) // 2]
    ratios = {f"plain{r}/one": middle["plain_ms"] / middle["one_ms"]}
    if "graph_ms" in middle:
        ratios[f"graph{r}/one"] = middle["graph_ms"] / middle["one_ms"]
    ratios[f"app{r}/one"] = middle["app_ms"] / middle["one_ms"]
    write_results("replicas_per_device", {"ratios": ratios, "rows": rows}, table, args.out)
    print("ratios: " + " ".join(f"{k}={v:.3f}" for k, v in ratios.items()))


if __name__ == "__main__":
    main()
