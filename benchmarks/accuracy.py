"""Accuracy: Parle's reference against tuned SGD and the other corners, at two budgets.

    python -m benchmarks.accuracy                  # MNIST-1D (1-D CNN) and digits (MLP), 3 seeds
    python -m benchmarks.accuracy --quick          # digits, one seed, one epoch: the pipeline

Two budgets. *Equal gradient evaluations*: every method trains ``--epochs`` epochs per replica (the
papers' effective epochs). *Equal wall-clock on the same workers*: every method gets the wall time
Parle n=3 takes for those epochs on this machine, i.e. its epochs are scaled by the ratio of the
measured wall times, so single-replica SGD trains about n times longer than each Parle replica.

Nothing is tuned on test. A validation split (10 % of the training set) chooses SGD's learning
rate and schedule (grid below, per dataset and budget; the SGD-family baselines reuse them), and
the Parle investigation: one factor at a time away from the default Parle n=3 (L, gamma, rho,
scoping, lr, schedule, noise, shards, n) at equal wall-clock, seed 0, then a greedy combination
(factors in order of validation accuracy, each kept only if it raises it) that runs on every seed.
``--workdir DIR`` keeps the runs and reuses the finished ones when the benchmark runs again.

Writes to benchmarks/results/: accuracy.json (one record per run: dataset, model, algorithm,
num_replicas, budget, seed, test_acc, train_acc, wall_s, grad_evals_per_replica, plus val_acc,
epochs, the settings and the reference's flatness: top_eigenvalue, hessian_trace, rise_R per
relative radius R, local_entropy, gibbs_loss), accuracy_summary.{md,json} (the tables: accuracy,
and flatness), accuracy.png (the table as bars) and accuracy_signature.png (training error,
distance to the reference, gamma and rho over time, Parle vs SGD).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks.common import RESULTS, write_results

DATASETS = {
    "mnist1d": ["data=mnist1d", "model=cnn1d"],
    "digits": ["data=digits", "model=mlp"],
    # the data-scarce regime: a quarter of MNIST-1D's training set, 4x the epochs (same steps)
    "mnist1d/4": ["data=mnist1d", "model=cnn1d", "data.train_fraction=0.25"],
}
EPOCH_SCALE = {"mnist1d/4": 4.0}
SGD_GRID = [(lr, schedule) for lr in (0.03, 0.1, 0.3) for schedule in ("constant", "cosine")]
PARLE = ["algorithm=parle", "algorithm.num_inner_steps=5"]
METHODS: dict[str, list[str]] = {
    "sgd": ["algorithm=sgd", "cluster.replicas_per_process=1"],
    "dp_sgd n=3": ["algorithm=dp_sgd", "cluster.replicas_per_process=3"],
    "local_sgd n=3": [
        "algorithm=local_sgd",
        "algorithm.num_local_steps=5",
        "cluster.replicas_per_process=3",
    ],
    "entropy_sgd": [
        "algorithm=entropy_sgd",
        "algorithm.num_inner_steps=5",
        "cluster.replicas_per_process=1",
    ],
    "elastic_sgd n=3": ["algorithm=elastic_sgd", "cluster.replicas_per_process=3"],
    "parle n=3": [*PARLE, "cluster.replicas_per_process=3"],
    "parle n=6": [*PARLE, "cluster.replicas_per_process=6"],
    "parle n=3 shard": [*PARLE, "cluster.replicas_per_process=3", "data.policy=shard"],
}
# the baselines built on SGD take the learning rate and schedule tuned for SGD
TUNED = ("sgd", "dp_sgd n=3", "local_sgd n=3")
# one factor at a time away from "parle n=3" (the investigation, on MNIST-1D)
FACTORS: dict[str, list[str]] = {
    "L=10": ["algorithm.num_inner_steps=10"],
    "L=25": ["algorithm.num_inner_steps=25"],
    "gamma=0.3": ["algorithm.gamma=0.3"],
    "rho=0.1": ["algorithm.rho=0.1"],
    "no scoping": ["scoping=constant"],
    # half the papers' rate on MNIST-1D (0.5 / B with B = 11 outer steps per epoch): gamma and rho
    # reach their caps after about 14 epochs instead of 5-7
    "slow scoping": ["scoping.gamma_rate=0.02", "scoping.rho_rate=0.02"],
    "lr=0.3": ["algorithm.lr=0.3", "scoping.rho_max=3"],  # lr rho_max (1 + m) < 2
    "cosine": ["lr_schedule=cosine"],
    "noise=1e-3": ["algorithm.noise=0.001"],
    "shard": ["data.policy=shard"],
    "n=6": ["cluster.replicas_per_process=6"],
}
# the flatness of every compared model's reference (not of the tuning and search runs): about 5 s
# a run on digits and 20-30 s on MNIST-1D (2 CPU cores), outside each run's measured wall time
FLATNESS = ["flatness.enabled=true"]
COMMON = [
    "progress=false",
    "logger.plots=false",
    "data.validation_fraction=0.1",
    "checkpoint.every_outer_steps=100000",
]


@dataclass
class Bench:
    workdir: Path
    epochs: float
    seeds: list[int]
    sgd_grid: list[tuple[float, str]]
    flatness: list[str] = field(default_factory=lambda: list(FLATNESS))  # the compared runs'
    records: list[dict[str, Any]] = field(default_factory=list)
    runs: dict[str, Path] = field(default_factory=dict)

    def run(self, name: str, dataset: str, args: list[str], epochs: float, seed: int) -> dict:
        """One CLI run (a fresh process, one thread); its results.json."""
        overrides = [*COMMON, *DATASETS[dataset], *args, f"epochs={epochs:.6g}", f"seed={seed}"]
        digest = hashlib.sha256(" ".join(overrides).encode()).hexdigest()[:8]
        safe = name.replace(" ", "_").replace("=", "").replace("/", "-")
        run_dir = self.workdir / f"{safe}-{digest}"
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        env.pop("RANK", None)
        command = [
            sys.executable,
            "-m",
            "elastic_entropy.train",
            *overrides,
            f"hydra.run.dir={run_dir}",
        ]
        # a kept --workdir is reused: a finished run (same name, same arguments) is read back
        if not (run_dir / "results.json").exists():
            if run_dir.exists():
                shutil.rmtree(run_dir)
            done = subprocess.run(command, env=env, capture_output=True, text=True)
            if done.returncode != 0:
                raise RuntimeError(f"{name} failed: {done.stderr.strip().splitlines()[-1]}")
        self.runs[name] = run_dir
        return json.loads((run_dir / "results.json").read_text())

    def record(self, result: dict, dataset: str, method: str, budget: str, **extra: Any) -> None:
        self.records.append(
            {
                "dataset": dataset,
                "model": result["model"],
                "algorithm": method,
                "num_replicas": result["num_replicas"],
                "budget": budget,
                "seed": extra.pop("seed"),
                "test_acc": result["reference"]["test_acc"],
                "train_acc": result["reference"]["train_acc"],
                "val_acc": result["reference"]["val_acc"],
                "wall_s": result["wall_s"],
                "grad_evals_per_replica": result["steps_per_replica"],
                **flatness_fields(result),
                **extra,
            }
        )

    def select(self, **match: Any) -> list[dict[str, Any]]:
        return [r for r in self.records if all(r.get(k) == v for k, v in match.items())]


def flatness_fields(result: dict[str, Any]) -> dict[str, float]:
    """The reference's flatness from results.json (runs with ``flatness.enabled``): top Hessian
    eigenvalue, Hutchinson trace, the loss's mean rise per relative radius, the local entropy."""
    found = result.get("flatness")
    if not found:
        return {}
    fields = {
        "top_eigenvalue": found["top_eigenvalue"],
        "hessian_trace": found["trace"],
        "flatness_loss": found["loss"],
        **{f"rise_{r['radius']:g}": r["mean"] for r in found["rises"]},
    }
    entropy = found.get("local_entropy")
    if entropy:
        fields["local_entropy"] = entropy["local_entropy"]
        fields["gibbs_loss"] = entropy["gibbs_loss"]
        fields["local_entropy_grad_norm"] = entropy["grad_norm"]
    return fields


