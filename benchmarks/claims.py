"""The papers' testable claims, rerun with the authors' settings on what runs here.

    python -m benchmarks.claims             # MNIST-1D (1-D CNN): 5 seeds at 20 passes, 3 at 125
    python -m benchmarks.claims --quick     # digits, one seed, one pass: the pipeline
    python -m benchmarks.claims --workload digits --seeds-large 5 --wall-budgets 20 125 \
        --large-methods sgd "parle n=3" entropy_sgd "elastic_sgd n=3" "parle n=3 frac 0.5" \
        "parle n=6 frac 0.25" "elastic_sgd n=3 frac 0.5"   # every claim at both budgets
    python -m benchmarks.claims --budgets 125 ...   # claims.mnist1d-125.{json,md}

The claims (issue 14; Entropy-SGD, ICLR 2017; Parle, SysML 2018; Elastic-SGD):
1. Parle's reference has a lower test error than SGD (at equal gradient evaluations per replica,
   and at equal wall-clock on the same workers);
2. Parle beats Entropy-SGD and Elastic-SGD (2b, the issue's: Parle regularises, its final training
   error stays above SGD's);
3. Parle with each replica on a fraction of the data (n=3 frac 0.5, n=6 frac 0.25) matches SGD on
   all of it;
4. more replicas help (n = 3, 6, 8);
5. Entropy-SGD reaches SGD's error in fewer effective epochs (epochs x L = passes over the data);
6. Parle's and Entropy-SGD's solutions are flatter than SGD's (top Hessian eigenvalue, trace, the
   rise of the loss under random perturbations);
7. Elastic-SGD's reference beats SGD on split data (n=3, frac 0.5).

The settings are the authors' (DistESGD and parle_mpi.py, the Entropy-SGD authors' train.lua; see
shared/reference/papers.md): Parle n=3, L=25, gamma 0.01, rho 1, lr 0.1 with the inner lr fixed
at 0.1, couplings scoped by (1 + 0.5/nb) per outer step up to 1 and 10, each replica from its own
initialisation, the outer lr x0.2, x0.04, x0.01 at 1/5, 2/5, 3/5 of the budget (their WRN
``--lrs [[1,0.1],[2,0.02],[3,0.004],[5,0.001]]`` over 5 Parle epochs); Entropy-SGD the authors'
(``variant=iclr2017``): lr 1, L=20, inner lr 0.1 fixed, gamma 0.03 x(1 + 1e-3) per outer step
uncapped, noise 1e-4, lr x0.2, x0.04 at 3/10 and 6/10; Elastic-SGD (``L = 0``) rho 1 with the
same scoping, lr 0.1 x0.2, x0.04, x0.01 at 0.3, 0.6, 0.8 (their ``-L 0 -B 200`` schedule); SGD
Nesterov, lr and schedule (cosine or the step drops x0.2 at 0.3, 0.6, 0.8) chosen on validation.
Budgets are passes over a replica's own data (the papers' effective epochs: the authors' Parle
epoch is nb outer steps of L minibatches = L passes; their 5 Parle epochs at L=25 = 125 passes):
the project's 20 and the authors' 125; under ``data.policy=frac`` a replica's passes are over its
fraction (``epochs`` = passes x frac of the whole training set), as the authors counted them.

Nothing is chosen on test. A validation split (``data.validation_fraction=0.1``) chooses SGD's
lr and schedule, and at 20 passes each other method's schedule (the authors' step drops or cosine;
at 125 passes they run the authors' step drops). The equal wall-clock SGD gets the wall time of
Parle n=3 (its passes scaled by the measured ratio) and its own choice on validation.
``--wall-budgets`` gives the budgets with an equal wall-clock SGD (default: the first),
``--large-methods`` the methods run at the budgets after the first. A workload or budgets other
than the default write ``claims.WORKLOAD[-B1-B2].{json,md}``, beside the default's ``claims``.
``--workdir DIR`` keeps the runs and reuses finished ones; ``--reuse FILE.json`` takes the runs
recorded in an earlier invocation's results file as finished, when its workdir is gone (a record
whose settings have changed since, by the digest in its run's name, is trained again);
``--deadline HH:MM`` (UTC) starts no run after that time and reports what finished, labelled
partial.

Writes benchmarks/results/claims.{json,md}: the claim lines, the tables, every run's record.
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks.accuracy import COMMON, DATASETS, FLATNESS, flatness_fields, flatness_of_fields
from benchmarks.common import RESULTS, write_results

WORKLOADS = {
    "mnist1d": DATASETS["mnist1d"],
    "digits": DATASETS["digits"],
    "mnist5k": ["data=mnist5k", "model=lenet"],
}
# the authors' algorithms, their constants (the schedule is added per budget)
PARLE = [
    "algorithm=parle",
    "algorithm.num_inner_steps=25",
    "algorithm.gamma=0.01",
    "algorithm.rho=1.0",
    "algorithm.lr=0.1",
    "algorithm.inner_lr=0.1",
    "algorithm.replica_init=independent",
    "scoping=exponential",  # null rates: 0.5 / nb per outer step; caps 1 and 10 (DistESGD)
]
METHODS: dict[str, list[str]] = {
    "sgd": ["algorithm=sgd", "cluster.replicas_per_process=1"],
    "parle n=3": [*PARLE, "cluster.replicas_per_process=3"],
    "parle n=6": [*PARLE, "cluster.replicas_per_process=6"],
    "parle n=8": [*PARLE, "cluster.replicas_per_process=8"],
    "parle n=3 frac 0.5": [
        *PARLE,
        "cluster.replicas_per_process=3",
        "data.policy=frac",
        "data.frac=0.5",
    ],
    "parle n=6 frac 0.25": [
        *PARLE,
        "cluster.replicas_per_process=6",
        "data.policy=frac",
        "data.frac=0.25",
    ],
    "entropy_sgd": [
        "algorithm=entropy_sgd",
        "algorithm.variant=iclr2017",
        "algorithm.lr=1.0",
        "algorithm.inner_lr=0.1",
        "algorithm.num_inner_steps=20",
        "algorithm.gamma=0.03",
        "algorithm.noise=0.0001",
        "scoping.gamma_rate=0.001",
        "scoping.gamma_max=inf",
        "cluster.replicas_per_process=1",
    ],
    "elastic_sgd n=3": [
        "algorithm=elastic_sgd",
        "algorithm.rho=1.0",
        "algorithm.lr=0.1",
        "cluster.replicas_per_process=3",
    ],
    "elastic_sgd n=3 frac 0.5": [
        "algorithm=elastic_sgd",
        "algorithm.rho=1.0",
        "algorithm.lr=0.1",
        "cluster.replicas_per_process=3",
        "data.policy=frac",
        "data.frac=0.5",
    ],
}
# the authors' step drops per family: (fractions of the budget, factors of lr), inner lr fixed
STEPS: dict[str, tuple[tuple[float, ...], tuple[float, ...], bool]] = {
    "parle": ((0.2, 0.4, 0.6), (0.2, 0.04, 0.01), True),
    "entropy_sgd": ((0.3, 0.6), (0.2, 0.04), True),
    "elastic_sgd": ((0.3, 0.6, 0.8), (0.2, 0.04, 0.01), False),
    "sgd": ((0.3, 0.6, 0.8), (0.2, 0.04, 0.008), False),
}
SGD_LRS = (0.03, 0.1, 0.3)
SCHEDULES = ("step", "cosine")
FRACS = ["parle n=3 frac 0.5", "parle n=6 frac 0.25"]
# the compared models whose flatness is measured (claim 6)
FLAT = ("sgd", "parle n=3", "entropy_sgd")
FLATNESS_COLUMNS = ("top_eigenvalue", "hessian_trace", "rise_0.05", "rise_0.1", "local_entropy")


def family(method: str) -> str:
    return method.split()[0]


def fraction(method: str) -> float:
    args = METHODS[method]
    found = [a.split("=", 1)[1] for a in args if a.startswith("data.frac=")]
    return float(found[0]) if found else 1.0


def schedule_args(method: str, schedule: str, budget: float) -> list[str]:
    """The lr schedule over a budget of ``budget`` passes of the whole training set."""
    fixed = STEPS[family(method)][2]
    inner = ["lr_schedule.inner_lr=fixed"] if fixed else []
    if schedule == "cosine":
        return ["lr_schedule=cosine", *inner]
    at, factors = STEPS[family(method)][:2]
    milestones = ",".join(f"{budget * a:.6g}" for a in at)
    return [
        "lr_schedule=step",
        f"lr_schedule.milestones=[{milestones}]",
        f"lr_schedule.factors=[{','.join(f'{f:g}' for f in factors)}]",
        *inner,
    ]


@dataclass(frozen=True)
class Job:
    workload: str
    method: str
    budget: str  # "evals" or "wall"
    passes: float  # per replica, over its own data
    seed: int
    schedule: str
    lr: float | None = None  # SGD's, from the grid
    flatness: bool = False

    def overrides(self, flat_args: list[str]) -> list[str]:
        epochs = self.passes * fraction(self.method)  # passes of the whole training set
        args = [
            *COMMON,
            *WORKLOADS[self.workload],
            *METHODS[self.method],
            *(["algorithm.lr=" + f"{self.lr:g}"] if self.lr is not None else []),
            *schedule_args(self.method, self.schedule, epochs),
            "epoch_unit=pass",
            f"epochs={epochs:.6g}",
            f"eval_every={max(epochs / 20, 1e-3):.6g}",  # 20 points of the test curve
            f"seed={self.seed}",
        ]
        return [*args, *(flat_args if self.flatness else [])]


@dataclass
class Bench:
    workdir: Path
    flat_args: list[str]
    deadline: dt.datetime | None
    workers: int = 2
    results: dict[Job, dict[str, Any]] = field(default_factory=dict)
    skipped: list[Job] = field(default_factory=list)
    failed: dict[Job, str] = field(default_factory=dict)
    trained: list[Job] = field(default_factory=list)  # by this invocation, not found done
    reused: list[Job] = field(default_factory=list)  # from an earlier invocation's records
    untimed_s: float = 0.0  # the span of reused records that carry no start and end

    def run_dir(self, job: Job) -> Path:
        overrides = job.overrides(self.flat_args)
        digest = hashlib.sha256(" ".join(overrides).encode()).hexdigest()[:10]
        label = f"{job.workload}-{job.method}-{job.budget}-{job.passes:g}-s{job.seed}"
        return self.workdir / f"{label.replace(' ', '_').replace('=', '')}-{digest}"

    def late(self) -> bool:
        return self.deadline is not None and dt.datetime.now(dt.timezone.utc) > self.deadline

    def _one(self, job: Job) -> None:
        run_dir = self.run_dir(job)
        # a run another benchmark process still trains (its files written in the last minutes)
        while not (run_dir / "results.json").exists() and _live(run_dir) and not self.late():
            time.sleep(5)
        if not (run_dir / "results.json").exists():
            if self.late():
                self.skipped.append(job)
                return
            if run_dir.exists():
                shutil.rmtree(run_dir)
            env = {**os.environ, "OMP_NUM_THREADS": "1"}
            env.pop("RANK", None)
            command = [
                sys.executable,
                "-m",
                "elastic_entropy.train",
                *job.overrides(self.flat_args),
                f"hydra.run.dir={run_dir}",
            ]
            done = subprocess.run(command, env=env, capture_output=True, text=True)
            if done.returncode != 0:
                lines = done.stderr.strip().splitlines() or ["(no stderr)"]
                self.failed[job] = lines[-1]
                print(f"FAILED {job}: {lines[-1]}", file=sys.stderr, flush=True)
                return
            print(f"done {run_dir.name}", file=sys.stderr, flush=True)
            self.trained.append(job)
        result = json.loads((run_dir / "results.json").read_text())
        result["curve"] = _curve(run_dir)
        result["started"] = (run_dir / "config.yaml").stat().st_mtime
        result["ended"] = (run_dir / "results.json").stat().st_mtime
        self.results[job] = result

    def run(self, jobs: list[Job]) -> None:
        """The jobs not run yet, ``workers`` at a time (one thread each), seed 0's first."""
        todo = list(dict.fromkeys(j for j in jobs if j not in self.results))
        # seed by seed, so that a deadline leaves every configuration with as many seeds
        todo.sort(key=lambda j: j.seed)
        with ThreadPoolExecutor(self.workers) as pool:
            list(pool.map(self._one, todo))

    def got(self, job: Job) -> dict[str, Any] | None:
        return self.results.get(job)


