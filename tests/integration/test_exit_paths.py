"""Every way out of a run, with real processes, signals and pipes: repeated stop signals give one
checkpoint and one exit code, Ctrl-C gives 130 without a traceback, a reader that goes away
(`| head`) does not stop the run, and a second run into a busy run directory is refused."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import cli_env, newest_checkpoint, run_cli
from tests.integration.test_resume import _cli as _start

PERIOD = 10  # algorithm.num_inner_steps: minibatches per outer step, where signals are polled
JOB = [
    "model=mlp",
    "data=digits",
    "progress=false",
    f"algorithm.num_inner_steps={PERIOD}",
    "eval_every=1000",  # evaluate at the end only
]
ENDLESS = [*JOB, "max_steps=1000000"]  # runs until it is signalled
NO_CHECKPOINTS = "checkpoint.every_outer_steps=100000"  # only a signal's checkpoint


def _wait_until(
    is_done: Callable[[], object], proc: subprocess.Popen, what: str, timeout: float = 120
) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        if is_done():
            return
        time.sleep(0.02)
    err = proc.communicate()[1] if proc.poll() is not None else ""
    raise AssertionError(f"never {what} (exit {proc.poll()}): {err[-2000:]}")


def _signalled(
    args: list[str], cwd: Path, is_ready: Callable[[], object], signals: tuple[str, ...]
) -> tuple[int, str]:
    """Start the CLI, send ``signals`` 100 ms apart once ``is_ready()``: exit code, stderr."""
    proc = _start(args, cwd)
    _wait_until(is_ready, proc, "ready for the signals")
    for name in signals:
        proc.send_signal(getattr(signal, name))
        time.sleep(0.1)
    _, err = proc.communicate(timeout=120)
    return proc.returncode, err


def _records(run_dir: Path) -> list[dict]:
    path = run_dir / "metrics.jsonl"
    if not path.exists():
        return []
    lines = path.read_text().splitlines()
    return [json.loads(line) for line in lines if line.strip().endswith("}")]


def _steps(run_dir: Path) -> list[int]:
    return [r["step"] for r in _records(run_dir) if "event" not in r and "step" in r]


def _one_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err[-3000:]
    assert lines[0].startswith("elastic-entropy: "), lines[0]
    return lines[0]


def _checkpoints(run_dir: Path) -> list[str]:
    return sorted(d.name for d in (run_dir / "checkpoints").glob("step-*"))


@pytest.mark.parametrize(
    ("signals", "code"),
    [
        (("SIGTERM", "SIGUSR1", "SIGINT", "SIGTERM"), 75),
        (("SIGINT", "SIGTERM", "SIGUSR1", "SIGTERM"), 130),  # Ctrl-C first: 130, as shells expect
    ],
)
def test_repeated_stop_signals_give_one_checkpoint(
    tmp_path: Path, signals: tuple[str, ...], code: int
) -> None:
    """Signals 100 ms apart (a scheduler and torchrun both signalling): one checkpoint at the
    next outer step, then the first signal's exit code; never killed by the second."""
    run = tmp_path / "run"
    args = [*ENDLESS, NO_CHECKPOINTS, f"hydra.run.dir={run}"]
    returncode, err = _signalled(args, tmp_path, lambda: _steps(run), signals)
    assert returncode == code, err[-3000:]
    line = _one_line(err)
    assert f"stopped by {signals[0]} at step" in line and "checkpoint written" in line, line
    step = newest_checkpoint(run)
    assert _checkpoints(run) == [f"step-{step:09d}"]
    assert step % PERIOD == 0 and step == _steps(run)[-1]


def test_signal_while_the_run_is_built_is_answered_at_the_first_outer_step(
    tmp_path: Path,
) -> None:
    run = tmp_path / "run"
    args = [*ENDLESS, NO_CHECKPOINTS, f"hydra.run.dir={run}"]
    # metrics.jsonl is opened while the run is built, before its first minibatch
    returncode, err = _signalled(args, tmp_path, (run / "metrics.jsonl").exists, ("SIGUSR1",))
    assert returncode == 75, err[-3000:]
    assert "stopped by SIGUSR1 at step" in _one_line(err)
    assert _checkpoints(run) == [f"step-{PERIOD:09d}"]


