"""How a run ends: the signals that ask it to stop, and the exit code of every way out.

torch-free on purpose: the command line maps an error to its exit code before (or without)
importing torch.
"""

from __future__ import annotations

import os
import signal
import threading
from typing import Any

EXIT_OK = 0
EXIT_FAILED = 1  # a bug: the traceback is shown
EXIT_USAGE = 2  # the user's mistake, in one line
EXIT_DIVERGED = 3  # every replica's parameters went non-finite
EXIT_PEER_LOST = 4  # another process died or stopped answering
EXIT_PREEMPTED = 75  # EX_TEMPFAIL: torchrun restarts it, the sbatch script requeues it
EXIT_INTERRUPTED = 130  # 128 + SIGINT: what shells expect of a program stopped by Ctrl-C

STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT)
INTERRUPTED = "interrupted by Ctrl-C; the newest complete checkpoint is kept"


class Preempted(Exception):
    """Raised after the checkpoint is written, to exit with ``code`` (75, or 130 after Ctrl-C)."""

    def __init__(self, message: str, code: int = EXIT_PREEMPTED) -> None:
        super().__init__(message)
        self.code = code


def exit_code_of(signum: int | None) -> int:
    """Ctrl-C ends with 130, as shells expect; the scheduler's signals with 75, to be resumed."""
    return EXIT_INTERRUPTED if signum == signal.SIGINT else EXIT_PREEMPTED


def _say(line: str) -> None:
    # os.write, not print: a signal may arrive while sys.stderr is in the middle of a write
    try:
        os.write(2, f"elastic-entropy: {line}\n".encode())
    except OSError:
        pass  # stderr is gone: the exit code still tells


def exit_on_signals() -> None:
    """Outside :class:`StopSignals` (imports, parsing, the exit): nothing is being trained or
    written, so a stop signal ends the process at once, in one line, with its exit code."""
    if threading.current_thread() is not threading.main_thread():
        return

    def handle(signum: int, frame: Any) -> None:
        name = signal.Signals(signum).name
        _say(f"stopped by {name} outside the training; rerun the same command to continue")
        os._exit(exit_code_of(signum))

    for sig in STOP_SIGNALS:
        signal.signal(sig, handle)


class StopSignals:
    """SIGTERM / SIGUSR1 (preemption, the scheduler's warning) and SIGINT (Ctrl-C) ask for one
    checkpoint at the next outer step and an exit; more of them change nothing (a scheduler
    may signal every process of a job, torchrun forwards what it gets), except a second Ctrl-C,
    which stops at once. Disabled: the signals keep Python's defaults."""

    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled
        self.received: int | None = None
        self._previous: dict[int, Any] = {}

    @property
    def is_requested(self) -> bool:
        """Whether this process was asked to stop (the loop agrees on it across processes)."""
        return self.received is not None

    @property
    def exit_code(self) -> int:
        return exit_code_of(self.received)

    def describe(self) -> str:
        if self.received is None:
            return "a signal to another process"
        return signal.Signals(self.received).name

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is not threading.main_thread():
            return self  # signal.signal works in the main thread only
        for sig in STOP_SIGNALS:
            # disabled: the defaults, not exit_on_signals' "nothing written yet" exit
            default = signal.default_int_handler if sig == signal.SIGINT else signal.SIG_DFL
            self._previous[sig] = signal.signal(sig, self._handle if self.enabled else default)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if self.received is None:
            self.received = signum
        elif signum == signal.SIGINT and self.received == signal.SIGINT:
            raise KeyboardInterrupt  # the user asks twice: stop now, one line, exit 130

    def _leaving(self, signum: int, frame: Any) -> None:
        _say(f"{INTERRUPTED}; rerun the same command to resume")
        os._exit(EXIT_INTERRUPTED)

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            if self.received is not None:
                # on the way out with the first signal's exit code: more signals are ignored
                # (SIG_IGN, which Python's finalisation keeps: it resets its own handlers to
                # SIG_DFL), but for a second Ctrl-C
                is_again = sig == signal.SIGINT == self.received
                handler = self._leaving if is_again else signal.SIG_IGN
            signal.signal(sig, handler)


def exit_for(error: BaseException) -> tuple[int, str] | None:
    """The exit code and the one line to print for an error a run may end with, or None when
    it is not one of ours (a bug: let the traceback show)."""
    from omegaconf.errors import OmegaConfBaseException

    from elastic_entropy.distributed import PeerLostError
    from elastic_entropy.optim import DivergedError

    if isinstance(error, Preempted):
        return error.code, f"{error}; rerun the same command to resume"
    if isinstance(error, KeyboardInterrupt):
        return EXIT_INTERRUPTED, f"{INTERRUPTED}; rerun the same command to resume"
    if isinstance(error, PeerLostError):
        return EXIT_PEER_LOST, str(error)
    if isinstance(error, DivergedError):
        return EXIT_DIVERGED, f"diverged: {error}"
    # user mistakes (CheckpointError and DataNotFoundError are among them)
    if isinstance(error, (ValueError, FileNotFoundError, PermissionError, OmegaConfBaseException)):
        return EXIT_USAGE, f"error: {error}"
    return None