def _live(run_dir: Path, within_s: float = 180.0) -> bool:
    """Whether a file under ``run_dir`` changed in the last ``within_s`` seconds."""
    if not run_dir.exists():
        return False
    times = [f.stat().st_mtime for f in run_dir.rglob("*") if f.is_file()]
    return bool(times) and time.time() - max(times) < within_s


def _curve(run_dir: Path) -> list[tuple[float, float]]:
    """(passes of the whole training set, reference test error) at every evaluation."""
    curve = []
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        record = json.loads(line)
        if "reference/test_acc" in record:
            curve.append((record["epoch"], 1.0 - record["reference/test_acc"]))
    return curve


# ------------------------------------------------------------------------------ the plan
@dataclass
class Plan:
    workload: str
    seeds: list[int]
    budgets: list[float]  # passes; the first is the project's, the last the authors'
    sgd_grid: list[tuple[float, str]]
    schedules: tuple[str, ...]
    methods_small: list[str]  # the methods run at the first budget
    methods_large: list[str]  # at the others
    wall_at: list[float] | None = None  # budgets with an equal wall-clock SGD (None: the first)
    seeds_large: list[int] | None = None  # at the budgets after the first (None: seeds)
    chosen: dict[tuple[str, str, float], Job] = field(default_factory=dict)  # seed-0 winners
    wall_of: dict[float, float] = field(default_factory=dict)  # Parle's passes: the wall SGD's

    def walls(self) -> list[float]:
        return self.budgets[:1] if self.wall_at is None else self.wall_at