def flatness_of_fields(fields: dict[str, Any]) -> dict[str, Any] | None:
    """The inverse of ``flatness_fields``: results.json's ``flatness`` from a record's fields
    (``None`` where the run measured none)."""
    if "top_eigenvalue" not in fields:
        return None
    rises = [k for k in fields if k.startswith("rise_")]
    found: dict[str, Any] = {
        "top_eigenvalue": fields["top_eigenvalue"],
        "trace": fields["hessian_trace"],
        "loss": fields["flatness_loss"],
        "rises": [{"radius": float(k[len("rise_") :]), "mean": fields[k]} for k in rises],
    }
    if "local_entropy" in fields:
        found["local_entropy"] = {
            "local_entropy": fields["local_entropy"],
            "gibbs_loss": fields["gibbs_loss"],
            "grad_norm": fields["local_entropy_grad_norm"],
        }
    return found


FLATNESS_COLUMNS = ("top_eigenvalue", "hessian_trace", "rise_0.05", "rise_0.1", "local_entropy")


def flatness_table(bench: Bench, datasets: list[str], methods: list[str]) -> str:
    """Mean ± std over seeds of each flatness measure, per dataset, method and budget."""
    rows = [
        "flatness of the reference on its training loss (flatness.num_samples points), mean ± std "
        "over seeds: "
        "top Hessian eigenvalue, Hessian trace, loss rise at relative radius r, local entropy "
        "f_gamma (gamma 1)",
        f"  {'dataset':<11}{'method':<20}{'budget':<7}"
        + "".join(f"{name:>22}" for name in FLATNESS_COLUMNS),
    ]
    for dataset in datasets:
        for budget in ("evals", "wall"):
            for method in [*methods, "parle chosen on val"]:
                chosen = [
                    r
                    for r in bench.select(dataset=dataset, algorithm=method, budget=budget)
                    if "top_eigenvalue" in r
                ]
                if not chosen:
                    continue
                cells = []
                for name in FLATNESS_COLUMNS:
                    values = [r[name] for r in chosen if name in r]
                    std = statistics.stdev(values) if len(values) > 1 else 0.0
                    cells.append(
                        f"{statistics.mean(values):>12.4g} ± {std:<7.2g}"
                        if values
                        else f"{'–':>22}"
                    )
                rows.append(f"  {dataset:<11}{method:<20}{budget:<7}" + "".join(cells))
    return "\n".join(rows)


