"""The CLI as a user types it: the README's default job, torchrun, help, and bad input."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import yaml

from tests.conftest import run_cli, run_torchrun


def _run_dir(stdout: str) -> Path:
    match = re.search(r"run directory: (\S+)", stdout)
    assert match, stdout
    return Path(match.group(1))


def test_default_job_as_in_the_readme(tmp_path: Path) -> None:
    """`elastic-entropy` with no arguments: Parle, 4 replicas, MNIST-1D, under 2 minutes."""
    done = run_cli([], tmp_path, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "parle on mnist1d (cnn1d): 4 replicas" in done.stdout
    assert "step/s" in done.stderr  # the progress bar
    for replica in range(4):
        assert f"replica {replica}" in done.stdout
    run_dir = _run_dir(done.stdout)
    assert run_dir.is_relative_to(tmp_path / "outputs")
    result = json.loads((run_dir / "results.json").read_text())
    assert result["reference"]["test_acc"] > 0.85
    comm = result["communication"]
    assert 0 < comm["bytes_per_replica"] < 0.2 * comm["dp_sgd_bytes_per_replica"]
    lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in lines if "reference/test_acc" in r]
    assert len(evals) == 20 and lines[-1]["step"] == result["steps_per_replica"]
    assert len([r for r in lines if "train_loss" in r]) == 124  # every outer step
    assert lines[-1]["rho"] > lines[0]["rho"]  # scoping ran
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert config["algorithm"]["name"] == "parle" and config["replicas_per_process"] == 4
    assert (run_dir / "overrides.yaml").is_file() and (run_dir / "reference.pt").is_file()


def test_torchrun_two_processes(tmp_path: Path) -> None:
    done = run_torchrun(
        2, ["cluster.replicas_per_process=2", "epochs=1", "progress=false"], tmp_path
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("run directory:") == 1  # rank 0 alone reports
    run_dir = _run_dir(done.stdout)
    result = json.loads((run_dir / "results.json").read_text())
    assert result["processes"] == 2 and result["num_replicas"] == 4
    assert len(list((tmp_path / "outputs").glob("*/*"))) == 1  # one run directory, from rank 0


def test_local_sgd_averages_every_h_steps_across_processes(tmp_path: Path) -> None:
    args = ["algorithm=local_sgd", "algorithm.num_local_steps=5", "cluster.replicas_per_process=2"]
    done = run_torchrun(2, [*args, "max_steps=20", "eval_every=100", "progress=false"], tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    run_dir = _run_dir(done.stdout)
    result = json.loads((run_dir / "results.json").read_text())
    assert result["num_replicas"] == 4
    lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    trained = [r for r in lines if "train_loss" in r]
    # 20 steps, one average every 5 (the reference evaluations at the end come on top)
    assert [(r["step"], r["collectives"]) for r in trained] == [(5, 1), (10, 2), (15, 3), (20, 4)]
    assert result["communication"]["collectives"] > 4
    assert all(r["distance/replica_3"] > 0 for r in trained)  # replicas drift between averages


def test_cosine_schedule_anneals_both_learning_rates(tmp_path: Path) -> None:
    args = ["lr_schedule=cosine", "algorithm.num_inner_steps=4", "algorithm.inner_lr=0.05"]
    done = run_cli([*args, "max_steps=40", "eval_every=100", "progress=false"], tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    lines = (_run_dir(done.stdout) / "metrics.jsonl").read_text().splitlines()
    trained = [json.loads(line) for line in lines if "train_loss" in line]
    # a record at step s carries the rates its last minibatch (0-based s - 1) used
    for record in trained:
        factor = 0.5 * (1 + math.cos(math.pi * (record["step"] - 1) / 40))
        assert math.isclose(record["lr"], 0.1 * factor, rel_tol=1e-9)
        assert math.isclose(record["inner_lr"], 0.05 * factor, rel_tol=1e-9)
    assert trained[-1]["lr"] < 0.01 * trained[0]["lr"]


def test_help_and_cfg_job(tmp_path: Path) -> None:
    done = run_cli(["--help"], tmp_path)
    assert done.returncode == 0
    for group in ("algorithm:", "model:", "data:", "scoping:", "cluster:"):
        assert group in done.stdout
    assert "parle" in done.stdout and "entropy_sgd" in done.stdout
    done = run_cli(["--cfg", "job", "algorithm=elastic_sgd", "algorithm.rho=2"], tmp_path)
    assert done.returncode == 0
    config = yaml.safe_load(done.stdout)
    assert config["algorithm"] == {
        "name": "elastic_sgd",
        "lr": 0.1,
        "momentum": 0.9,
        "nesterov": True,
        "weight_decay": 0.0,
        "replica_init": "independent",
        "fused": None,
        "rho": 2.0,
    }
    assert not (tmp_path / "outputs").exists()


def test_finished_run_directory_is_never_overwritten(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    done = run_cli(["max_steps=10", "progress=false", f"hydra.run.dir={run_dir}"], tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    before = (run_dir / "results.json").read_bytes()
    again = run_cli(["max_steps=10", "progress=false", f"hydra.run.dir={run_dir}"], tmp_path)
    assert again.returncode == 2 and "already holds a finished run" in again.stderr
    assert (run_dir / "results.json").read_bytes() == before