def _val(bench: Bench, job: Job) -> float:
    found = bench.got(job)
    return found["reference"]["val_acc"] if found else -1.0


def choose(bench: Bench, plan: Plan, method: str, budget: str, passes: float) -> Job | None:
    """Seed 0's candidates of ``method`` at this budget, the best on validation."""
    ran = [c for c in candidates(plan, method, budget, passes) if bench.got(c)]
    if not ran:
        return None
    best = max(ran, key=lambda c: _val(bench, c))
    plan.chosen[(method, budget, passes)] = best
    return best


def seeds_for(plan: Plan, budget: str, passes: float) -> list[int]:
    large = budget == "evals" and passes != plan.budgets[0]
    return plan.seeds_large if large and plan.seeds_large is not None else plan.seeds


def seeded(plan: Plan, best: Job, flat: bool) -> list[Job]:
    return [
        Job(best.workload, best.method, best.budget, best.passes, s, best.schedule, best.lr, flat)
        for s in seeds_for(plan, best.budget, best.passes)
    ]


def alike(plan: Plan, method: str, budget: str, passes: float) -> list[Job]:
    """The seeds of a configuration that takes the schedule Parle n=3 (Elastic-SGD n=3) chose."""
    tuned = "elastic_sgd n=3" if family(method) == "elastic_sgd" else "parle n=3"
    like = plan.chosen.get((tuned, budget, passes))
    if like is None:
        return []
    return [
        Job(plan.workload, method, budget, passes, s, like.schedule)
        for s in seeds_for(plan, budget, passes)
    ]


def candidates(plan: Plan, method: str, budget: str, passes: float) -> list[Job]:
    flat = method in FLAT and budget == "evals"
    if method == "sgd":
        # one point: its run is the seed-0 run, flatness and all
        flat = flat and len(plan.sgd_grid) == 1
        grid = plan.sgd_grid
        return [Job(plan.workload, "sgd", budget, passes, 0, s, lr, flat) for lr, s in grid]
    schedules = plan.schedules if passes == plan.budgets[0] else ("step",)
    return [Job(plan.workload, method, budget, passes, 0, s, None, flat) for s in schedules]


