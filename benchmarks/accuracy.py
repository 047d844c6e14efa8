"""Accuracy: Parle's reference against tuned SGD and the other corners, mean and std over seeds.

    python -m benchmarks.accuracy                  # MNIST-1D (1-D CNN) and digits (MLP), 3 seeds
    python -m benchmarks.accuracy --quick          # one seed, a few epochs: checks the pipeline

Budget: equal gradient evaluations per replica (the papers' effective epochs). SGD's learning rate
is tuned on a validation split carved from the training set (never on test), then every method
trains on the remaining training data and is scored on the test split. Writes one record per run
to benchmarks/results/accuracy.json (dataset, model, algorithm, num_replicas, budget, seed,
test_acc, train_acc, wall_s, grad_evals_per_replica), a markdown table and a plot.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from benchmarks.common import RESULTS, write_results

DATASETS = {"mnist1d": ["data=mnist1d", "model=cnn1d"], "digits": ["data=digits", "model=mlp"]}
LR_GRID = (0.03, 0.1, 0.3)
METHODS: dict[str, list[str]] = {
    "sgd": ["algorithm=sgd", "cluster.replicas_per_process=1"],
    "dp_sgd n=3": ["algorithm=dp_sgd", "cluster.replicas_per_process=3"],
    "entropy_sgd": [
        "algorithm=entropy_sgd",
        "algorithm.num_inner_steps=5",
        "cluster.replicas_per_process=1",
    ],
    "elastic_sgd n=3": ["algorithm=elastic_sgd", "cluster.replicas_per_process=3"],
    "parle n=3": [
        "algorithm=parle",
        "algorithm.num_inner_steps=5",
        "cluster.replicas_per_process=3",
    ],
    "parle n=6": [
        "algorithm=parle",
        "algorithm.num_inner_steps=5",
        "cluster.replicas_per_process=6",
    ],
    "parle n=3 shard": [
        "algorithm=parle",
        "algorithm.num_inner_steps=5",
        "cluster.replicas_per_process=3",
        "data.policy=shard",
    ],
}
COMMON = [
    "progress=false",
    "logger.plots=false",
    "data.validation_fraction=0.1",
    "checkpoint.every_outer_steps=100000",
]


def run(args: list[str], workdir: Path, name: str) -> dict[str, Any]:
    run_dir = workdir / name
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("RANK", None)
    done = subprocess.run(
        [sys.executable, "-m", "elastic_entropy.train", *COMMON, *args, f"hydra.run.dir={run_dir}"],
        env=env,
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        raise RuntimeError(f"{name} failed: {done.stderr.strip().splitlines()[-1]}")
    return json.loads((run_dir / "results.json").read_text())


def tune_sgd_lr(dataset: str, epochs: float, workdir: Path) -> float:
    """The learning rate with the best validation accuracy (seed 0)."""
    scores = {}
    for lr in LR_GRID:
        result = run(
            [
                *DATASETS[dataset],
                *METHODS["sgd"],
                f"algorithm.lr={lr}",
                f"epochs={epochs}",
                "seed=0",
            ],
            workdir,
            f"tune-{dataset}-{lr}",
        )
        scores[lr] = result["reference"]["val_acc"]
    return max(scores, key=scores.get)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--epochs", type=float, default=None)
    parser.add_argument("--seeds", type=int, default=None)
    parser.add_argument("--out", type=Path, default=None, help="results folder")
    args = parser.parse_args()
    epochs = args.epochs or (1.0 if args.quick else 20.0)
    seeds = range(args.seeds or (1 if args.quick else 3))
    datasets = ["digits"] if args.quick else list(DATASETS)
    methods = ["sgd", "parle n=3"] if args.quick else list(METHODS)
    records = []
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        for dataset in datasets:
            lr = tune_sgd_lr(dataset, epochs, workdir)
            for method in methods:
                for seed in seeds:
                    extra = [f"algorithm.lr={lr}"] if method in ("sgd", "dp_sgd n=3") else []
                    result = run(
                        [
                            *DATASETS[dataset],
                            *METHODS[method],
                            *extra,
                            f"epochs={epochs}",
                            f"seed={seed}",
                        ],
                        workdir,
                        f"{dataset}-{method}-{seed}".replace(" ", "_").replace("=", ""),
                    )
                    records.append(
                        {
                            "dataset": dataset,
                            "model": result["model"],
                            "algorithm": method,
                            "num_replicas": result["num_replicas"],
                            "budget": f"{epochs:g} epochs",
                            "seed": seed,
                            "test_acc": result["reference"]["test_acc"],
                            "train_acc": result["reference"]["train_acc"],
                            "wall_s": result["wall_s"],
                            "grad_evals_per_replica": result["steps_per_replica"],
                            "sgd_lr": lr,
                        }
                    )
    rows = [
        f"reference test accuracy, {epochs:g} epochs per replica, "
        f"mean ± std over {len(seeds)} seed(s)",
        f"  {'dataset':<9}{'method':<18}{'test acc':>16}{'train acc':>11}{'wall s':>8}",
    ]
    means: dict[tuple[str, str], float] = {}
    for dataset in datasets:
        for method in methods:
            chosen = [r for r in records if r["dataset"] == dataset and r["algorithm"] == method]
            accs = [r["test_acc"] for r in chosen]
            std = statistics.stdev(accs) if len(accs) > 1 else 0.0
            means[(dataset, method)] = statistics.mean(accs)
            rows.append(
                f"  {dataset:<9}{method:<18}{statistics.mean(accs):>10.4f} ± {std:.4f}"
                f"{statistics.mean(r['train_acc'] for r in chosen):>11.4f}"
                f"{statistics.mean(r['wall_s'] for r in chosen):>8.1f}"
            )
    table = "\n".join(rows)
    print(table)
    folder = args.out or RESULTS
    folder.mkdir(parents=True, exist_ok=True)
    ratios = {
        f"{d}:{m}-sgd": means[(d, m)] - means[(d, "sgd")]
        for d in datasets
        for m in methods
        if m != "sgd"
    }
    write_results("accuracy_summary", {"ratios": ratios, "epochs": epochs}, table, folder)
    (folder / "accuracy.json").write_text(json.dumps(records, indent=2) + "\n")
    print("ratios: " + " ".join(f"{k}={v:+.4f}" for k, v in ratios.items()))


if __name__ == "__main__":
    main()