def tune_sgd(bench: Bench, dataset: str, epochs: float, budget: str) -> list[str]:
    """The (lr, schedule) with the best validation accuracy of SGD, seed 0."""
    scores = {}
    for lr, schedule in bench.sgd_grid:
        name = f"tune {dataset} {budget} {lr} {schedule}"
        args = [*METHODS["sgd"], f"algorithm.lr={lr}", f"lr_schedule={schedule}"]
        scores[(lr, schedule)] = bench.run(name, dataset, args, epochs, 0)["reference"]["val_acc"]
    lr, schedule = max(scores, key=lambda key: scores[key])
    return [f"algorithm.lr={lr}", f"lr_schedule={schedule}"]


def run_budget(
    bench: Bench, dataset: str, methods: list[str], budget: str, epochs: dict[str, float]
) -> None:
    """Every method on every seed; ``epochs`` per method (equal evals: all the same)."""
    tuned = tune_sgd(bench, dataset, epochs["sgd"], budget)
    for method in methods:
        args = [*METHODS[method], *(tuned if method in TUNED else []), *bench.flatness]
        for seed in bench.seeds:
            name = f"{dataset} {budget} {method} {seed}"
            result = bench.run(name, dataset, args, epochs[method], seed)
            bench.record(
                result, dataset, method, budget, seed=seed, epochs=epochs[method], settings=args
            )


