"""Every command and code block of the README runs (the installs are what .ci/run does)."""

from __future__ import annotations

import json
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


# Each benchmark command, parsed by that benchmark's own parser and not run (they take minutes to
# hours): parse_args is wrapped to stop once the arguments are read. One process parses them all.
_PARSE_ONLY = """
import argparse, json, runpy, sys
parse = argparse.ArgumentParser.parse_args
def stop(self, *args, **kwargs):
    parse(self, *args, **kwargs)
    raise SystemExit(0)
argparse.ArgumentParser.parse_args = stop
for argv in json.loads(sys.argv[1]):
    sys.argv = argv
    try:
        runpy.run_module(argv[0], run_name="__main__")
    except SystemExit as done:
        if done.code:
            print("refused:", " ".join(argv), file=sys.stderr)
        else:
            print("parsed:", " ".join(argv))
"""


def _benchmark_commands() -> list[list[str]]:
    """``python -m benchmarks.NAME ...`` in inline code (which may wrap over lines) and in the
    text blocks, each as its words."""
    found = re.findall(r"`(python -m benchmarks\.[^`]+)`", README)
    for block in _blocks("text"):
        found += [x for x in block.splitlines() if x.startswith("python -m benchmarks.")]
    return [shlex.split(" ".join(c.split())) for c in found]


def test_readme_benchmark_commands_name_only_options_their_benchmarks_take() -> None:
    commands = _benchmark_commands()
    assert len(commands) >= 10 and {c[2] for c in commands} >= {
        "benchmarks.claims",
        "benchmarks.throughput",
    }
    done = subprocess.run(
        [sys.executable, "-c", _PARSE_ONLY, json.dumps([c[2:] for c in commands])],
        cwd=REPO,
        env=cli_env(),
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert done.returncode == 0 and "refused:" not in done.stderr, done.stderr[-3000:]
    assert done.stdout.count("parsed: ") == len(commands), done.stdout[-3000:]
