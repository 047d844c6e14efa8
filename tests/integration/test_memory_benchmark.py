"""benchmarks/memory.py counts what each algorithm holds per replica (storage sizes: never
timings): SGD its parameters, gradient and momentum; Parle about twice as much."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.conftest import REPO, cli_env


def _measured(algorithm: str) -> dict:
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.memory", "--algorithm", algorithm, "--depth", "10",
         "--width", "1", "--device", "cpu"],
        cwd=REPO,
        env=cli_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def measured() -> dict[str, dict]:
    return {algorithm: _measured(algorithm) for algorithm in ("sgd", "parle", "ddp")}


def test_sgd_holds_parameters_gradient_and_momentum(measured: dict[str, dict]) -> None:
    sgd = measured["sgd"]
    assert sgd["held_bytes"] == 3 * 4 * sgd["numel"]


def test_parle_holds_about_twice_sgd(measured: dict[str, dict]) -> None:
    """y, x, z, v, u and the gradient (six copies) and one flat copy of scratch, no more."""
    ratio = measured["parle"]["held_bytes"] / measured["sgd"]["held_bytes"]
    assert 2.0 <= ratio <= 2.4, ratio


def test_ddp_s_buckets_escape_the_walk_over_python_s_tensors(measured: dict[str, dict]) -> None:
    """What the module's docstring says of ``held``: DDP's gradient buckets live in C++, so the
    walk sees SGD's three copies (the resident peak is what sees them)."""
    assert measured["ddp"]["held_bytes"] == measured["sgd"]["held_bytes"]
