"""Language modelling: validation perplexity against bytes communicated, at equal compute.

    python -m benchmarks.text                 # 4 replicas, 600 steps each, seeds 0-2
    python -m benchmarks.text --quick         # 2 replicas, 20 steps, one seed: the pipeline

Every method trains the same small decoder-only transformer (``model=transformer``) on the text
that ships with Python (``data=pydoc``) for the same number of minibatches per replica (equal
compute per replica), n replicas in one process: data-parallel AdamW (``dp_adamw``, one gradient
all-reduce per step: the baseline), DiLoCo with H = 50 and 200 (``diloco``, outer Nesterov 0.7 /
0.9), local AdamW (DiLoCo's outer lr 1 without momentum: the replicas replaced by their mean
every 50 steps) and Parle with an AdamW inner loop (``parle algorithm.inner_optimizer=adamw``,
L = 10). Nothing is tuned here: each method runs at the settings named below, the inner AdamW at
lr 1e-3 for all. Validation perplexity of the reference (the replicas' mean) is the measure; test
is not looked at. Writes results/text.{json,md} and text.png (perplexity against bytes per
replica); the ratio line last: each method's bytes and perplexity over data-parallel AdamW's.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

from benchmarks.common import RESULTS, write_results

MODEL = ["model=transformer", "model.width=64", "model.layers=2", "model.heads=4"]
DATA = ["data=pydoc", "data.seq_len=32", "data.batch_size=16"]
METHODS: dict[str, list[str]] = {
    "dp_adamw": ["algorithm=dp_adamw", "algorithm.lr=1e-3"],
    "diloco_H50": ["algorithm=diloco", "algorithm.num_inner_steps=50", "algorithm.inner_lr=1e-3"],
    "diloco_H200": [
        "algorithm=diloco",
        "algorithm.num_inner_steps=200",
        "algorithm.inner_lr=1e-3",
    ],
    "local_adamw_H50": [
        "algorithm=diloco",
        "algorithm.num_inner_steps=50",
        "algorithm.inner_lr=1e-3",
        "algorithm.lr=1.0",
        "algorithm.momentum=0.0",
    ],
    "parle_adamw_L10": [
        "algorithm=parle",
        "algorithm.inner_optimizer=adamw",
        "algorithm.num_inner_steps=10",
        "algorithm.inner_lr=1e-3",
        "algorithm.lr=0.5",
        "algorithm.gamma=0.01",
        "scoping.rho_max=1.0",  # lr rho_max (1 + m) < 2: a stable elastic step
        "algorithm.replica_init=shared",
    ],
}
QUICK_H = {"diloco_H50": 5, "diloco_H200": 10, "local_adamw_H50": 5, "parle_adamw_L10": 5}


def _run(name: str, seed: int, args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    """One CLI run (reused when its results are in ``workdir``): its results.json."""
    run_dir = workdir / f"{name}-seed{seed}"
    if not (run_dir / "results.json").exists():
        overrides = [*METHODS[name], *MODEL, *DATA]
        if args.quick and name in QUICK_H:
            overrides.append(f"algorithm.num_inner_steps={QUICK_H[name]}")
        command = [
            sys.executable, "-m", "elastic_entropy.train", *overrides,
            f"cluster.replicas_per_process={args.replicas}", f"max_steps={args.steps}",
            f"seed={seed}", "progress=false", "logger.plots=false", "eval_every=1000",
            f"hydra.run.dir={run_dir}",
        ]  # fmt: skip
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        done = subprocess.run(command, env=env, capture_output=True, text=True)
        if done.returncode != 0:
            raise SystemExit(f"{name} seed {seed} failed:\n{done.stderr[-3000:]}")
    return json.loads((run_dir / "results.json").read_text())


def _summary(records: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    table: dict[str, dict[str, float]] = {}
    for name in METHODS:
        mine = [r for r in records if r["method"] == name]
        ppl = [r["val_perplexity"] for r in mine]
        table[name] = {
            "val_perplexity": statistics.mean(ppl),
            "std": statistics.stdev(ppl) if len(ppl) > 1 else 0.0,
            "bytes_per_replica": statistics.mean(r["bytes_per_replica"] for r in mine),
            "seeds": len(mine),
        }
    return table


def _plot(table: dict[str, dict[str, float]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for name, row in table.items():
        ax.errorbar(row["bytes_per_replica"], row["val_perplexity"], yerr=row["std"], fmt="o")
        ax.annotate(name, (row["bytes_per_replica"], row["val_perplexity"]), fontsize=8)
    ax.set_xscale("log")
    ax.set_xlabel("bytes communicated per replica")
    ax.set_ylabel("validation perplexity (reference)")
    ax.set_title("transformer on pydoc text, equal compute per replica")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="2 replicas, 20 steps, one seed")
    parser.add_argument("--steps", type=int, default=None, help="minibatches per replica")
    parser.add_argument("--seeds", type=int, default=None, help="seeds per method")
    parser.add_argument("--replicas", type=int, default=None)
    parser.add_argument("--workdir", type=Path, default=None, help="keep and reuse the runs")
    parser.add_argument("--out", type=Path, default=None, help="results folder")
    args = parser.parse_args()
    args.steps = args.steps or (20 if args.quick else 600)
    args.replicas = args.replicas or (2 if args.quick else 4)
    seeds = range(args.seeds or (1 if args.quick else 3))
    workdir = args.workdir or (args.out or RESULTS) / "text_runs"
    records = []
    for name in METHODS:
        for seed in seeds:
            result = _run(name, seed, args, workdir)
            records.append(
                {
                    "method": name,
                    "seed": seed,
                    "val_perplexity": result["reference"]["val_perplexity"],
                    "bytes_per_replica": result["communication"]["bytes_per_replica"],
                    "collectives": result["communication"]["collectives"],
                    "wall_s": result["wall_s"],
                }
            )
    table = _summary(records)
    base = table["dp_adamw"]
    lines = [
        f"{args.replicas} replicas x {args.steps} minibatches each, {len(seeds)} seed(s); "
        "validation perplexity of the reference",
        f"{'method':<18}{'val ppl':>10}{'± std':>8}{'MB/replica':>12}{'bytes/dp':>10}",
    ]
    for name, row in table.items():
        lines.append(
            f"{name:<18}{row['val_perplexity']:>10.3f}{row['std']:>8.3f}"
            f"{row['bytes_per_replica'] / 1e6:>12.2f}"
            f"{row['bytes_per_replica'] / max(base['bytes_per_replica'], 1):>10.4f}"
        )
    text = "\n".join(lines)
    print(text)
    ratios: dict[str, float] = {}
    for name, row in table.items():
        if name != "dp_adamw":
            share = row["bytes_per_replica"] / max(base["bytes_per_replica"], 1)
            ratios[f"{name}:bytes/dp"] = share
            ratios[f"{name}:ppl/dp"] = row["val_perplexity"] / base["val_perplexity"]
    out = args.out or RESULTS
    figures = {"records": records, "summary": table, "ratios": ratios}
    write_results("text", figures, text, out)
    _plot(table, out / "text.png")
    line = " ".join(
        f"{k}={v:.4f}" if k.endswith("bytes/dp") else f"{k}={v:.3f}" for k, v in ratios.items()
    )
    print("ratios: " + line, flush=True)


if __name__ == "__main__":
    main()
