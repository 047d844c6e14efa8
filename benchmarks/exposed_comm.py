"""Exposed communication: Parle's outer step with the all-reduce overlapped, not, or absent.

    python -m benchmarks.exposed_comm          # 2 processes (gloo), L = 25, a 5.8M-parameter MLP
    python -m benchmarks.exposed_comm --quick

Two real processes on gloo time whole outer steps (L minibatches of forward, backward and inner
step, then the outer step) in three modes, side by side in one run: no communication at all (each
process alone), the synchronous all-reduce, and ``overlap=True`` (the all-reduce runs behind the
next inner loop). Exposed communication = (mode - alone) / mode.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import tempfile
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from benchmarks.common import write_results
from elastic_entropy.comm import DistributedCommunicator, LocalCommunicator
from elastic_entropy.distributed import exit_worker
from elastic_entropy.optim import Parle

NPROC = 2


def _model(width: int) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Linear(784, width), nn.ReLU(), nn.Linear(width, width), nn.ReLU(), nn.Linear(width, 10)
    )


def _time_outer_steps(mode: str, width: int, steps: int, outer: int, batch: int) -> float:
    model = _model(width)
    comm = LocalCommunicator(1) if mode == "alone" else DistributedCommunicator(1)
    opt = Parle(
        model.parameters(),
        lr=0.05,
        num_inner_steps=steps,
        rho=1.0,
        comm=comm,
        overlap=mode == "overlap",
    )
    x, y = torch.randn(batch, 784), torch.randint(0, 10, (batch,))

    def outer_step() -> None:
        for _ in range(steps):
            nn.functional.cross_entropy(model(x), y).backward()
            opt.step()
            opt.zero_grad()

    outer_step()  # warm-up (and the first overlapped mean, which waits for itself)
    if dist.is_initialized():
        dist.barrier()
    start = time.perf_counter()
    for _ in range(outer):
        outer_step()
    return (time.perf_counter() - start) / outer


def _worker(rank: int, port: int, args: dict, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=NPROC)
    times = {
        mode: _time_outer_steps(mode, **args) for mode in ("alone", "sync", "overlap", "alone2")
    }
    gathered: list = [None] * NPROC
    dist.all_gather_object(gathered, times)
    if rank == 0:
        Path(out).write_text(json.dumps(gathered))
    exit_worker(0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--num-inner-steps", type=int, default=25)
    parser.add_argument("--outer", type=int, default=None, help="timed outer steps per mode")
    parser.add_argument("--out", type=Path, default=None, help="results folder")
    args = parser.parse_args()
    width = 512 if args.quick else 2048
    run = {
        "width": width,
        "steps": args.num_inner_steps,
        "outer": args.outer or (2 if args.quick else 4),
        "batch": 64,
    }
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "times.json"
        mp.spawn(_worker, args=(port, run, str(out)), nprocs=NPROC, join=True)
        per_rank = json.loads(out.read_text())
    # the slower process sets the pace; "alone" is timed before and after, and the faster kept
    times = {
        mode: max(r[mode] for r in per_rank) for mode in ("alone", "sync", "overlap", "alone2")
    }
    alone = min(times.pop("alone"), times.pop("alone2"))
    exposed = {mode: (times[mode] - alone) / times[mode] for mode in ("sync", "overlap")}
    numel = sum(p.numel() for p in _model(width).parameters())
    rows = [
        f"{NPROC} processes (gloo, 1 thread each), MLP {numel / 1e6:.1f}M parameters, "
        f"L = {run['steps']}, batch {run['batch']}, {run['outer']} timed outer steps per mode"
    ]
    rows.append(f"  {'mode':<10}{'s / outer step':>16}{'exposed comm':>14}")
    rows.append(f"  {'alone':<10}{alone:>16.4f}{'':>14}")
    for mode in ("sync", "overlap"):
        rows.append(f"  {mode:<10}{times[mode]:>16.4f}{exposed[mode]:>13.1%}")
    table = "\n".join(rows)
    print(table)
    ratios = {
        "exposed_sync": exposed["sync"],
        "exposed_overlap": exposed["overlap"],
        "overlap/sync": times["overlap"] / times["sync"],
    }
    write_results(
        "exposed_comm",
        {
            "alone_s": alone,
            **{f"{k}_s": v for k, v in times.items()},
            "per_rank": per_rank,
            "numel": numel,
            **run,
            "ratios": ratios,
        },
        table,
        args.out,
    )
    print("ratios: " + " ".join(f"{k}={v:.3f}" for k, v in ratios.items()))


if __name__ == "__main__":
    main()
