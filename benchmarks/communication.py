"""Communication: bytes all-reduced per training sample, Parle (L = 5, 25) against torch DDP.

    python -m benchmarks.communication             # 2 processes (gloo), MNIST-1D, the 1-D CNN
    python -m benchmarks.communication --quick

Both sides are counted where the bytes go, never estimated: Parle's communicator counts its own
all-reduces (results.json of a real torchrun job); DDP's are counted by a communication hook on a
real ``DistributedDataParallel`` model doing the same number of minibatches. Expected ratio: 1/L.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn

from benchmarks.common import write_results
from elastic_entropy.data import load_dataset
from elastic_entropy.distributed import exit_worker
from elastic_entropy.models import cnn1d

NPROC = 2


def parle_bytes_per_sample(steps: int, num_inner_steps: int, batch: int, workdir: Path) -> dict:
    run_dir = workdir / f"parle-L{num_inner_steps}"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("RANK", None)
    subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            f"--nproc-per-node={NPROC}",
            "-m",
            "elastic_entropy.train",
            f"max_steps={steps}",
            f"data.batch_size={batch}",
            f"algorithm.num_inner_steps={num_inner_steps}",
            "cluster.replicas_per_process=1",
            "progress=false",
            "eval_every=1000",
            "checkpoint.every_outer_steps=100000",
            f"hydra.run.dir={run_dir}",
        ],
        check=True,
        env=env,
        capture_output=True,
    )
    result = json.loads((run_dir / "results.json").read_text())
    samples = result["steps_per_replica"] * batch  # per replica
    comm = result["communication"]
    return {
        "bytes_per_replica": comm["bytes_per_replica"],
        "collectives": comm["collectives"],
        "samples_per_replica": samples,
        "bytes_per_sample": comm["bytes_per_replica"] / samples,
    }


def _ddp_worker(rank: int, port: int, steps: int, batch: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=NPROC)
    data = load_dataset("mnist1d")
    torch.manual_seed(0)
    model = nn.parallel.DistributedDataParallel(cnn1d((40,), 10))
    sent = [0, 0]

    # no annotations: DDP checks them against the real classes, and ours are strings here
    def counting_hook(state, bucket):  # noqa: ANN001
        buf = bucket.buffer()
        sent[0] += buf.numel() * buf.element_size()
        sent[1] += 1
        buf.div_(dist.get_world_size())
        return dist.all_reduce(buf, async_op=True).get_future().then(lambda f: f.value()[0])

    model.register_comm_hook(None, counting_hook)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, nesterov=True)
    generator = torch.Generator().manual_seed(rank)
    for _ in range(steps):
        index = torch.randint(0, len(data.y_train), (batch,), generator=generator)
        nn.functional.cross_entropy(model(data.x_train[index]), data.y_train[index]).backward()
        opt.step()
        opt.zero_grad()
    if rank == 0:
        Path(out).write_text(json.dumps({"bytes": sent[0], "collectives": sent[1]}))
    exit_worker(0)


def ddp_bytes_per_sample(steps: int, batch: int, workdir: Path) -> dict:
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    out = workdir / "ddp.json"
    mp.spawn(_ddp_worker, args=(port, steps, batch, str(out)), nprocs=NPROC, join=True)
    counted = json.loads(out.read_text())
    samples = steps * batch
    return {
        "bytes_per_replica": counted["bytes"],
        "collectives": counted["collectives"],
        "samples_per_replica": samples,
        "bytes_per_sample": counted["bytes"] / samples,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--steps", type=int, default=None, help="minibatches per replica")
    parser.add_argument("--out", type=Path, default=None, help="results folder")
    args = parser.parse_args()
    steps = args.steps or (100 if args.quick else 500)
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        figures = {"ddp": ddp_bytes_per_sample(steps, args.batch, workdir)}
        for num_inner in (5, 25):
            figures[f"parle_L{num_inner}"] = parle_bytes_per_sample(
                steps, num_inner, args.batch, workdir
            )
    ddp = figures["ddp"]["bytes_per_sample"]
    rows = [
        f"{NPROC} processes x 1 replica, gloo, MNIST-1D cnn1d, batch {args.batch}, "
        f"{steps} minibatches"
    ]
    rows.append(f"  {'method':<12}{'all-reduces':>12}{'bytes/sample':>14}{'vs DDP':>9}{'1/L':>7}")
    for name, figure in figures.items():
        ideal = "" if name == "ddp" else f"{1 / int(name.split('L')[1]):>7.3f}"
        rows.append(
            f"  {name:<12}{figure['collectives']:>12}{figure['bytes_per_sample']:>14.1f}"
            f"{figure['bytes_per_sample'] / ddp:>9.3f}{ideal}"
        )
    table = "\n".join(rows)
    print(table)
    ratios = {f"{k}/ddp": v["bytes_per_sample"] / ddp for k, v in figures.items() if k != "ddp"}
    write_results("communication", {**figures, "ratios": ratios, "steps": steps}, table, args.out)
    print("ratios: " + " ".join(f"{k}={v:.3f}" for k, v in ratios.items()))


if __name__ == "__main__":
    main()
