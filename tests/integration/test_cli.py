"""The CLI as a user types it: the README's default job, torchrun, help, and bad input."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
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
    assert len(lines) == 20 and lines[-1]["step"] == result["steps_per_replica"]
    assert lines[-1]["rho"] > lines[0]["rho"]  # scoping ran
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert config["algorithm"]["name"] == "parle" and config["replicas_per_process"] == 4
    assert (run_dir / ".hydra" / "config.yaml").is_file() and (run_dir / "reference.pt").is_file()


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
        "rho": 2.0,
    }
    assert not (tmp_path / "outputs").exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["algorithm.lr=-0.1"], "Invalid algorithm.lr: -0.1 (must be finite and >= 0)"),
        (["algorithm.alpha=1.0"], "Invalid algorithm.alpha: 1.0"),
        (["algorithm.num_inner_steps=-1"], "Invalid algorithm.num_inner_steps: -1"),
        (["algorithm.gamma=-1"], "Invalid algorithm.gamma: -1.0"),
        (["algorithm.rho=-1"], "Invalid algorithm.rho: -1.0"),
        (["algorithm.noise=-1"], "Invalid algorithm.noise: -1.0"),
        (["data.batch_size=0"], "Invalid data.batch_size: 0"),
        (["algorithm.lr=0.3", "scoping.rho_max=10"], "Unstable elastic coupling"),
        (
            ["data=mnist", "model=lenet", "data.root=/nonexistent/mnist"],
            "data folder /nonexistent/mnist/MNIST/raw does not exist",
        ),
        (["model=lenet"], "lenet needs image data"),
        (["data.policy=shard", "data.batch_size=2000"], "fewer than data.batch_size=2000"),
        (["algorithm.gamma=5"], "scoping.gamma_max=1.0 is below algorithm.gamma=5.0"),
    ],
)
def test_bad_input_gets_one_clear_line(tmp_path: Path, args: list[str], message: str) -> None:
    done = run_cli([*args, "max_steps=2"], tmp_path)
    assert done.returncode == 2, (done.stdout, done.stderr)
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("elastic-entropy: error: ") and message in lines[0], lines[0]
    assert "Traceback" not in done.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["algorithm=adam"], "Could not find 'algorithm/adam'"),
        (["model.widthh=3"], "Could not override 'model.widthh'"),
    ],
)
def test_unknown_options_are_refused_by_hydra(
    tmp_path: Path, args: list[str], message: str
) -> None:
    done = run_cli(args, tmp_path)
    assert done.returncode != 0 and message in done.stderr
    assert "Traceback" not in done.stderr


def test_finished_run_directory_is_never_overwritten(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    done = run_cli(["max_steps=10", "progress=false", f"hydra.run.dir={run_dir}"], tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    before = (run_dir / "results.json").read_bytes()
    again = run_cli(["max_steps=20", "progress=false", f"hydra.run.dir={run_dir}"], tmp_path)
    assert again.returncode == 2 and "already holds a finished run" in again.stderr
    assert (run_dir / "results.json").read_bytes() == before