def wall_epochs(bench: Bench, dataset: str, methods: list[str], epochs: float) -> dict[str, float]:
    """Epochs per method that fill the wall time Parle n=3 took at equal gradient evaluations."""

    def wall(method: str) -> float:
        return statistics.mean(
            r["wall_s"] for r in bench.select(dataset=dataset, algorithm=method, budget="evals")
        )

    target = wall("parle n=3")
    return {m: epochs * target / wall(m) for m in methods}


def investigate(bench: Bench, dataset: str, epochs: dict[str, float]) -> dict[str, Any]:
    """Parle's own search at equal wall-clock, every candidate judged on validation (seed 0):
    one factor at a time; a greedy combination (factors in order of validation accuracy, each
    kept only if it raises it); a random search over the joint space. The candidate with the best
    validation accuracy then runs on every seed."""
    base = METHODS["parle n=3"]

    def run_epochs(args: list[str]) -> float:
        return epochs["parle n=6"] if "cluster.replicas_per_process=6" in args else bench.epochs

    def trial(label: str, args: list[str], seed: int = 0, method: str | None = None) -> dict:
        result = bench.run(
            f"{dataset} factor {label} {seed}", dataset, args, run_epochs(args), seed
        )
        bench.record(
            result,
            dataset,
            method or f"parle {label}",
            "wall",
            seed=seed,
            epochs=run_epochs(args),
            settings=args,
        )
        return result["reference"]

    candidates: dict[str, list[str]] = {"n=3": base}
    rows = [{"factor": "n=3", **trial("n=3", base)}]
    for label, args in FACTORS.items():
        candidates[label] = [*base, *args]
        rows.append({"factor": label, **trial(label, candidates[label])})
    baseline = rows[0]["val_acc"]
    ranked = sorted(rows[1:], key=lambda row: row["val_acc"], reverse=True)
    kept: list[str] = []
    best = baseline
    for row in ranked:
        if row["val_acc"] <= baseline:
            break
        label = "+".join([*kept, row["factor"]])
        candidates[label] = [*base, *_args([*kept, row["factor"]])]
        reference = trial(label, candidates[label])
        rows.append({"factor": label, **reference})
        if reference["val_acc"] > best:
            kept, best = [*kept, row["factor"]], reference["val_acc"]
    for k, args in enumerate(_random_configs(NUM_RANDOM)):
        label = f"random {k}"
        candidates[label] = [*base, *args]
        rows.append(
            {"factor": label, "settings": " ".join(args), **trial(label, candidates[label])}
        )
    winner = max(rows, key=lambda row: row["val_acc"])["factor"]
    for seed in bench.seeds:
        trial(winner, [*candidates[winner], *bench.flatness], seed, method="parle chosen on val")
    return {"rows": rows, "greedy": kept, "chosen": winner, "settings": candidates[winner]}


NUM_RANDOM = 16
SPACE: dict[str, list[str]] = {
    "algorithm.num_inner_steps": ["3", "5", "10"],
    "algorithm.gamma": ["0.01", "0.03", "0.1", "0.3"],
    "algorithm.rho": ["0.03", "0.1", "0.3", "1.0"],
    "scoping.gamma_rate": ["null", "0.02", "0.01"],  # null: the papers' 0.5 / B
    "algorithm.lr": ["0.05", "0.1", "0.2"],
    "lr_schedule": ["constant", "cosine"],
    "algorithm.noise": ["0.0", "0.0001", "0.001"],
    "data.policy": ["full", "shard"],
}


def _random_configs(count: int) -> list[list[str]]:
    """``count`` points of SPACE, the same ones on every run (a fixed seed)."""
    rng = random.Random(0)
    configs = []
    for _ in range(count):
        point = {key: rng.choice(values) for key, values in SPACE.items()}
        point["scoping.rho_rate"] = point["scoping.gamma_rate"]
        # keep lr rho_max (1 + momentum) < 2, the optimizer's stability bound
        point["scoping.rho_max"] = f"{min(10.0, 1.0 / float(point['algorithm.lr'])):g}"
        configs.append([f"{key}={value}" for key, value in point.items()])
    return configs


