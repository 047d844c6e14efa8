"""Elastic restarts: a job killed as one layout of its replicas resumes as another (torchrun, gloo).

The job loses its process mid-run (SIGKILL, a node lost), then comes back with another number of
processes or of replicas: 1x4 as 2x2 continues bit for bit as an uninterrupted 2x2 job (which,
one thread per process, is bit for bit the 1x4 job); 4 replicas as 3 or 6 finish with a finite
reference and the change logged.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from tests.conftest import cli_env, free_port, newest_checkpoint, run_cli, run_torchrun

# dropout, Langevin noise and shards: every per-replica random stream moves with its replica
JOB = [
    "max_steps=120",
    "algorithm.num_inner_steps=5",
    "checkpoint.every_outer_steps=2",
    "algorithm.noise=0.001",
    "model.dropout=0.1",
    "model.channels=8",
    "data.policy=shard",
    "eval_every=0.5",
    "progress=false",
    "logger.plots=false",
    "seed=5",
]


def _reference(run_dir: Path) -> dict[str, torch.Tensor]:
    return torch.load(run_dir / "reference.pt", weights_only=True)


def _records(run_dir: Path) -> list[dict]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines]


@pytest.fixture(scope="module")
def killed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 1x4 job SIGKILLed after its second checkpoint: what a lost node leaves."""
    run_dir = tmp_path_factory.mktemp("elastic") / "killed"
    proc = subprocess.Popen(
        ["elastic-entropy", *JOB, "cluster.replicas_per_process=4", f"hydra.run.dir={run_dir}"],
        cwd=run_dir.parent,
        env=cli_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        while proc.poll() is None and newest_checkpoint(run_dir) < 20:
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    step = newest_checkpoint(run_dir)
    assert 20 <= step < 120 and not (run_dir / "results.json").exists(), err[-2000:]
    return run_dir


def _resume(killed: Path, into: Path, nproc: int, per: int) -> subprocess.CompletedProcess:
    shutil.copytree(killed, into)
    done = run_torchrun(
        nproc, [*JOB, f"cluster.replicas_per_process={per}", f"hydra.run.dir={into}"], into.parent
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "elastic resume from step-" in done.stdout + done.stderr
    return done


def test_1x4_resumed_as_2x2_continues_bitwise(killed: Path, tmp_path: Path) -> None:
    _resume(killed, tmp_path / "resumed", 2, 2)
    whole = run_torchrun(
        2, [*JOB, "cluster.replicas_per_process=2", f"hydra.run.dir={tmp_path / 'whole'}"], tmp_path
    )
    assert whole.returncode == 0, whole.stderr[-3000:]
    x, y = _reference(tmp_path / "resumed"), _reference(tmp_path / "whole")
    assert x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x)
    records = [_records(tmp_path / name) for name in ("resumed", "whole")]
    relayout = [r for r in records[0] if r.get("event") == "relayout"]
    assert relayout == [
        {
            "event": "relayout",
            "step": newest_step(records[0]),
            "from": [1, 4],
            "to": [2, 2],
            "dropped": [],
            "added": [],
        }
    ]
    # every replica's losses after the move (those of the window that straddles it included)
    # as in the job that never moved
    step = relayout[0]["step"]
    trained = [
        [
            {k: v for k, v in r.items() if k.startswith("train_loss/")}
            for r in run
            if "train_loss" in r and r["step"] > step
        ]
        for run in records
    ]
    assert trained[0] == trained[1] and len(trained[0]) > 2
    results = [
        json.loads((tmp_path / n / "results.json").read_text()) for n in ("resumed", "whole")
    ]
    assert results[0]["replicas"] == results[1]["replicas"]


def newest_step(records: list[dict]) -> int:
    return next(r["step"] for r in records if r.get("event") == "resume")


@pytest.mark.parametrize(
    ("nproc", "per", "dropped", "added"), [(3, 1, [3], []), (3, 2, [], [4, 5])]
)
def test_four_replicas_resumed_as_three_or_six(
    killed: Path, tmp_path: Path, nproc: int, per: int, dropped: list[int], added: list[int]
) -> None:
    run_dir = tmp_path / "resumed"
    done = _resume(killed, run_dir, nproc, per)
    n = nproc * per
    assert f"4 replicas as 1 process(es) x 4 resumed as {n} as {nproc} process(es) x {per}" in (
        done.stdout + done.stderr
    )
    reference = _reference(run_dir)
    assert all(bool(torch.isfinite(t).all()) for t in reference.values() if t.is_floating_point())
    records = _records(run_dir)
    (event,) = [r for r in records if r.get("event") == "relayout"]
    assert event["dropped"] == dropped and event["added"] == added
    result = json.loads((run_dir / "results.json").read_text())
    assert result["num_replicas"] == n and [r["replica"] for r in result["replicas"]] == list(
        range(n)
    )
    assert all(r["test_acc"] > 0.2 for r in result["replicas"])  # the new ones learnt too


def _agent(run_dir: Path, port: int, log: Path) -> subprocess.Popen:
    """One node's torchrun agent of an elastic job of one or two nodes (c10d rendezvous)."""
    args = [
        *JOB,
        "max_steps=100000",  # stopped by the test long before
        "checkpoint.every_outer_steps=10",
        "eval_every=100",
        "cluster.replicas_per_process=2",
        f"hydra.run.dir={run_dir}",
    ]
    env = {**cli_env(), "TORCH_DISABLE_SHARE_RDZV_TCP_STORE": "1"}  # as the launch scripts do
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nnodes=1:2",
            "--nproc-per-node=1",
            "--max-restarts=3",
            "--rdzv-backend=c10d",
            f"--rdzv-endpoint=127.0.0.1:{port}",
            "--rdzv-id=elastic-test",
            "--rdzv-conf=last_call_timeout=1",
            "-m",
            "elastic_entropy.train",
            *args,
        ],
        cwd=run_dir.parent,
        env=env,
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
        start_new_session=True,  # its workers with it, so that the whole node can be lost
    )