def execute(bench: Bench, plan: Plan) -> None:
    """Stages in order of importance: the first budget's claims, then the authors' budget."""
    small, rest = plan.budgets[0], plan.budgets[1:]
    tuned = ["sgd", "parle n=3", "entropy_sgd", "elastic_sgd n=3"]
    first = [m for m in tuned if m in plan.methods_small]
    # 1. seed 0's candidates at the first budget
    bench.run([j for m in first for j in candidates(plan, m, "evals", small)])
    # 2. every seed of the chosen, the other configurations with Parle's chosen schedule, and the
    #    equal wall-clock SGD's candidates
    jobs: list[Job] = []
    for m in first:
        best = choose(bench, plan, m, "evals", small)
        if best:
            jobs += seeded(plan, best, m in FLAT)
    others = [m for m in plan.methods_small if m not in tuned]
    jobs += [j for m in others for j in alike(plan, m, "evals", small)]
    jobs += wall_candidates(bench, plan, small)
    bench.run(jobs)
    # 3. the equal wall-clock SGD's seeds; the authors' budget's candidates
    jobs = wall_seeds(bench, plan, small)
    large = [m for m in tuned if m in plan.methods_large]
    jobs += [
        j
        for p in rest
        for m in large
        if m != "elastic_sgd n=3"
        for j in candidates(plan, m, "evals", p)
    ]
    bench.run(jobs)
    # 4. the authors' budget's seeds (Elastic-SGD's last: the costliest, claim 2 only)
    jobs = []
    for p in rest:
        for m in large:
            if m == "elastic_sgd n=3":
                continue
            best = choose(bench, plan, m, "evals", p)
            if best:
                jobs += seeded(plan, best, m in FLAT)
    bench.run(jobs)
    if "elastic_sgd n=3" in large:
        jobs = [j for p in rest for j in candidates(plan, "elastic_sgd n=3", "evals", p)]
        bench.run(jobs)
        jobs = []
        for p in rest:
            best = choose(bench, plan, "elastic_sgd n=3", "evals", p)
            if best:
                jobs += seeded(plan, best, False)
        bench.run(jobs)
    # 5. the other configurations at the authors' budget (Parle on fractions: claim 3)
    bench.run(
        [
            j
            for p in rest
            for m in plan.methods_large
            if m not in tuned
            for j in alike(plan, m, "evals", p)
        ]
    )
    # 6. the equal wall-clock SGD at the authors' budget, where asked (the costliest runs)
    bench.run([j for p in rest for j in wall_candidates(bench, plan, p)])
    bench.run([j for p in rest for j in wall_seeds(bench, plan, p)])


def wall_candidates(bench: Bench, plan: Plan, passes: float) -> list[Job]:
    """SGD's candidates at the wall time of Parle n=3 over ``passes``: SGD's passes scaled by
    the wall-time ratio of the two methods' chosen seed-0 runs at equal evaluations."""
    parle = plan.chosen.get(("parle n=3", "evals", passes))
    sgd = plan.chosen.get(("sgd", "evals", passes))
    if passes not in plan.walls() or parle is None or sgd is None:
        return []
    ratio = bench.got(parle)["wall_s"] / bench.got(sgd)["wall_s"]
    plan.wall_of[passes] = round(passes * ratio, 1)
    return candidates(plan, "sgd", "wall", plan.wall_of[passes])


def wall_seeds(bench: Bench, plan: Plan, passes: float) -> list[Job]:
    if passes not in plan.wall_of:
        return []
    best = choose(bench, plan, "sgd", "wall", plan.wall_of[passes])
    return seeded(plan, best, False) if best else []


# --------------------------------------------------------------------------- the numbers
def runs_of(bench: Bench, plan: Plan, method: str, budget: str, passes: float) -> list[dict]:
    """The seeds' results of ``method`` at this budget (the chosen schedule's)."""
    if method in ("sgd", "parle n=3", "entropy_sgd", "elastic_sgd n=3"):
        best = plan.chosen.get((method, budget, passes))
        if best is None:
            return []
        jobs = seeded(plan, best, method in FLAT and budget == "evals")
    else:
        jobs = alike(plan, method, budget, passes)
    return [r for j in jobs if (r := bench.got(j)) is not None]


@dataclass
class Stat:
    mean: float
    std: float
    n: int

    def __str__(self) -> str:
        return f"{100 * self.mean:.2f} ± {100 * self.std:.2f}% (n={self.n})"


def _s(value: Stat | None) -> str:
    return str(value) if value is not None else "not run"


def stat(values: list[float]) -> Stat | None:
    if not values:
        return None
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return Stat(statistics.mean(values), std, len(values))


def error(runs: list[dict], key: str = "test_acc") -> Stat | None:
    return stat([1.0 - r["reference"][key] for r in runs])


def verdict(better: Stat | None, worse: Stat | None) -> str:
    """'holds' when ``better`` is lower than ``worse`` by more than the seeds' spread (the rms
    of the two stds), 'does not hold' when higher by more, else 'inconclusive'."""
    if better is None or worse is None:
        return "not run"
    noise = math.sqrt((better.std**2 + worse.std**2) / 2)
    diff = better.mean - worse.mean
    if abs(diff) <= noise:
        return "inconclusive"
    return "holds" if diff < 0 else "does not hold"


def combine(verdicts: list[str]) -> str:
    found = [v for v in verdicts if v != "not run"]
    if not found:
        return "not run"
    if all(v == found[0] for v in found):
        return found[0]
    if "does not hold" in found and "holds" not in found:
        return "does not hold or inconclusive"
    if "holds" in found and "does not hold" not in found:
        return "holds or inconclusive"
    return "mixed"


