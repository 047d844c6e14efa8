"""Optimizer step: Parle's inner and outer steps, fused and eager, against torch.optim.SGD.

    python -m benchmarks.optimizer_step            # WRN-28-10 shapes, about 36.5M parameters
    python -m benchmarks.optimizer_step --quick    # WRN-16-2 shapes, CI-sized

Same parameters, same gradients, one process, side by side in one run: torch's SGD (foreach and
fused), Parle's steps fused (``fused=True``: one compiled pass per update, see
``elastic_entropy.optim.fused``; compiling happens in the warm-up calls, not timed) and eager (the
reference, ``fused=False``). Goals: parle_inner/sgd_fused <= 1.8 and parle_outer/sgd_fused <= 2.0
on a CPU (the inner step moves 8 buffers' worth of memory against fused SGD's 5: 1.6 at the
bandwidth bound), <= 1.3 for the inner step on a GPU. Prints the table and the
memory per replica of SGD, Parle and DDP (benchmarks/memory.py: each in a fresh process), then one
line of ratios; writes benchmarks/results/optimizer_step.{json,md}.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from torch import nn

from benchmarks.common import median_seconds, write_results
from benchmarks.memory import measure_all, table_rows
from elastic_entropy.optim import Parle


def wrn_shapes(depth: int, width: int, num_classes: int = 10) -> list[tuple[int, ...]]:
    """Parameter shapes of a Wide ResNet (conv, BatchNorm weight and bias, fc)."""
    blocks = (depth - 4) // 6
    shapes: list[tuple[int, ...]] = [(16, 3, 3, 3)]
    channels = 16
    for out in (16 * width, 32 * width, 64 * width):
        for _ in range(blocks):
            shapes += [
                (channels,),
                (channels,),
                (out, channels, 3, 3),
                (out,),
                (out,),
                (out, out, 3, 3),
            ]
            if channels != out:
                shapes.append((out, channels, 1, 1))
            channels = out
    shapes += [(channels,), (channels,), (num_classes, channels), (num_classes,)]
    return shapes


def make_params(shapes: list[tuple[int, ...]], device: torch.device) -> list[nn.Parameter]:
    generator = torch.Generator().manual_seed(0)
    params = []
    for shape in shapes:
        p = nn.Parameter(torch.randn(shape, generator=generator).to(device) * 0.01)
        p.grad = torch.randn(shape, generator=generator).to(device) * 0.01
        params.append(p)
    return params


def time_sgd(
    shapes: list[tuple[int, ...]], device: torch.device, repeats: int, **kwargs: bool
) -> float:
    params = make_params(shapes, device)
    opt = torch.optim.SGD(params, lr=0.01, momentum=0.9, nesterov=True, weight_decay=5e-4, **kwargs)
    return median_seconds(opt.step, repeats=repeats)


def time_parle(
    shapes: list[tuple[int, ...]], device: torch.device, repeats: int, fused: bool
) -> tuple[float, float]:
    options = {"lr": 0.01, "weight_decay": 5e-4, "gamma": 0.03, "fused": fused}
    inner = Parle(make_params(shapes, device), num_inner_steps=10**9, **options)
    inner_s = median_seconds(inner.step, repeats=repeats)
    outer = Parle(make_params(shapes, device), num_inner_steps=1, rho=1.0, **options)
    outer.step()  # an inner step, then the outer step: every buffer exists and is compiled for
    # the outer step alone, as step() runs it every L-th call: the reference mean (one replica:
    # its own row, no collective), the update and the next inner loop's start, the finite check
    outer_s = median_seconds(outer._outer_step, repeats=repeats)
    if fused and not (inner.is_fused and outer.is_fused):
        raise SystemExit("optimizer_step: the fused step could not compile here (see the warning)")
    return inner_s, outer_s


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="WRN-16-2 shapes, few repeats")
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--out", type=Path, default=None, help="results folder")
    args = parser.parse_args()
    device = torch.device(args.device)
    depth, width = (16, 2) if args.quick else (28, 10)
    repeats = args.repeats or (5 if args.quick else 7)
    shapes = wrn_shapes(depth, width)
    numel = sum(torch.Size(s).numel() for s in shapes)

    times = {
        "sgd_foreach_s": time_sgd(shapes, device, repeats, foreach=True),
        "sgd_fused_s": time_sgd(shapes, device, repeats, fused=True),
    }
    times["parle_inner_s"], times["parle_outer_s"] = time_parle(shapes, device, repeats, True)
    eager = time_parle(shapes, device, repeats, False)
    times["parle_inner_eager_s"], times["parle_outer_eager_s"] = eager
    fused_sgd = times["sgd_fused_s"]
    ratios = {
        "parle_inner/sgd_fused": times["parle_inner_s"] / fused_sgd,
        "parle_outer/sgd_fused": times["parle_outer_s"] / fused_sgd,
        "parle_inner/sgd_foreach": times["parle_inner_s"] / times["sgd_foreach_s"],
        "parle_inner_eager/sgd_fused": times["parle_inner_eager_s"] / fused_sgd,
        "parle_outer_eager/sgd_fused": times["parle_outer_eager_s"] / fused_sgd,
        "parle_inner/parle_inner_eager": times["parle_inner_s"] / times["parle_inner_eager_s"],
    }
    rows = [
        f"WRN-{depth}-{width} shapes: {len(shapes)} tensors, {numel / 1e6:.2f}M parameters, "
        f"{device}"
    ]
    rows += [f"  {'step':<22}{'ms':>10}{'GB/s moved':>12}"]
    # the buffers each step must read and write at least (the outer step: x, z, u in, and x, u,
    # y, z out, plus the finite-rows check's read of z)
    for name, passes in (
        ("sgd_foreach", 5),
        ("sgd_fused", 5),
        ("parle_inner", 8),
        ("parle_outer", 8),
        ("parle_inner_eager", 8),
        ("parle_outer_eager", 8),
    ):
        seconds = times[f"{name}_s"]
        rate = passes * numel * 4 / max(seconds, 1e-12) / 1e9  # the least bytes moved / time
        rows.append(f"  {name:<22}{seconds * 1e3:>10.2f}{rate:>12.1f}")
    memory = measure_all(depth, width, device)  # each algorithm in a fresh process
    rows += table_rows(memory)
    table = "\n".join(rows)
    print(table)
    write_results(
        "optimizer_step",
        {"numel": numel, "depth": depth, "width": width, **times, "memory": memory}
        | {"ratios": ratios},
        table,
        args.out,
    )
    print("ratios: " + " ".join(f"{k}={v:.2f}" for k, v in ratios.items()))


if __name__ == "__main__":
    main()