def _wait_for(condition: Callable[[], bool], proc: subprocess.Popen, what: str) -> None:
    deadline = time.time() + 120
    while not condition():
        assert proc.poll() is None and time.time() < deadline, f"{what} (exit {proc.poll()})"
        time.sleep(0.1)


def _lose_node(agent: subprocess.Popen) -> None:
    """SIGKILL an agent and its workers (torchrun starts each in a session of its own)."""
    children = subprocess.run(
        ["pgrep", "-P", str(agent.pid)], capture_output=True, text=True
    ).stdout.split()
    for pid in [agent.pid, *map(int, children)]:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(os.getpgid(pid), signal.SIGKILL)
    agent.wait()


def _relayouts(run_dir: Path) -> list[tuple[list[int], list[int]]]:
    if not (run_dir / "metrics.jsonl").exists():
        return []
    return [(r["from"], r["to"]) for r in _records(run_dir) if r.get("event") == "relayout"]


def test_torchrun_elastic_membership_a_node_joins_then_is_lost(tmp_path: Path) -> None:
    """torchrun --nnodes=1:2: the job starts on one node (2 replicas), a second node joins (4),
    then that node is lost (SIGKILL of its agent and worker) and the job goes on on one node (2);
    stopped there (SIGTERM), it finishes with a plain resume."""
    run_dir, port = tmp_path / "run", free_port()
    first = _agent(run_dir, port, tmp_path / "first.log")
    second = None
    grown, shrunk = ([1, 2], [2, 2]), ([2, 2], [1, 2])
    try:
        _wait_for(lambda: newest_checkpoint(run_dir) > 0, first, "no checkpoint on one node")
        second = _agent(run_dir, port, tmp_path / "second.log")
        _wait_for(lambda: grown in _relayouts(run_dir), first, "the second node did not join")
        joined = newest_checkpoint(run_dir)
        _wait_for(lambda: newest_checkpoint(run_dir) > joined, first, "no checkpoint on two")
        _lose_node(second)
        _wait_for(lambda: shrunk in _relayouts(run_dir), first, "the job did not go on alone")
        alone = newest_checkpoint(run_dir)
        _wait_for(lambda: newest_checkpoint(run_dir) > alone, first, "no checkpoint alone")
    finally:
        for proc in (first, second):
            if proc is not None and proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)  # a checkpoint at the next outer step
                proc.wait(timeout=60)
    log = (tmp_path / "first.log").read_text()
    assert _relayouts(run_dir) == [grown, shrunk], log[-3000:]
    last = newest_checkpoint(run_dir)
    done = run_cli(
        [
            *JOB,
            f"max_steps={last + 10}",
            "cluster.replicas_per_process=2",
            f"hydra.run.dir={run_dir}",
        ],
        tmp_path,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads((run_dir / "results.json").read_text())
    assert result["num_replicas"] == 2 and result["processes"] == 1
    reference = _reference(run_dir)
    assert all(bool(torch.isfinite(t).all()) for t in reference.values() if t.is_floating_point())


# the README's two lines, as they are written
README_FIRST = (
    "elastic-entropy hydra.run.dir=outputs/elastic cluster.replicas_per_process=4 max_steps=600"
)
README_THEN = (
    "torchrun --standalone --nproc-per-node=2 -m elastic_entropy.train "
    "hydra.run.dir=outputs/elastic cluster.replicas_per_process=2 max_steps=600"
)
TESTED = {README_FIRST, README_THEN}


def test_the_readme_lines_resume_a_killed_1x4_job_on_two_processes(tmp_path: Path) -> None:
    run_dir = tmp_path / "outputs" / "elastic"
    first = subprocess.Popen(
        ["bash", "-c", f"exec {README_FIRST} progress=false"],
        cwd=tmp_path,
        env=cli_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        _wait_for(lambda: newest_checkpoint(run_dir) > 0, first, "no checkpoint")
    finally:
        first.kill()
        first.wait()
    assert not (run_dir / "results.json").exists()
    then = subprocess.run(
        [
            "bash",
            "-c",
            README_THEN.replace("torchrun", f"{sys.executable} -m torch.distributed.run"),
        ],
        cwd=tmp_path,
        env=cli_env(),
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert then.returncode == 0, then.stderr[-3000:]
    assert _relayouts(run_dir) == [([1, 4], [2, 2])]
    assert json.loads((run_dir / "results.json").read_text())["steps_per_replica"] == 600
