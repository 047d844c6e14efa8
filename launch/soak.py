#!/usr/bin/env python3
"""Soak test: SIGKILL random workers of a torchrun job N times; it must finish, exactly.

    python launch/soak.py --kills 20                       # the closing-note run (~3 minutes)
    python launch/soak.py --kills 3 --steps 600            # what CI runs
    python launch/soak.py --kills 5 --workdir /tmp/soak -- model=mlp data=digits

It runs the job once uninterrupted (the reference), then again under
``torchrun --max-restarts`` with 2 processes (gloo) while it SIGKILLs a random worker at a random
time after each new checkpoint. torchrun restarts the workers, which resume from the newest
checkpoint. At the end: the job finished, every restart connected at its first try, every
checkpoint left is readable, and the final reference equals the uninterrupted run bit for bit.
Exit 0 when all of that holds.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from elastic_entropy import checkpoint


def job_args(steps: int, extra: list[str]) -> list[str]:
    return [
        f"max_steps={steps}",
        "cluster.replicas_per_process=2",
        "algorithm.num_inner_steps=5",
        "checkpoint.every_outer_steps=1",
        "checkpoint.keep_last=3",
        "model.channels=8",
        "algorithm.noise=0.001",
        "deterministic=true",
        "progress=false",
        "eval_every=100",
        "cluster.timeout_s=8",  # bounds the stall of a restart whose gloo mesh fails to connect
        *extra,
    ]


def torchrun(nproc: int, max_restarts: int, args: list[str], log: Path) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    env.pop("RANK", None)
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc-per-node={nproc}",
        f"--max-restarts={max_restarts}",
        "--monitor-interval=0.1",
        "-m",
        "elastic_entropy.train",
        *args,
    ]
    return subprocess.Popen(
        command, stdout=log.open("w"), stderr=subprocess.STDOUT, env=env, start_new_session=True
    )


def workers(launcher: int) -> list[int]:
    """The launcher's live children: the training processes."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == launcher and fields[0] not in ("Z", "X"):
            found.append(int(stat.parent.name))
    return found


def newest_step(run_dir: Path) -> int:
    steps = [
        int(d.name.split("-")[1])
        for d in (run_dir / checkpoint.CHECKPOINTS).glob("step-*")
        if (d / checkpoint.MANIFEST).is_file()
    ]
    return max(steps, default=0)


def kill_loop(job: subprocess.Popen, run_dir: Path, kills: int, rng: random.Random) -> int:
    done = 0
    last = 0  # the first kill waits for the first checkpoint
    while done < kills and job.poll() is None:
        step = newest_step(run_dir)
        pids = workers(job.pid)
        if step <= last or len(pids) < 2:
            time.sleep(0.05)
            continue
        time.sleep(rng.uniform(0.0, 1.0))  # somewhere in the next stretch, mid-write included
        pids = workers(job.pid)
        if not pids or job.poll() is not None:
            continue
        victim = rng.choice(pids)
        try:
            os.kill(victim, signal.SIGKILL)
        except ProcessLookupError:
            continue
        done += 1
        last = newest_step(run_dir)
        print(f"  kill {done}/{kills}: worker {victim} after checkpoint step {last}", flush=True)
    return done


def readable_checkpoints(run_dir: Path) -> tuple[int, list[str]]:
    count, problems = 0, []
    for directory in sorted((run_dir / checkpoint.CHECKPOINTS).glob("step-*")):
        if not (directory / checkpoint.MANIFEST).is_file():
            continue  # unfinished: never loaded
        manifest = json.loads((directory / checkpoint.MANIFEST).read_text())
        found = checkpoint.Found(directory, manifest, [])
        for rank, digest in enumerate(manifest["sha256"]):
            if checkpoint.sha256(directory / f"rank-{rank}.pt") != digest:
                problems.append(f"{directory.name}/rank-{rank}.pt fails its checksum")
            checkpoint.load_rank(found, rank)
        count += 1
    return count, problems


def same_reference(a: Path, b: Path) -> bool:
    x = torch.load(a / "reference.pt", weights_only=True)
    y = torch.load(b / "reference.pt", weights_only=True)
    return x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=20)
    parser.add_argument("--steps", type=int, default=None, help="minibatches per replica")
    parser.add_argument("--nproc", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("overrides", nargs="*", help="extra overrides for the job")
    args = parser.parse_args()
    if args.kills < 0 or args.nproc < 2:
        parser.error("--kills must be >= 0 and --nproc >= 2")
    steps = args.steps or max(600, 250 * args.kills)
    work = args.workdir or Path(tempfile.mkdtemp(prefix="elastic-entropy-soak-"))
    work.mkdir(parents=True, exist_ok=True)
    for name in ("reference", "soak"):
        if (work / name).exists():
            shutil.rmtree(work / name)
    job = job_args(steps, args.overrides)
    print(f"soak: {work}, {steps} steps, {args.kills} kills, {args.nproc} processes", flush=True)

    started = time.time()
    reference = torchrun(
        args.nproc, 0, [*job, f"hydra.run.dir={work / 'reference'}"], work / "reference.log"
    )
    if reference.wait() != 0:
        print(f"soak: the uninterrupted run failed; see {work / 'reference.log'}")
        return 1
    # a restart can itself fail while gloo reconnects: leave room for those too
    soak = torchrun(
        args.nproc, 3 * args.kills + 5, [*job, f"hydra.run.dir={work / 'soak'}"], work / "soak.log"
    )
    kills = kill_loop(soak, work / "soak", args.kills, random.Random(args.seed))
    code = soak.wait()
    log = (work / "soak.log").read_text()
    restarts = log.count("resumed from step")
    # restarted workers that could not even connect (stale addresses in torchrun's store)
    mesh_failures = log.count("connectFullMesh failed")
    count, problems = readable_checkpoints(work / "soak")
    finished = code == 0 and (work / "soak" / "results.json").is_file()
    equal = finished and same_reference(work / "reference", work / "soak")
    print(
        f"soak result: kills={kills} resumes={restarts} mesh_failures={mesh_failures} "
        f"finished={finished} exit={code} "
        f"checkpoints_readable={count} problems={len(problems)} reference_equal={equal} "
        f"wall={time.time() - started:.0f}s",
        flush=True,
    )
    for problem in problems:
        print(f"  {problem}")
    ok = finished and equal and not problems and kills == args.kills and mesh_failures == 0
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
