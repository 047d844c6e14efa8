"""Every command and code block of the README runs (the installs are what .ci/run does)."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO, cli_env

README = (REPO / "README.md").read_text()
BUDGET = ["max_steps=20", "eval_every=100", "progress=false"]


def _blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", README, flags=re.S)


def _commands() -> list[str]:
    commands = []
    for block in _blocks("bash"):
        for line in block.splitlines():
            for part in line.split("&&"):
                part = part.strip()
                if part and not part.startswith("pip "):
                    commands.append(part)
    return commands


def test_readme_has_the_two_quickstart_commands() -> None:
    bash = _blocks("bash")
    assert bash[0].strip() == "pip install -e . && elastic-entropy"
    assert bash[1].strip() == "pip install -e '.[dev]' && pytest"
    assert "pytest" in (REPO / ".ci" / "run").read_text()


@pytest.mark.parametrize(
    "command", [c for c in _commands() if c not in ("elastic-entropy", "pytest")]
)
def test_readme_command_runs(command: str, tmp_path: Path) -> None:
    """Each `elastic-entropy ...` / `torchrun ...` line, with a short budget appended."""
    argv = shlex.split(command)
    assert argv[0] in ("elastic-entropy", "torchrun"), command
    if argv[0] == "torchrun":
        argv = [sys.executable, "-m", "torch.distributed.run", *argv[1:]]
    done = subprocess.run(
        [*argv, *BUDGET], cwd=tmp_path, env=cli_env(), capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "run directory:" in done.stdout


def test_readme_python_example_runs(tmp_path: Path) -> None:
    (code,) = _blocks("python")
    done = subprocess.run(
        [sys.executable, "-c", code],
        cwd=tmp_path,
        env=cli_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
