"""Memory per replica of SGD, Parle and torch DDP + SGD on the same parameters (WRN shapes).

    python -m benchmarks.optimizer_step            # prints this table after the step times
    python -m benchmarks.memory --algorithm parle  # one measurement, as JSON (what it runs)

Each algorithm is measured in a fresh process (so that one's peak is not another's), after two
steps (every state tensor exists then; Parle's run its inner and outer steps). Three measures:

- ``held``: the bytes of the unique storages of every live torch tensor the process made after
  its imports (parameters, gradients, the optimizer's state and flat buffers), found by a walk
  over Python's objects. Tensors held in C++ alone, as DDP's gradient buckets, escape it;
- ``rss_peak``: the process's peak resident memory (``VmHWM`` of /proc/self/status) above its
  resident memory after the imports, which sees every allocation on the CPU, temporaries of the
  step included (tracemalloc does not: torch allocates outside Python's allocator). Not
  ``ru_maxrss``: Linux carries the parent's peak into a child across fork and exec, so a child
  of a large benchmark process reported the parent's size;
- on CUDA, ``cuda_peak``: ``torch.cuda.max_memory_allocated``.

Parle keeps the iterate y, the anchor x, the average z, the momenta v and u and the gradient: six
copies of the parameters against SGD's three (parameters, gradient, momentum), about 2x;
``elastic_entropy.footprint`` estimates eight per replica, with room for scratch.
"""

from __future__ import annotations

import argparse
import gc
import json
import resource
import socket
import subprocess
import sys
import warnings
from pathlib import Path
from typing import Any

import torch

ALGORITHMS = ("sgd", "parle", "ddp")


def resident_bytes() -> int:
    """This process's resident memory now (Linux: /proc/self/statm)."""
    pages = int(Path("/proc/self/statm").read_text().split()[1])
    return pages * resource.getpagesize()


def peak_resident_bytes() -> int:
    """This process's peak resident memory (Linux: VmHWM, this program's own since its exec)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def held_bytes(before: set[int]) -> int:
    """Bytes of the unique storages of live tensors, leaving out those in ``before``."""
    seen = {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in _tensors()}
    return sum(n for ptr, n in seen.items() if ptr not in before and ptr != 0)


def _tensors() -> list[torch.Tensor]:
    with warnings.catch_warnings():  # isinstance on torch.distributed's deprecated names warns
        warnings.simplefilter("ignore")
        objects = gc.get_objects()
        return [o for o in objects if isinstance(o, torch.Tensor) and not o.is_meta]


def _live_storages() -> set[int]:
    return {t.untyped_storage().data_ptr() for t in _tensors()}


def _warm_up(algorithm: str, device: torch.device) -> None:
    """The same steps on a tiny network first: the kernels', threads' and process group's own
    memory is then resident before the baseline, and only the tensors' is measured."""
    from benchmarks.optimizer_step import make_params, wrn_shapes

    tiny = make_params(wrn_shapes(10, 1), device)
    _steps(algorithm, tiny)


class SumOfSquares(torch.nn.Module):
    """A loss that touches every parameter, for DDP's forward: its hooks fire on backward."""

    def __init__(self, params: list[torch.nn.Parameter]) -> None:
        super().__init__()
        self.weights = torch.nn.ParameterList(params)

    def forward(self) -> torch.Tensor:
        return sum((p * p).sum() for p in self.weights)  # type: ignore[return-value]


def _ddp_steps(params: list[torch.nn.Parameter], steps: int) -> Any:
    """torch DDP (a group of one process: gloo, NCCL on CUDA) around the parameters, and SGD:
    real steps."""
    import torch.distributed as dist

    if not dist.is_initialized():
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        url = f"tcp://127.0.0.1:{port}"
        backend = "nccl" if params[0].is_cuda else "gloo"
        dist.init_process_group(backend, init_method=url, rank=0, world_size=1)
    # as elastic_entropy.comm.wrap_data_parallel: gradients apart from DDP's buckets
    device_ids = [params[0].device.index] if params[0].is_cuda else None
    wrapped = torch.nn.parallel.DistributedDataParallel(
        SumOfSquares(params), device_ids=device_ids, broadcast_buffers=False
    )
    opt = torch.optim.SGD(params, lr=0.01, momentum=0.9, nesterov=True, weight_decay=5e-4)
    for _ in range(steps):
        opt.zero_grad()
        wrapped().backward()
        opt.step()
    return wrapped, opt


