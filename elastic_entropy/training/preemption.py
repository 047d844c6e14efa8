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


class Preempted(Exception):
    """Raised after the checkpoint is written, to exit with EXIT_PREEMPTED."""


class StopSignals:
    """SIGTERM / SIGUSR1 (preemption, the scheduler's warning) ask for a checkpoint and exit."""

    SIGNALS = (signal.SIGTERM, signal.SIGUSR1)

    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled
        self.received: int | None = None
        self._previous: dict[int, Any] = {}

    @property
    def is_requested(self) -> bool:
        """Whether this process was asked to stop (the loop agrees on it across processes)."""
        return self.received is not None

    def __enter__(self) -> StopSignals:
        if self.enabled and threading.current_thread() is threading.main_thread():
            for sig in self.SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if self.received is not None:
            # asked twice: stop now, the way the signal would have without us
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
        self.received = signum

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def exit_for(error: BaseException) -> tuple[int, str] | None:
    """The exit code and the one line to print for an error a run may end with, or None when
    it is not one of ours (a bug: let the traceback show)."""
    from omegaconf.errors import OmegaConfBaseException

    from elastic_entropy.distributed import PeerLostError
    from elastic_entropy.optim import DivergedError

    if isinstance(error, Preempted):
        return EXIT_PREEMPTED, f"{error}; rerun the same command to resume"
    if isinstance(error, PeerLostError):
        return EXIT_PEER_LOST, str(error)
    if isinstance(error, DivergedError):
        return EXIT_DIVERGED, f"diverged: {error}"
    # user mistakes (CheckpointError and DataNotFoundError are among them)
    if isinstance(error, (ValueError, FileNotFoundError, PermissionError, OmegaConfBaseException)):
        return EXIT_USAGE, f"error: {error}"
    return None
