"""Throughput: training samples/s per replica, Parle against SGD, and replica layouts.

    python -m benchmarks.throughput                # MNIST-1D, the 1-D CNN, batch 64
    python -m benchmarks.throughput --quick

Real runs of the app, side by side in one invocation: one replica of Parle against one of SGD in
one process (what Parle's inner and outer steps cost), then 4 Parle replicas as 1 process x 4
against 2 processes x 2 (torchrun, gloo); on a GPU, 1 x 4 with and without the CUDA graph of the
replicas' passes (``cluster.cuda_graphs``) instead of 2 x 2. Samples/s per replica = minibatches x
batch / training time, from each run's results.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from benchmarks.common import write_results

COMMON = ["progress=false", "eval_every=100000", "checkpoint.every_outer_steps=100000"]


def run(name: str, nproc: int, args: list[str], workdir: Path) -> dict:
    run_dir = workdir / name
    env = {**os.environ}
    env.pop("RANK", None)
    launcher = (
        [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}"]
        if nproc > 1
        else [sys.executable]
    )
    subprocess.run(
        [*launcher, "-m", "elastic_entropy.train", *COMMON, *args, f"hydra.run.dir={run_dir}"],
        check=True,
        env=env,
        capture_output=True,
    )
    result = json.loads((run_dir / "results.json").read_text())
    batch = int(next(a.split("=")[1] for a in args if a.startswith("data.batch_size=")))
    samples = result["steps_per_replica"] * batch
    return {
        "wall_s": result["wall_s"],
        "samples_per_replica": samples,
        "samples_per_s_per_replica": samples / result["wall_s"],
        "num_replicas": result["num_replicas"],
        "processes": result["processes"],
        "cuda_graphs": result.get("cuda_graphs", False),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--steps", type=int, default=None, help="minibatches per replica")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--out", type=Path, default=None, help="results folder")
    parser.add_argument(
        "--device",
        choices=("cpu", "cuda"),
        default="cpu",
        help="cuda: one GPU, so no 2x2 layout (NCCL refuses two ranks on one GPU)",
    )
    args = parser.parse_args()
    steps = args.steps or (200 if args.quick else 1000)
    base = [f"max_steps={steps}", f"data.batch_size={args.batch}", f"cluster.device={args.device}"]
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        figures = {
            "sgd_1x1": run(
                "sgd", 1, [*base, "algorithm=sgd", "cluster.replicas_per_process=1"], workdir
            ),
            "parle_1x1": run("parle1", 1, [*base, "cluster.replicas_per_process=1"], workdir),
            "parle_1x4": run("parle14", 1, [*base, "cluster.replicas_per_process=4"], workdir),
        }
        if args.device == "cpu":
            layout = [*base, "cluster.replicas_per_process=2"]
            figures["parle_2x2"] = run("parle22", 2, layout, workdir)
        else:  # what the CUDA graph of the 4 replicas' passes buys
            eager = [*base, "cluster.replicas_per_process=4", "cluster.cuda_graphs=off"]
            figures["parle_1x4_eager"] = run("parle14eager", 1, eager, workdir)
    rows = [f"MNIST-1D cnn1d, batch {args.batch}, {steps} minibatches per replica, {args.device}"]
    rows.append(
        f"  {'run':<16}{'replicas':>9}{'processes':>10}{'CUDA graph':>11}{'samples/s/replica':>19}"
    )
    for name, figure in figures.items():
        graph = "yes" if figure["cuda_graphs"] else "no"
        rows.append(
            f"  {name:<16}{figure['num_replicas']:>9}{figure['processes']:>10}{graph:>11}"
            f"{figure['samples_per_s_per_replica']:>19.0f}"
        )
    table = "\n".join(rows)
    print(table)
    per = {k: v["samples_per_s_per_replica"] for k, v in figures.items()}
    ratios = {"parle_1x1/sgd_1x1": per["parle_1x1"] / per["sgd_1x1"]}
    if "parle_2x2" in per:
        ratios["parle_2x2/parle_1x4"] = per["parle_2x2"] / per["parle_1x4"]
    else:  # on one GPU: what 4 replicas in one process cost against one
        ratios["parle_1x4/parle_1x1"] = per["parle_1x4"] / per["parle_1x1"]
        ratios["parle_1x4/parle_1x4_eager"] = per["parle_1x4"] / per["parle_1x4_eager"]
    write_results("throughput", {**figures, "ratios": ratios, "steps": steps}, table, args.out)
    print("ratios: " + " ".join(f"{k}={v:.2f}" for k, v in ratios.items()))


if __name__ == "__main__":
    main()