def claims(bench: Bench, plan: Plan) -> tuple[list[str], dict[str, Any]]:
    """One line per claim: the numbers (test error, mean ± std over seeds) and the verdict."""
    small, large = plan.budgets[0], plan.budgets[-1]

    def err(method: str, passes: float, budget: str = "evals", key: str = "test_acc"):
        return error(runs_of(bench, plan, method, budget, passes), key)

    lines, figures = [], {}

    def line(number: str, text: str, result: str, numbers: dict[str, Any]) -> None:
        lines.append(f"claim {number}: {text} -> {result}")
        figures[f"claim {number}"] = {
            "verdict": result,
            **{k: (vars(v) if isinstance(v, Stat) else v) for k, v in numbers.items()},
        }

    # 1. Parle's reference beats SGD
    parts, verdicts, numbers = [], [], {}
    budgets = []
    for passes in dict.fromkeys([small, large]):
        budgets.append((passes, "evals", passes))
        if passes in plan.wall_of:
            budgets.append((plan.wall_of[passes], "wall", passes))
    for sgd_passes, budget, parle_passes in budgets:
        p, s = err("parle n=3", parle_passes), err("sgd", sgd_passes, budget)
        v = verdict(p, s)
        verdicts.append(v)
        label = f"{parle_passes:g} passes, equal {budget}"
        label += f" (SGD {sgd_passes:g} passes)" if budget == "wall" else ""
        parts.append(f"[{label}] parle n=3 {_s(p)} vs sgd {_s(s)}: {v}")
        numbers[f"{label}: parle n=3"], numbers[f"{label}: sgd"] = p, s
    line(
        "1",
        "Parle's reference beats SGD (test error); " + "; ".join(parts),
        combine(verdicts),
        numbers,
    )

    # 2. Parle beats Entropy-SGD and Elastic-SGD
    parts, verdicts, numbers = [], [], {}
    for passes in dict.fromkeys([small, large]):
        p = err("parle n=3", passes)
        e, el = err("entropy_sgd", passes), err("elastic_sgd n=3", passes)
        v = [verdict(p, e), verdict(p, el)]
        verdicts += v
        parts.append(
            f"[{passes:g} passes] parle n=3 {_s(p)} vs entropy_sgd {_s(e)} ({v[0]}), "
            f"vs elastic_sgd n=3 {_s(el)} ({v[1]})"
        )
        numbers.update(
            {
                f"{passes:g}: parle n=3": p,
                f"{passes:g}: entropy_sgd": e,
                f"{passes:g}: elastic_sgd n=3": el,
            }
        )
    line(
        "2",
        "Parle beats Entropy-SGD and Elastic-SGD; " + "; ".join(parts),
        combine(verdicts),
        numbers,
    )

    # 2b. (the issue's) Parle regularises: its final training error stays above SGD's
    parts, verdicts, numbers = [], [], {}
    for passes in dict.fromkeys([small, large]):
        p, s = err("parle n=3", passes, key="train_acc"), err("sgd", passes, key="train_acc")
        v = verdict(s, p)  # holds when SGD's training error is the lower one
        verdicts.append(v)
        parts.append(f"[{passes:g} passes] parle n=3 train error {_s(p)} vs sgd {_s(s)}: {v}")
        numbers.update({f"{passes:g}: parle n=3 train": p, f"{passes:g}: sgd train": s})
    line(
        "2b",
        "Parle's final training error stays above SGD's; " + "; ".join(parts),
        combine(verdicts),
        numbers,
    )

    # 3. Parle on fractions of the data matches SGD on all of it
    parts, verdicts, numbers = [], [], {}
    for passes in dict.fromkeys([small, large]):
        s = err("sgd", passes)
        numbers[f"{passes:g}: sgd"] = s
        part = [f"[{passes:g} passes of each replica's own data] sgd {_s(s)}"]
        for method in ("parle n=3 frac 0.5", "parle n=6 frac 0.25"):
            f = err(method, passes)
            if f is None and passes != small:
                continue
            v = verdict(f, s)
            v = {"inconclusive": "holds (within the spread)"}.get(v, v)
            verdicts.append("holds" if v.startswith("holds") else v)
            part.append(f"{method} {_s(f)}: {v}")
            numbers[f"{passes:g}: {method}"] = f
        if len(part) > 1:
            parts.append(", ".join(part))
    line(
        "3",
        "Parle on fractions matches SGD on all the data; " + "; ".join(parts),
        combine(verdicts),
        numbers,
    )

    # 4. more replicas help, at every budget where n = 6 or 8 ran
    parts, verdicts, numbers = [], [], {}
    for passes in plan.budgets:
        es = {n: err(f"parle n={n}", passes) for n in (3, 6, 8)}
        if passes != small and es[6] is None and es[8] is None:
            continue
        v = [verdict(es[6], es[3]), verdict(es[8], es[6]), verdict(es[8], es[3])]
        held = v[2] == "holds" and v[0] != "does not hold"
        verdicts.append("holds" if held else combine([v[0], v[2]]))
        parts.append(
            f"[{passes:g} passes] "
            + ", ".join(f"n={n} {_s(e)}" for n, e in es.items())
            + f"; 6 vs 3: {v[0]}, 8 vs 6: {v[1]}, 8 vs 3: {v[2]}"
        )
        prefix = "" if passes == small else f"{passes:g}: "
        numbers.update({f"{prefix}n={n}": e for n, e in es.items()})
    line("4", "more replicas help " + "; ".join(parts), combine(verdicts), numbers)

    # 5. Entropy-SGD reaches SGD's error in fewer effective epochs
    target_stat = err("sgd", large)
    numbers = {"sgd": target_stat}
    if target_stat is None:
        line("5", "Entropy-SGD reaches SGD's error in fewer effective epochs", "not run", numbers)
    else:
        target = target_stat.mean + target_stat.std
        reach = {}
        for method in ("sgd", "entropy_sgd"):
            found = [
                first_reach(runs_of(bench, plan, method, "evals", p), target)
                for p in dict.fromkeys([small, large])
            ]
            found = [f for f in found if f is not None]
            reach[method] = min(found) if found else None
        e_small, e_large = err("entropy_sgd", small), err("entropy_sgd", large)
        numbers.update(
            {"entropy_sgd small": e_small, "entropy_sgd large": e_large, "passes to reach": reach}
        )
        ks, ke = reach["sgd"], reach["entropy_sgd"]
        if ke is None:
            result = "does not hold" if ks is not None else "inconclusive"
        elif ks is None or ke < ks:
            result = "holds"
        else:
            result = "does not hold" if ke > ks else "inconclusive"
        line(
            "5",
            f"Entropy-SGD reaches SGD's error in fewer effective epochs; target: sgd at "
            f"{large:g} passes {target_stat} + 1 std = {100 * target:.2f}%; mean test curve "
            f"first at or below it: sgd after {_passes(ks)}, entropy_sgd after {_passes(ke)}; "
            f"entropy_sgd final {_s(e_small)} at {small:g}, {_s(e_large)} at {large:g} passes",
            result,
            numbers,
        )

    # 6. flatter solutions (lower is flatter), at every budget that measured them
    measures: dict[str, Any] = {}
    per: dict[str, list[str]] = {"parle n=3": [], "entropy_sgd": []}
    parts = []
    for passes in dict.fromkeys([small, large]):
        if not runs_of(bench, plan, "sgd", "evals", passes):
            continue
        cells = []
        for name in ("top_eigenvalue", "hessian_trace", "rise_0.1"):
            got = {m: flat_stat(runs_of(bench, plan, m, "evals", passes), name) for m in FLAT}
            measures[f"{passes:g}: {name}"] = {m: vars(v) if v else None for m, v in got.items()}
            v = {m: verdict(got[m], got["sgd"]) for m in per}
            for m in per:
                per[m].append(v[m])
            cells.append(
                f"{name} parle n=3 {_g(got['parle n=3'])} ({v['parle n=3']}), entropy_sgd "
                f"{_g(got['entropy_sgd'])} ({v['entropy_sgd']}), sgd {_g(got['sgd'])}"
            )
        parts.append(f"[{passes:g} passes] " + "; ".join(cells))
    line(
        "6",
        "Parle's and Entropy-SGD's solutions are flatter than SGD's; " + "; ".join(parts),
        "; ".join(f"{m}: {combine(v)}" for m, v in per.items()),
        measures,
    )

    # 7. Elastic-SGD on split data beats SGD, at every budget that ran it
    parts, verdicts, numbers = [], [], {}
    for passes in dict.fromkeys([small, large]):
        el, s = err("elastic_sgd n=3 frac 0.5", passes), err("sgd", passes)
        if el is None and passes != small:
            continue
        verdicts.append(verdict(el, s))
        parts.append(
            f"[{passes:g} passes of each replica's own data] elastic_sgd n=3 frac 0.5 {_s(el)} "
            f"vs sgd {_s(s)} (parle n=3 frac 0.5 {_s(err('parle n=3 frac 0.5', passes))}): "
            f"{verdicts[-1]}"
        )
        numbers.update({f"{passes:g}: elastic": el, f"{passes:g}: sgd": s})
    line(
        "7",
        "Elastic-SGD's reference beats SGD on split data " + "; ".join(parts),
        combine(verdicts),
        numbers,
    )
    return lines, figures