def _args(labels: list[str]) -> list[str]:
    return [a for label in labels for a in FACTORS[label]]


def summary(bench: Bench, datasets: list[str], methods: list[str]) -> tuple[str, dict]:
    rows = [
        f"reference test accuracy, mean ± std over {len(bench.seeds)} seed(s); budgets: evals = "
        f"{bench.epochs:g} epochs per replica, wall = the wall time of parle n=3 at that budget",
        f"  {'dataset':<11}{'method':<20}{'budget':<7}{'epochs':>7}{'test acc':>17}"
        f"{'val acc':>9}{'train acc':>10}{'wall s':>8}",
    ]
    means: dict[tuple[str, str, str], float] = {}
    for dataset in datasets:
        for budget in ("evals", "wall"):
            names = [*methods, *(["parle chosen on val"] if budget == "wall" else [])]
            for method in names:
                chosen = bench.select(dataset=dataset, algorithm=method, budget=budget)
                if not chosen:
                    continue
                accs = [r["test_acc"] for r in chosen]
                std = statistics.stdev(accs) if len(accs) > 1 else 0.0
                means[(dataset, method, budget)] = statistics.mean(accs)
                rows.append(
                    f"  {dataset:<11}{method:<20}{budget:<7}{chosen[0]['epochs']:>7.1f}"
                    f"{statistics.mean(accs):>11.4f} ± {std:.4f}"
                    f"{statistics.mean(r['val_acc'] for r in chosen):>9.4f}"
                    f"{statistics.mean(r['train_acc'] for r in chosen):>10.4f}"
                    f"{statistics.mean(r['wall_s'] for r in chosen):>8.1f}"
                )
    return "\n".join(rows), means


def factor_table(found: dict[str, Any]) -> str:
    rows = [
        "Parle's search from parle n=3 (MNIST-1D, equal wall-clock, seed 0): one factor at a "
        "time, greedy combinations, random points; chosen on val, never on test",
        f"  {'candidate':<26}{'val acc':>9}{'test acc':>10}  settings",
    ]
    for row in found["rows"]:
        rows.append(
            f"  {row['factor']:<26}{row['val_acc']:>9.4f}{row['test_acc']:>10.4f}"
            f"  {row.get('settings', '')}"
        )
    rows.append(f"  kept by the greedy combination: {', '.join(found['greedy']) or 'none'}")
    rows.append(f"  chosen on val: {found['chosen']} ({' '.join(found['settings'])})")
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--epochs", type=float, default=None)
    parser.add_argument("--seeds", type=int, default=None)
    parser.add_argument("--out", type=Path, default=None, help="results folder")
    parser.add_argument(
        "--workdir", type=Path, default=None, help="keep the runs here (finished ones are reused)"
    )
    args = parser.parse_args()
    epochs = args.epochs or (1.0 if args.quick else 20.0)
    seeds = list(range(args.seeds or (1 if args.quick else 3)))
    datasets = ["digits"] if args.quick else list(DATASETS)
    methods = ["sgd", "parle n=3"] if args.quick else list(METHODS)
    folder = args.out or RESULTS
    folder.mkdir(parents=True, exist_ok=True)
    found = None
    with tempfile.TemporaryDirectory() as tmp:
        if args.workdir is not None:
            args.workdir.mkdir(parents=True, exist_ok=True)
        grid = [(0.1, "constant"), (0.1, "cosine")] if args.quick else SGD_GRID
        # --quick checks the pipeline: the flatness on a quarter of the sample, no local entropy
        quick = ["flatness.num_samples=256", "flatness.num_inner_steps=0"] if args.quick else []
        bench = Bench(args.workdir or Path(tmp), epochs, seeds, grid, [*FLATNESS, *quick])
        for dataset in datasets:
            base = epochs * EPOCH_SCALE.get(dataset, 1.0)
            run_budget(bench, dataset, methods, "evals", {m: base for m in methods})
            scaled = wall_epochs(bench, dataset, methods, base)
            run_budget(bench, dataset, methods, "wall", scaled)
            if dataset == "mnist1d":
                found = investigate(bench, dataset, scaled)
        table, means = summary(bench, datasets, methods)
        table += "\n\n" + flatness_table(bench, datasets, methods)
        if found is not None:
            table += "\n\n" + factor_table(found)
        first = datasets[0]
        plots = {
            "sgd": bench.runs[f"{first} evals sgd 0"],
            "parle n=3": bench.runs[f"{first} evals parle n=3 0"],
        }
        draw(bench, means, datasets, methods, plots, folder)
    print(table)
    ratios = {
        f"{d}:{m}-sgd": means[(d, m, "wall")] - means[(d, "sgd", "wall")]
        for d in datasets
        for m in [*methods, "parle chosen on val"]
        if m != "sgd" and (d, m, "wall") in means
    }
    figures = {"ratios": ratios, "epochs": epochs, "investigation": found}
    write_results("accuracy_summary", figures, table, folder)
    (folder / "accuracy.json").write_text(json.dumps(bench.records, indent=2) + "\n")
    print("ratios: " + " ".join(f"{k}={v:+.4f}" for k, v in ratios.items()))


