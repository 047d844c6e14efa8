"""Faults as they happen: preemption signals, killed workers, a silent peer; runs end exactly."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tests.conftest import REPO, cli_env, free_port, newest_checkpoint, run_torchrun

JOB = [
    "max_steps=300",
    "cluster.replicas_per_process=2",
    "algorithm.num_inner_steps=5",
    "checkpoint.every_outer_steps=2",
    "model.channels=8",
    "algorithm.noise=0.001",
    "model.dropout=0.1",
    "deterministic=true",
    "progress=false",
    "eval_every=2",
]


def _wait_for_checkpoint(
    run_dir: Path, after: int, proc: subprocess.Popen, timeout: float = 60
) -> int:
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        step = newest_checkpoint(run_dir)
        if step > after:
            return step
        time.sleep(0.02)
    raise AssertionError(f"no checkpoint after step {after} (exit {proc.poll()})")


def _references_equal(a: Path, b: Path) -> bool:
    x = torch.load(a / "reference.pt", weights_only=True)
    y = torch.load(b / "reference.pt", weights_only=True)
    return x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x)


def _cli(args: list[str], cwd: Path) -> subprocess.Popen:
    return subprocess.Popen(
        ["elastic-entropy", *args],
        cwd=cwd,
        env=cli_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_preempted_three_times_ends_bitwise_equal(tmp_path: Path) -> None:
    """SIGTERM (or SLURM's SIGUSR1): checkpoint, exit 75; rerunning resumes; same reference."""
    full = _cli([*JOB, f"hydra.run.dir={tmp_path / 'full'}"], tmp_path)
    _, err = full.communicate(timeout=120)
    assert full.returncode == 0, err[-2000:]
    run = tmp_path / "cut"
    last = 0
    for attempt, sig in enumerate((signal.SIGTERM, signal.SIGUSR1, signal.SIGTERM)):
        proc = _cli([*JOB, f"hydra.run.dir={run}"], tmp_path)
        last = _wait_for_checkpoint(run, last + 10 * attempt, proc)
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 75, err[-2000:]
        assert "checkpoint written; rerun the same command to resume" in err
        assert ("resumed from step" in out) == (attempt > 0)
    done = _cli([*JOB, f"hydra.run.dir={run}"], tmp_path)
    out, err = done.communicate(timeout=120)
    assert done.returncode == 0, err[-2000:]
    assert "resumed from step" in out
    assert _references_equal(tmp_path / "full", run)
    # the metrics file reads as one run: every step once, in order
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    steps = [r["step"] for r in records if "event" not in r]
    assert steps == sorted(set(steps)) and steps[-1] == 300
    assert sum(r.get("event") == "resume" for r in records) == 3
    assert len(list((run / "checkpoints").glob("step-*"))) == 3  # keep_last


@pytest.mark.timeout(300)
def test_soak_with_killed_workers_under_torchrun(tmp_path: Path) -> None:
    """launch/soak.py at the small CI size (the closing note reports N = 20)."""
    done = subprocess.run(
        [
            sys.executable,
            str(REPO / "launch" / "soak.py"),
            "--kills",
            "2",
            "--steps",
            "600",
            "--workdir",
            str(tmp_path),
        ],
        cwd=tmp_path,
        env=cli_env(),
        capture_output=True,
        text=True,
        timeout=290,
    )
    assert done.returncode == 0, done.stdout[-3000:]
    assert "kills=2" in done.stdout and "finished=True" in done.stdout
    assert "reference_equal=True" in done.stdout and "problems=0" in done.stdout


def test_silent_peer_fails_within_the_timeout_and_a_restart_resumes(tmp_path: Path) -> None:
    run = tmp_path / "run"
    port = free_port()
    args = [*JOB, "max_steps=3000", "cluster.replicas_per_process=1", "cluster.timeout_s=5"]
    procs = []
    for rank in range(2):
        env = {
            **cli_env(),
            "RANK": str(rank),
            "WORLD_SIZE": "2",
            "LOCAL_RANK": str(rank),
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(port),
        }
        procs.append(
            subprocess.Popen(
                ["elastic-entropy", *args, f"hydra.run.dir={run}"],
                cwd=tmp_path,
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
        )
    try:
        _wait_for_checkpoint(run, 0, procs[0])
        os.kill(procs[1].pid, signal.SIGSTOP)  # hung, not dead: no socket closes
        stopped = time.time()
        _, err = procs[0].communicate(timeout=60)
        waited = time.time() - stopped
    finally:
        procs[1].kill()
        procs[1].wait()
    assert procs[0].returncode == 4, err[-2000:]
    assert waited < 5 + 15, waited
    lines = [line for line in err.splitlines() if line.strip()]
    assert lines[-1].startswith("elastic-entropy: rank 0 lost a peer")
    assert "resumes from the last checkpoint" in lines[-1]
    resumed = run_torchrun(2, [*args, "max_steps=400", f"hydra.run.dir={run}"], tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resumed from step" in resumed.stdout


def test_augmented_images_resume_bitwise_on_both_input_paths(tmp_path: Path) -> None:
    """Crops and flips drawn on the device from each replica's stream: a preempted run augments
    on as the uninterrupted one (the streams are in the checkpoint), and augmentation is on; the
    loader path gives the same minibatches, and resumes exactly after a SIGKILL."""
    job = [
        "max_steps=200",
        "data=digits",
        "model=lenet",
        "model.channels=[4,8]",
        "model.hidden=16",
        "cluster.replicas_per_process=2",
        "algorithm.num_inner_steps=5",
        "checkpoint.every_outer_steps=2",
        "deterministic=true",
        "progress=false",
        "eval_every=100",
    ]
    augmented = [*job, "data.crop_padding=2", "data.flip=true"]
    for name, args in (("full", augmented), ("plain", job)):
        done = _cli([*args, f"hydra.run.dir={tmp_path / name}"], tmp_path)
        _, err = done.communicate(timeout=120)
        assert done.returncode == 0, err[-2000:]
    run = tmp_path / "cut"
    proc = _cli([*augmented, f"hydra.run.dir={run}"], tmp_path)
    _wait_for_checkpoint(run, 0, proc)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 75, err[-2000:]
    done = _cli([*augmented, f"hydra.run.dir={run}"], tmp_path)
    out, err = done.communicate(timeout=120)
    assert done.returncode == 0 and "resumed from step" in out, err[-2000:]
    assert _references_equal(tmp_path / "full", run)
    assert not _references_equal(tmp_path / "full", tmp_path / "plain")
    # the loader path, its workers reading ahead, SIGKILLed after a checkpoint: the minibatches
    # of the tensors path, and from the checkpoint on those of the uninterrupted run
    loaded = [*augmented, "data.pipeline=loader", "data.num_workers=2", "data.prefetch_factor=4"]
    run = tmp_path / "loader"
    proc = _cli([*loaded, f"hydra.run.dir={run}"], tmp_path)
    _wait_for_checkpoint(run, 40, proc, timeout=120)
    proc.kill()
    proc.communicate(timeout=60)
    assert not (run / "results.json").exists()
    done = _cli([*loaded, f"hydra.run.dir={run}"], tmp_path)
    out, err = done.communicate(timeout=180)
    assert done.returncode == 0 and "resumed from step" in out, err[-2000:]
    assert _references_equal(tmp_path / "full", run)


def test_a_finished_run_extended_with_a_larger_budget_goes_on_bitwise(tmp_path: Path) -> None:
    """Rerun with a larger max_steps: it goes on from its last checkpoint (the first results
    kept beside), and ends as a run given that budget from the start; the same budget again is
    refused in one line."""
    job = ["data=digits", "model=mlp", "algorithm.num_inner_steps=5", "deterministic=true"]
    job += ["progress=false", "logger.plots=false", "eval_every=100"]
    run, whole = tmp_path / "run", tmp_path / "whole"
    for args in (
        ["max_steps=20", f"hydra.run.dir={run}"],
        ["max_steps=40", f"hydra.run.dir={whole}"],
    ):
        done = _cli([*job, *args], tmp_path)
        _, err = done.communicate(timeout=120)
        assert done.returncode == 0, err[-2000:]
    again = _cli([*job, "max_steps=20", f"hydra.run.dir={run}"], tmp_path)
    _, err = again.communicate(timeout=120)
    assert again.returncode == 2 and "already holds a finished run (20 steps" in err, err
    longer = _cli([*job, "max_steps=40", f"hydra.run.dir={run}"], tmp_path)
    out, err = longer.communicate(timeout=120)
    assert longer.returncode == 0 and "resumed from step 20" in out, err[-2000:]
    assert _references_equal(run, whole)
    first = json.loads((run / "results.step-20.json").read_text())
    assert first["steps_per_replica"] == 20 and (run / "reference.step-20.pt").is_file()
    assert json.loads((run / "results.json").read_text())["steps_per_replica"] == 40


def test_fp16_skips_overflowing_steps_without_counting_them_and_resumes_bitwise(
    tmp_path: Path,
) -> None:
    """precision=fp16 from a loss scale that overflows: the first steps are skipped and the
    scale halves until the gradients are finite; a skipped step counts nowhere (the run still
    takes max_steps optimizer steps, one exchange per L of them), and the scale resumes with
    the checkpoint: a run preempted and resumed ends with the uninterrupted run's bits."""
    job = [
        "max_steps=100",
        "precision=fp16",
        "loss_scale=1e8",
        "cluster.replicas_per_process=2",
        "algorithm.num_inner_steps=5",
        "checkpoint.every_outer_steps=2",
        "model.channels=8",
        "deterministic=true",
        "progress=false",
        "eval_every=100",
    ]
    done = _cli([*job, f"hydra.run.dir={tmp_path / 'full'}"], tmp_path)
    _, err = done.communicate(timeout=180)
    assert done.returncode == 0, err[-2000:]
    records = [json.loads(line) for line in (tmp_path / "full" / "metrics.jsonl").open()]
    scaled = [r for r in records if "loss_scale" in r]
    assert scaled[0]["skipped_steps"] >= 5 and scaled[0]["loss_scale"] < 1e8 / 16
    result = json.loads((tmp_path / "full" / "results.json").read_text())
    assert result["steps_per_replica"] == 100
    # the optimizer's exchanges: one per 5 steps taken, none for the skipped minibatches
    before_end = [r for r in scaled if r["step"] < 100]
    assert [r["collectives"] for r in before_end] == [r["step"] // 5 for r in before_end]
    run = tmp_path / "cut"
    proc = _cli([*job, f"hydra.run.dir={run}"], tmp_path)
    _wait_for_checkpoint(run, 20, proc, timeout=120)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 75, err[-2000:]
    done = _cli([*job, f"hydra.run.dir={run}"], tmp_path)
    out, err = done.communicate(timeout=180)
    assert done.returncode == 0 and "resumed from step" in out, err[-2000:]
    assert _references_equal(tmp_path / "full", run)


def test_the_fused_step_trains_and_resumes_bitwise(tmp_path: Path) -> None:
    """``algorithm.fused=true`` on a CPU (inductor's C++): the run says it stepped fused, and
    one resumed from its checkpoint ends bit for bit as one that ran through (the noise is still
    drawn from the replicas' own streams)."""
    job = ["data=digits", "model=mlp", "algorithm.num_inner_steps=5", "algorithm.noise=0.001"]
    job += ["algorithm.fused=true", "deterministic=true", "progress=false", "logger.plots=false"]
    job += ["eval_every=100"]
    run, whole = tmp_path / "run", tmp_path / "whole"
    for args in (
        ["max_steps=20", f"hydra.run.dir={run}"],
        ["max_steps=40", f"hydra.run.dir={run}"],
        ["max_steps=40", f"hydra.run.dir={whole}"],
    ):
        done = _cli([*job, *args], tmp_path)
        _, err = done.communicate(timeout=240)
        assert done.returncode == 0, err[-2000:]
    assert json.loads((run / "results.json").read_text())["fused_step"] is True
    assert _references_equal(run, whole)