def _steps(algorithm: str, params: list[torch.nn.Parameter]) -> Any:
    """Two steps of ``algorithm``; returns what holds its state."""
    from elastic_entropy.optim import Parle

    if algorithm == "ddp":
        return _ddp_steps(params, 2)
    opt: torch.optim.Optimizer
    if algorithm == "sgd":
        opt = torch.optim.SGD(params, lr=0.01, momentum=0.9, nesterov=True, weight_decay=5e-4)
    else:  # an inner step and the outer step each time
        opt = Parle(params, lr=0.01, num_inner_steps=1, weight_decay=5e-4, gamma=0.03, rho=1.0)
    for _ in range(2):
        opt.step()
    return opt


def measure(algorithm: str, depth: int, width: int, device: torch.device) -> dict[str, Any]:
    """One algorithm's memory, in this process (see the module's docstring)."""
    from benchmarks.optimizer_step import make_params, wrn_shapes

    _warm_up(algorithm, device)
    gc.collect()
    before, resident = _live_storages(), resident_bytes()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        cuda_before = torch.cuda.memory_allocated(device)
    shapes = wrn_shapes(depth, width)
    keep = _steps(algorithm, make_params(shapes, device))
    gc.collect()
    figures: dict[str, Any] = {
        "algorithm": algorithm,
        "numel": sum(torch.Size(s).numel() for s in shapes),
        "held_bytes": held_bytes(before),
        "rss_peak_bytes": peak_resident_bytes() - resident,
    }
    if device.type == "cuda":
        figures["cuda_peak_bytes"] = torch.cuda.max_memory_allocated(device) - cuda_before
    del keep
    return figures


def measure_all(depth: int, width: int, device: torch.device) -> dict[str, dict[str, Any]]:
    """Every algorithm, each in its own fresh process."""
    figures = {}
    for algorithm in ALGORITHMS:
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "benchmarks.memory",
                "--algorithm",
                algorithm,
                "--depth",
                str(depth),
                "--width",
                str(width),
                "--device",
                str(device),
            ],
            capture_output=True,
            text=True,
            check=True,
        )
        figures[algorithm] = json.loads(done.stdout.strip().splitlines()[-1])
    return figures


def table_rows(figures: dict[str, dict[str, Any]]) -> list[str]:
    """The memory table: MB per replica and each measure over SGD's."""
    from elastic_entropy.footprint import replica_bytes

    numel = figures["sgd"]["numel"]
    measures = ["held_bytes", "rss_peak_bytes"]
    if "cuda_peak_bytes" in figures["sgd"]:
        measures.append("cuda_peak_bytes")
    header = "".join(f"{m.removesuffix('_bytes') + ' MB':>14}{'x sgd':>7}" for m in measures)
    rows = [
        f"memory per replica ({numel / 1e6:.2f}M parameters, float32 = "
        f"{numel * 4 / 1e6:.0f} MB a copy)",
        f"  {'algorithm':<12}{header}",
    ]
    for algorithm, figure in figures.items():
        cells = "".join(
            f"{figure[m] / 1e6:>14.0f}{figure[m] / figures['sgd'][m]:>7.2f}" for m in measures
        )
        rows.append(f"  {algorithm:<12}{cells}")
    rows.append(
        f"  {'footprint':<12}{replica_bytes(numel) / 1e6:>14.0f}  "
        "(elastic_entropy.footprint's estimate per replica)"
    )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--algorithm", choices=ALGORITHMS, required=True)
    parser.add_argument("--depth", type=int, default=28)
    parser.add_argument("--width", type=int, default=10)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    print(json.dumps(measure(args.algorithm, args.depth, args.width, torch.device(args.device))))


if __name__ == "__main__":
    main()