def test_second_ctrl_c_stops_at_once(tmp_path: Path) -> None:
    """Ctrl-C twice within one outer step: exit 130 at once, one line, no checkpoint."""
    run = tmp_path / "run"
    long_outer = [*ENDLESS, "algorithm.num_inner_steps=400", f"hydra.run.dir={run}"]
    is_built = (run / "metrics.jsonl").exists
    returncode, err = _signalled(long_outer, tmp_path, is_built, ("SIGINT", "SIGINT"))
    assert returncode == 130, err[-3000:]
    assert "interrupted by Ctrl-C" in _one_line(err)
    assert _checkpoints(run) == []


def test_signal_before_training_ends_in_one_line(tmp_path: Path) -> None:
    """While torch is imported (after Hydra opened its log, before the run is built)."""
    run = tmp_path / "run"
    args = [*ENDLESS, NO_CHECKPOINTS, f"hydra.run.dir={run}"]
    returncode, err = _signalled(args, tmp_path, (run / "train.log").exists, ("SIGTERM",))
    assert returncode == 75, err[-3000:]
    assert "stopped by SIGTERM" in _one_line(err)


@pytest.mark.parametrize(
    "redirect",
    [
        "2>err.txt | head -c 0",  # the final table into a closed pipe
        "2>&1 | head -c 0",  # the progress bar too, during training
    ],
)
def test_reader_gone_the_run_still_finishes(tmp_path: Path, redirect: str) -> None:
    run = tmp_path / "run"
    args = " ".join([*JOB, "max_steps=40", "progress=true", f"hydra.run.dir={run}"])
    done = subprocess.run(
        ["bash", "-c", f"elastic-entropy {args} {redirect}; exit ${{PIPESTATUS[0]}}"],
        cwd=tmp_path,
        env=cli_env(),
        capture_output=True,
        text=True,
        timeout=240,
    )
    err = (tmp_path / "err.txt").read_text() if (tmp_path / "err.txt").exists() else ""
    assert done.returncode == 0, (done.stderr[-2000:], err[-2000:])
    assert "Traceback" not in err and "Exception ignored" not in err, err[-3000:]
    assert json.loads((run / "results.json").read_text())["steps_per_replica"] == 40
    assert _steps(run) == list(range(PERIOD, 41, PERIOD))


def test_second_run_into_a_busy_run_directory_is_refused(tmp_path: Path) -> None:
    """The holder's pid and host in one line, exit 2, nothing of the first run touched; the lock
    dies with its process, so a SIGKILLed run's directory resumes at once."""
    run = tmp_path / "run"
    args = [*ENDLESS, "checkpoint.every_outer_steps=1", f"hydra.run.dir={run}"]
    first = _start(args, tmp_path)
    _wait_until(lambda: _steps(run), first, "trained")
    metrics_inode = (run / "metrics.jsonl").stat().st_ino
    second = run_cli(args, tmp_path)
    assert second.returncode == 2, second.stderr[-3000:]
    line = _one_line(second.stderr)
    assert f"in use by another run (pid {first.pid} on {socket.gethostname()})" in line, line
    assert first.poll() is None, "the first run was disturbed"
    assert (run / "metrics.jsonl").stat().st_ino == metrics_inode  # not replaced under it
    at_refusal = newest_checkpoint(run)
    _wait_until(lambda: newest_checkpoint(run) > at_refusal, first, "checkpointed again")
    first.kill()  # SIGKILL: no cleanup, the lock file stays; the kernel's lock does not
    first.wait(timeout=30)
    killed_at = newest_checkpoint(run)

    again = _start(args, tmp_path)
    _wait_until(lambda: newest_checkpoint(run) > killed_at, again, "resumed and checkpointed")
    again.send_signal(signal.SIGTERM)
    out, err = again.communicate(timeout=120)
    assert again.returncode == 75, err[-3000:]
    assert f"resumed from step {killed_at}" in out
    last = newest_checkpoint(run)
    # every record of both attempts, none twice: the refused run wrote nothing
    assert _steps(run) == list(range(PERIOD, last + 1, PERIOD))
    assert not (run / ".lock").exists()  # a run that ends removes it