def first_reach(runs: list[dict], target: float) -> float | None:
    """The first passes (over a replica's data) at which the seeds' mean test error is at or
    below ``target``; the curves share their evaluation points."""
    curves = [r["curve"] for r in runs if r["curve"]]
    if not curves:
        return None
    length = min(len(c) for c in curves)
    for k in range(length):
        if statistics.mean(c[k][1] for c in curves) <= target:
            return curves[0][k][0]
    return None


def flat_stat(runs: list[dict], name: str) -> Stat | None:
    values = [flatness_fields(r).get(name) for r in runs]
    return stat([v for v in values if v is not None])


def _g(s: Stat | None) -> str:
    return f"{s.mean:.3g} ± {s.std:.2g} (n={s.n})" if s else "–"


def _passes(k: float | None) -> str:
    return f"{k:.3g} passes" if k is not None else "never"


def tables(bench: Bench, plan: Plan) -> str:
    """Every configuration: test error, training error, val acc, wall time; and flatness."""
    rows = [
        f"{plan.workload}: reference test error, mean ± std over seeds (chosen schedule on val)",
        f"  {'method':<26}{'budget':<7}{'passes':>7}{'sched':>7}{'lr':>6}{'test error':>26}"
        f"{'train error':>24}{'val acc':>9}{'wall s':>8}",
    ]
    keys = sorted(
        {(j.method, j.budget, j.passes) for j in bench.results if j.workload == plan.workload},
        key=lambda k: (k[2] if k[1] == "evals" else 1e9, list(METHODS).index(k[0])),
    )
    for method, budget, passes in keys:
        runs = runs_of(bench, plan, method, budget, passes)
        if not runs:
            continue
        best = plan.chosen.get((method, budget, passes))
        like = "elastic_sgd n=3" if family(method) == "elastic_sgd" else "parle n=3"
        schedule = (best or plan.chosen[(like, budget, passes)]).schedule
        lr = f"{best.lr:g}" if best and best.lr else "–"
        rows.append(
            f"  {method:<26}{budget:<7}{passes:>7g}{schedule:>7}{lr:>6}"
            f"{error(runs)!s:>26}{error(runs, 'train_acc')!s:>24}"
            f"{statistics.mean(r['reference']['val_acc'] for r in runs):>9.4f}"
            f"{statistics.mean(r['wall_s'] for r in runs):>8.1f}"
        )
    rows += [
        "",
        "flatness of the reference on its training loss (1,024 samples), mean ± std "
        "over seeds: top Hessian eigenvalue, Hutchinson trace, loss rise at relative "
        "radius r, local entropy f_gamma (gamma 1)",
        f"  {'method':<14}{'passes':>7}" + "".join(f"{n:>25}" for n in FLATNESS_COLUMNS),
    ]
    for passes in dict.fromkeys(plan.budgets):
        for method in FLAT:
            runs = runs_of(bench, plan, method, "evals", passes)
            if not runs or "flatness" not in runs[0]:
                continue
            cells = [flat_stat(runs, n) for n in FLATNESS_COLUMNS]
            rows.append(
                f"  {method:<14}{passes:>7g}"
                + "".join(f"{_g(c).replace(' (n=', ' n=').rstrip(')'):>25}" for c in cells)
            )
    return "\n".join(rows)


