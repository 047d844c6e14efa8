"""``python -m elastic_entropy.local_entropy`` as a user types it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
FIGURES = ("local_entropy.png", "scoping.png", "flat_minima.png", "metastability.png")


# the README's command, run as it is written (test_slurm checks every README command is in a set)
README_COMMAND = "python -m elastic_entropy.local_entropy plots --out figures/"
TESTED = {README_COMMAND}


def _run(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "elastic_entropy.local_entropy", *args],
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
        cwd=cwd,
    )


@pytest.mark.slow
def test_the_readme_command_writes_the_figures(tmp_path: Path):
    argv = README_COMMAND.split()
    assert argv[:3] == ["python", "-m", "elastic_entropy.local_entropy"]
    result = _run(*argv[3:], cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert all((tmp_path / "figures" / name).read_bytes()[:8] == PNG_MAGIC for name in FIGURES)


@pytest.mark.slow
def test_plots_writes_four_pngs(tmp_path: Path):
    out = tmp_path / "figures" / "nested"  # created by the command
    result = _run("plots", "--out", str(out))
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    assert len(lines) == len(FIGURES)
    for name, line in zip(FIGURES, lines):
        path = out / name
        assert line.startswith(f"wrote {path}: ")
        data = path.read_bytes()
        assert data[:8] == PNG_MAGIC
        assert len(data) > 10_000  # a real figure, not an empty canvas
    # the numbers printed are the story the figures tell
    assert "in the wide minimum SGD 0% vs Entropy-SGD" in lines[2]
    assert "fitted slope of log exit time vs 1/T" in lines[3]


def test_unknown_subcommand_is_one_line_on_stderr():
    result = _run("plot", "--out", "x")
    assert result.returncode != 0
    assert result.stdout == ""
    assert len(result.stderr.strip().splitlines()) == 1
    assert "invalid choice: 'plot'" in result.stderr


def test_missing_subcommand_is_one_line_on_stderr():
    result = _run()
    assert result.returncode != 0
    assert len(result.stderr.strip().splitlines()) == 1


def test_unwritable_out_is_one_line_on_stderr(tmp_path: Path):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    result = _run("plots", "--out", str(blocker / "figures"))
    assert result.returncode != 0
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("error: cannot write figures to --out")