def draw(
    bench: Bench,
    means: dict[tuple[str, str, str], float],
    datasets: list[str],
    methods: list[str],
    signature_runs: dict[str, Path],
    folder: Path,
) -> None:
    """accuracy.png (test accuracy per method and budget) and accuracy_signature.png."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(datasets), figsize=(6 * len(datasets), 4), squeeze=False)
    for ax, dataset in zip(axes[0], datasets):
        for offset, budget in ((-0.2, "evals"), (0.2, "wall")):
            names = [m for m in [*methods, "parle chosen on val"] if (dataset, m, budget) in means]
            xs = [i + offset for i, m in enumerate(names)]
            stds = []
            for m in names:
                chosen = bench.select(dataset=dataset, algorithm=m, budget=budget)
                accs = [r["test_acc"] for r in chosen]
                stds.append(statistics.stdev(accs) if len(accs) > 1 else 0.0)
            values = [means[(dataset, m, budget)] for m in names]
            ax.bar(xs, values, width=0.4, yerr=stds, label=f"equal {budget}")
            ax.set_xticks(range(len(names)), names, rotation=35, ha="right", fontsize=8)
        low = min(v for (d, _, _), v in means.items() if d == dataset)
        ax.set_ylim(max(0.0, low - 0.03), 1.0)
        ax.set_title(f"{dataset}: reference test accuracy")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(folder / "accuracy.png", dpi=110)
    plt.close(fig)
    signature(signature_runs, folder / "accuracy_signature.png", plt)


def _records(run_dir: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def signature(runs: dict[str, Path], path: Path, plt: Any) -> None:
    """The regularisation signature: Parle trains slower, its replicas stay near the reference
    while the couplings grow, and it ends at or above SGD on test."""
    fig, axes = plt.subplots(1, 4, figsize=(18, 3.6))
    for label, run_dir in runs.items():
        lines = _records(run_dir)
        evals = [r for r in lines if "reference/train_acc" in r]
        epochs = [r["epoch"] for r in evals]
        axes[0].plot(epochs, [1 - r["reference/train_acc"] for r in evals], label=label)
        axes[1].plot(epochs, [1 - r["reference/test_acc"] for r in evals], label=label)
        trained = [r for r in lines if "distance" in r]
        if label != "sgd":
            axes[2].plot([r["epoch"] for r in trained], [r["distance"] for r in trained])
            axes[3].plot(
                [r["epoch"] for r in trained], [r["gamma"] for r in trained], label="gamma"
            )
            axes[3].plot([r["epoch"] for r in trained], [r["rho"] for r in trained], label="rho")
    axes[0].set(title="training error of the reference", yscale="log", xlabel="epoch")
    axes[1].set(title="test error of the reference", xlabel="epoch")
    axes[2].set(title="parle: replica distance |z - r|", yscale="log", xlabel="epoch")
    axes[3].set(title="parle: couplings (scoping)", yscale="log", xlabel="epoch")
    for ax in (axes[0], axes[1], axes[3]):
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