def records(bench: Bench) -> list[dict[str, Any]]:
    """A record per run, in the order of their configurations, not of their ends: two
    invocations over one workdir write the same list."""
    return [record(bench, job) for job in sorted(bench.results, key=_order)]


def record(bench: Bench, job: Job) -> dict[str, Any]:
    r = bench.results[job]
    return {
        "workload": job.workload,
        "method": job.method,
        "budget": job.budget,
        "passes": job.passes,
        "seed": job.seed,
        "schedule": job.schedule,
        "lr": job.lr,
        "num_replicas": r["num_replicas"],
        "test_acc": r["reference"]["test_acc"],
        "train_acc": r["reference"]["train_acc"],
        "val_acc": r["reference"]["val_acc"],
        "wall_s": r["wall_s"],
        "grad_evals_per_replica": r["steps_per_replica"],
        "curve": r["curve"],
        **flatness_fields(r),
        # the run's folder (its name holds the digest of its overrides) and when it ran
        "run": bench.run_dir(job).name,
        **{k: r[k] for k in ("started", "ended") if k in r},
    }


def reuse(bench: Bench, workload: str, path: Path) -> int:
    """The runs recorded in an earlier invocation's ``claims*.json`` (``--reuse``), taken as
    finished, for when the workdir that held them is gone. A record whose run folder name (the
    digest of its overrides) is not the one its configuration has now is not taken: its settings
    have changed since, and it is trained again. Returns how many were not taken."""
    try:
        figures = json.loads(path.read_text())
        found = figures["records"]
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise ValueError(f"--reuse {path}: not a claims results file ({err})") from None
    other = {r.get("workload") for r in found} - {workload}
    if other:
        raise ValueError(
            f"--reuse {path}: its records are of workload {', '.join(map(str, other))}, this "
            f"invocation's is {workload}; pass --workload or a file of this workload"
        )
    stale, untimed = 0, False
    for i, r in enumerate(found):
        try:
            job, result = job_of(workload, r), result_of(r)
        except (KeyError, TypeError, ValueError) as err:
            what = f"lacks {err}" if isinstance(err, KeyError) else f"is malformed ({err})"
            raise ValueError(f"--reuse {path}: record {i} {what}; not a run's record") from None
        if "run" in r and r["run"] != bench.run_dir(job).name:
            stale += 1
        elif job not in bench.results:
            bench.results[job] = result
            bench.reused.append(job)
            untimed = untimed or "started" not in r
    if untimed:
        # records from before they carried their times: the file's span less its timed runs'
        timed = [(r["started"], r["ended"]) for r in found if "started" in r]
        bench.untimed_s += max(figures.get("span_s", 0.0) - busy_seconds(timed), 0.0)
    return stale


def job_of(workload: str, r: dict[str, Any]) -> Job:
    """The configuration a record was run from (flatness measured where the record has it)."""
    flat = "top_eigenvalue" in r
    lr = None if r["lr"] is None else float(r["lr"])
    return Job(
        workload, r["method"], r["budget"], float(r["passes"]), r["seed"], r["schedule"], lr, flat
    )


def result_of(r: dict[str, Any]) -> dict[str, Any]:
    """The part of a run's results.json that its record keeps: ``record`` gives it back."""
    result = {
        "num_replicas": r["num_replicas"],
        "reference": {k: r[k] for k in ("test_acc", "train_acc", "val_acc")},
        "wall_s": r["wall_s"],
        "steps_per_replica": r["grad_evals_per_replica"],
        "curve": [tuple(point) for point in r["curve"]],
        **{k: r[k] for k in ("started", "ended") if k in r},
    }
    flatness = flatness_of_fields(r)
    if flatness is not None:
        result["flatness"] = flatness
    return result


