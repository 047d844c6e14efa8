"""Shared test helpers: free ports, running the CLI as a user does."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_module
from omegaconf import OmegaConf

from elastic_entropy.config import CONFIG_MODULE, Config, register_configs

REPO = Path(__file__).resolve().parents[1]


def compose_config(*overrides: str) -> Config:
    """The app's config with command-line ``overrides``, validated as the app validates it."""
    register_configs()
    with initialize_config_module(CONFIG_MODULE, version_base="1.3"):
        cfg = compose("config", overrides=list(overrides))
    config = OmegaConf.to_object(cfg)
    assert isinstance(config, Config)
    return config


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def cli_env() -> dict[str, str]:
    env = dict(os.environ)
    env.pop("RANK", None)
    env.pop("WORLD_SIZE", None)
    env.setdefault("OMP_NUM_THREADS", "1")
    env["WANDB_MODE"] = "offline"
    env["PYTHONUNBUFFERED"] = "1"
    return env


def run_cli(
    args: list[str], cwd: Path, timeout: float = 240, **kwargs
) -> subprocess.CompletedProcess:
    """``elastic-entropy ARGS`` in ``cwd``, as a user types it."""
    return subprocess.run(
        ["elastic-entropy", *args],
        cwd=cwd,
        env=cli_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
        **kwargs,
    )


def run_torchrun(
    nproc: int, args: list[str], cwd: Path, timeout: float = 300
) -> subprocess.CompletedProcess:
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            f"--nproc-per-node={nproc}",
            "-m",
            "elastic_entropy.train",
            *args,
        ],
        cwd=cwd,
        env=cli_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.hookimpl(optionalhook=True)  # without pytest-xdist (``-o addopts=``) it is not called
def pytest_xdist_auto_num_workers(config: pytest.Config) -> int:
    """``-n auto``: a worker per core this process may use, at most 4. Most tests wait on the
    processes they start, but each of those is a CLI, a torchrun or a job of its own, so more
    workers than cores would only stretch the tests that time a fault or a kill."""
    return max(1, min(len(os.sched_getaffinity(0)), 4))


@pytest.fixture
def port() -> int:
    return free_port()


def newest_checkpoint(run_dir: Path) -> int:
    """The step of the newest checkpoint a running job has completed (its manifest, written
    last, is there), or 0: cheap enough to poll, unlike the verifying ``find_latest``."""
    steps = [
        int(d.name.split("-")[1])
        for d in (run_dir / "checkpoints").glob("step-*")
        if (d / "MANIFEST.json").is_file()
    ]
    return max(steps, default=0)
