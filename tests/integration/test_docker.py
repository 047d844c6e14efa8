"""The Docker image, built and run for real. No Docker engine runs here, but Debian's podman does:
``podman_setup.sh`` installs it (runtime runc, raised default ulimits, through CONTAINERS_CONF)
and builds the base image ``debian:bookworm-slim`` locally, since no registry is reachable. The
README's ``docker`` command lines run with ``podman`` in place of ``docker`` (same arguments).

torch comes from a CPU wheel downloaded on the host into ``docker/wheels`` (git-ignored), the
other dependencies from PyPI inside the build. Cold, with the base image to make, this takes a few
minutes; podman keeps the base image and the layers, so a second run builds in seconds.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

import pytest

from tests.conftest import REPO, cli_env

SETUP = Path(__file__).with_name("podman_setup.sh")
# podman's own storage keeps the base image between runs; this folder keeps its configuration
STATE = Path(os.environ.get("EE_PODMAN_STATE", "/var/tmp/elastic-entropy-podman"))

# the commands of the README's Docker section, as a user types them
WHEEL = (
    "pip download torch==2.13.0 --no-deps --python-version 3.11 -d docker/wheels "
    "--index-url https://download.pytorch.org/whl/cpu"
)
BUILD = (
    "docker build -f docker/Dockerfile --build-arg TORCH_SPEC=torch==2.13.0 "
    "--build-arg TORCH_INDEX_URL= -t elastic-entropy:cpu ."
)
RUN = "docker run --rm elastic-entropy:cpu model=mlp data=digits max_steps=200"
RUN_KEEP = (
    'mkdir -p outputs && docker run --rm --user "$(id -u):$(id -g)" '
    '-v "$PWD/outputs:/work/outputs" elastic-entropy:cpu max_steps=100'
)
TESTED = {WHEEL, BUILD, RUN, RUN_KEEP}

pytestmark = pytest.mark.timeout(900)


@pytest.fixture(scope="module")
def engine() -> dict[str, str]:
    """podman installed and configured, the base image built or found in podman's storage."""
    if os.geteuid() != 0:
        pytest.skip("podman without user namespaces needs root here (CI runs as root)")
    env = cli_env()
    done = subprocess.run(
        ["bash", str(SETUP), str(STATE)], env=env, capture_output=True, text=True, timeout=900
    )
    assert done.returncode == 0, f"podman_setup.sh failed:\n{done.stdout}\n{done.stderr}"
    env["CONTAINERS_CONF"] = str(STATE / "containers.conf")
    return env


def _run(command: str, env: dict[str, str], cwd: Path, timeout: float = 600):
    """A README command line; podman runs the `docker` ones (same arguments, no engine needed)."""
    command = re.sub(r"(^|&& )docker ", r"\1podman ", command)
    return subprocess.run(
        ["bash", "-c", command], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )


@pytest.fixture(scope="module")
def image(engine: dict[str, str]) -> dict[str, str]:
    """The CPU image, built from the repository by the README's commands."""
    done = _run(WHEEL, engine, REPO, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert list((REPO / "docker" / "wheels").glob("torch-2.13.0*.whl"))
    done = _run(BUILD, engine, REPO, timeout=840)
    assert done.returncode == 0, (done.stdout + done.stderr)[-5000:]
    return engine


def test_cpu_image_runs_the_training_job(image: dict[str, str], tmp_path: Path) -> None:
    done = _run(RUN, image, tmp_path, timeout=300)
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    assert "parle on digits (mlp): 4 replicas = 1 process(es) x 4, 200 steps" in done.stdout
    assert "reference" in done.stdout and "run directory: /work/outputs/" in done.stdout


def test_default_job_keeps_its_run_directory_on_the_host(
    image: dict[str, str], tmp_path: Path
) -> None:
    """The default job (Parle, MNIST-1D, the 1-D CNN) with a short budget, outputs mounted."""
    done = _run(RUN_KEEP, image, tmp_path, timeout=300)
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    assert "parle on mnist1d (cnn1d): 4 replicas" in done.stdout
    (run_dir,) = (tmp_path / "outputs").glob("*/*")
    result = json.loads((run_dir / "results.json").read_text())
    assert result["steps_per_replica"] == 100 and result["num_replicas"] == 4
    assert (run_dir / "metrics.jsonl").read_text().strip()
    assert (run_dir / "reference.pt").is_file()


def test_image_runs_as_a_user_with_the_console_script_as_entry_point(
    image: dict[str, str], tmp_path: Path
) -> None:
    inspected = _run("docker image inspect elastic-entropy:cpu", image, tmp_path)
    assert inspected.returncode == 0, inspected.stderr
    config = json.loads(inspected.stdout)[0]["Config"]
    assert config["Entrypoint"] == ["elastic-entropy"] and config["User"] == "trainer"
    whoami = _run("docker run --rm --entrypoint id elastic-entropy:cpu -u", image, tmp_path)
    assert whoami.returncode == 0 and whoami.stdout.strip() != "0", whoami.stdout
    # a mistake inside the container is one line and exit code 2, as outside
    bad = _run("docker run --rm elastic-entropy:cpu algorithm.lr=-1", image, tmp_path)
    assert bad.returncode == 2, bad.stderr
    assert bad.stderr.strip().splitlines() == [
        "elastic-entropy: error: Invalid algorithm.lr: -1.0 (must be finite and >= 0)"
    ], bad.stderr