def _order(job: Job) -> tuple:
    return (job.method, job.budget, job.passes, job.seed, job.schedule, job.lr or 0.0, job.flatness)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--seeds", type=int, default=None)
    parser.add_argument("--budgets", type=float, nargs="+", default=None, help="passes")
    parser.add_argument(
        "--seeds-large", type=int, default=None, help="seeds at the budgets after the first"
    )
    parser.add_argument("--workload", default=None, choices=list(WORKLOADS))
    parser.add_argument("--out", type=Path, default=None, help="results folder")
    parser.add_argument("--workdir", type=Path, default=None, help="keep the runs here")
    parser.add_argument(
        "--reuse",
        type=Path,
        nargs="+",
        default=[],
        help="earlier claims*.json files: their recorded runs are taken as finished",
    )
    parser.add_argument("--deadline", default=None, help="HH:MM UTC: no run starts after it")
    parser.add_argument("--workers", type=int, default=2, help="runs at a time")
    parser.add_argument(
        "--methods", nargs="+", default=None, choices=list(METHODS), help="a subset of them"
    )
    parser.add_argument(
        "--large-methods",
        nargs="+",
        default=None,
        choices=list(METHODS),
        help="the methods run at the budgets after the first",
    )
    parser.add_argument(
        "--wall-budgets",
        type=float,
        nargs="*",
        default=None,
        help="the budgets with an equal wall-clock SGD (default: the first; none: no value)",
    )
    args = parser.parse_args()
    start = time.perf_counter()
    deadline = None
    if args.deadline:
        hour, minute = map(int, args.deadline.split(":"))
        now = dt.datetime.now(dt.timezone.utc)
        deadline = now.replace(hour=hour, minute=minute, second=0, microsecond=0)
    if args.quick:
        plan = Plan(
            workload=args.workload or "digits",
            seeds=list(range(args.seeds or 1)),
            budgets=args.budgets or [1.0],
            sgd_grid=[(0.1, "cosine")],
            schedules=("step",),
            # three runs, two at a time: under a minute on two cores
            methods_small=["sgd", "parle n=3", "entropy_sgd"],
            methods_large=[],
            wall_at=[],
        )
        flat_args = [
            *FLATNESS,
            "flatness.num_samples=128",
            "flatness.num_inner_steps=0",
            "flatness.iterations=5",
            "flatness.probes=2",
            "flatness.draws=2",
        ]
    else:
        plan = Plan(
            workload=args.workload or "mnist1d",
            seeds=list(range(args.seeds or 5)),
            budgets=args.budgets or [20.0, 125.0],
            sgd_grid=[(lr, s) for lr in SGD_LRS for s in SCHEDULES],
            schedules=SCHEDULES,
            methods_small=[*METHODS],
            # at the authors' 125 passes on two shared cores: the claims about budgets (1, 5)
            # and flatness (6), and Parle on fractions (3), last; 3 seeds (--seeds-large);
            # Elastic-SGD's claim 2 at 20 passes only
            methods_large=["sgd", "parle n=3", "entropy_sgd", *FRACS],
            seeds_large=list(range(args.seeds_large or 3)),
        )
        flat_args = list(FLATNESS)
    if args.large_methods:
        plan.methods_large = list(args.large_methods)
    if args.wall_budgets is not None:
        plan.wall_at = list(args.wall_budgets)
        if set(plan.wall_at) - set(plan.budgets):
            budgets = " ".join(f"{b:g}" for b in plan.budgets)
            parser.error(f"--wall-budgets must be among the budgets ({budgets}); add to --budgets")
    if args.methods:
        plan.methods_small = [m for m in plan.methods_small if m in args.methods]
        plan.methods_large = [m for m in plan.methods_large if m in args.methods]
    folder = args.out or RESULTS
    with tempfile.TemporaryDirectory() as tmp:
        workdir = args.workdir or Path(tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        bench = Bench(workdir, flat_args, deadline, args.workers)
        for path in args.reuse:
            try:
                stale = reuse(bench, plan.workload, path)
            except ValueError as err:
                parser.error(str(err))
            if stale:
                print(f"--reuse {path}: {stale} record(s) of changed settings, trained again")
        execute(bench, plan)
        span, trained = runs_span(bench)  # while the runs' folders are there
        lines, figures = claims(bench, plan)
        table = tables(bench, plan)
    wall_s = time.perf_counter() - start
    partial = bool(bench.skipped or bench.failed)
    head = [
        f"claims on {plan.workload} ({' '.join(WORKLOADS[plan.workload])}), seeds per "
        f"configuration: {len(plan.seeds)}, budgets: {', '.join(f'{b:g}' for b in plan.budgets)} "
        "passes per replica; errors are reference test errors, mean ± std over seeds (n); a "
        "difference within the seeds' spread is inconclusive",
    ]
    if partial:
        head.append(
            f"PARTIAL: {len(bench.skipped)} run(s) not started by the deadline "
            f"{args.deadline} UTC, {len(bench.failed)} failed; the lines say n per configuration"
        )
    text = "\n".join(
        [
            *head,
            "",
            *lines,
            "",
            table,
            "",
            f"benchmark wall time: {span / 60:.0f} min with runs going ({len(bench.results)} "
            f"runs, {args.workers} at a time, {trained / 60:.0f} min of training in all); this "
            f"invocation {wall_s:.0f} s, {len(bench.trained)} of the runs trained by it, "
            f"{len(bench.reused)} taken from --reuse, the others found in the workdir",
        ]
    )
    print(text)
    figures.update(
        {
            "workload": plan.workload,
            "seeds": plan.seeds,
            "budgets": plan.budgets,
            "partial": partial,
            "skipped": [vars_(j) for j in bench.skipped],
            "failed": {str(vars_(j)): e for j, e in bench.failed.items()},
            "chosen": {f"{k[0]} {k[1]} {k[2]:g}": vars_(j) for k, j in plan.chosen.items()},
            "wall_s": wall_s,
            "span_s": span,
            "trained_runs": len(bench.trained),
            "training_s": trained,
            "records": records(bench),
        }
    )
    write_results(result_name(plan, args.quick, args.budgets), figures, text, folder)
    ratios = {}
    for key in ("claim 1", "claim 2", "claim 3", "claim 4", "claim 5", "claim 6", "claim 7"):
        ratios[key] = figures[key]["verdict"]
    print("verdicts: " + "; ".join(f"{k}={v}" for k, v in ratios.items()))


def result_name(plan: Plan, quick: bool, budgets: list[float] | None) -> str:
    """``claims`` for the default workload and budgets; else ``claims.WORKLOAD`` beside it, and
    ``-B1-B2`` for budgets that are not the default, so that no run overwrites another's."""
    default = plan.workload == ("digits" if quick else "mnist1d")
    if default and budgets is None:
        return "claims"
    tag = "" if budgets is None else "-" + "-".join(f"{b:g}" for b in budgets)
    return f"claims.{plan.workload}{tag}"


def runs_span(bench: Bench) -> tuple[float, float]:
    """Seconds with at least one reported run going (from its config.yaml to its results.json),
    and the sum of their training wall times. A union, not first start to last end: a workdir
    reused by a later invocation holds runs from both, with the pause between them."""
    results = bench.results.values()
    spans = [(r["started"], r["ended"]) for r in results if "started" in r]
    return busy_seconds(spans) + bench.untimed_s, sum(r["wall_s"] for r in results)


def busy_seconds(spans: list[tuple[float, float]]) -> float:
    """The length of the union of the intervals ``spans``."""
    total, end = 0.0, float("-inf")
    for start, stop in sorted(spans):
        if stop > end:
            total += stop - max(start, end)
            end = stop
    return total


def vars_(job: Job) -> dict[str, Any]:
    return {k: getattr(job, k) for k in Job.__dataclass_fields__}


if __name__ == "__main__":
    main()
