"""One run per run directory: an exclusive ``flock`` on ``RUN_DIR/.lock``, taken by rank 0
before anything is written there and held for the run's life.

Two runs in one directory destroy each other's work (each prunes the other's unfinished
checkpoint, replaces ``metrics.jsonl`` under the other's open handle). The kernel releases a
``flock`` when its process dies, however it dies, so a killed run never leaves a stale lock: the
next attempt (torchrun's restart, a requeued job) takes it at once. The file names its holder
(pid and host) for the message of a run it refuses; it is removed when the run ends.
"""

from __future__ import annotations

import fcntl
import os
import socket
from pathlib import Path

LOCK_NAME = ".lock"


class RunDirBusy(Exception):
    """Another live process holds the run directory's lock; ``holder`` names it."""

    def __init__(self, holder: str) -> None:
        super().__init__(holder)
        self.holder = holder


class RunLock:
    """The lock held on a run directory; :meth:`release` (or the process's end) frees it."""

    def __init__(self, path: Path, fd: int) -> None:
        self.path = path
        self._fd: int | None = fd

    @classmethod
    def acquire(cls, run_dir: Path) -> RunLock:
        """Lock ``run_dir``, or raise :class:`RunDirBusy` (OSError when it is not writable)."""
        path = run_dir / LOCK_NAME
        while True:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.pread(fd, 256, 0).decode(errors="replace").strip()
                os.close(fd)
                raise RunDirBusy(holder or "a process that is starting") from None
            except BaseException:
                os.close(fd)
                raise
            # a holder that ended between our open and our flock has unlinked the file we
            # locked: that lock guards nothing, take the one at the path
            if _same_file(fd, path):
                break
            os.close(fd)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()}\n".encode(), 0)
        return cls(path, fd)

    def release(self) -> None:
        """Remove the file, then unlock: a waiter that opened it sees it unlinked and retries."""
        if self._fd is None:
            return
        if _same_file(self._fd, self.path):
            self.path.unlink(missing_ok=True)
        os.close(self._fd)
        self._fd = None


def _same_file(fd: int, path: Path) -> bool:
    try:
        on_disk = os.stat(path)
    except FileNotFoundError:
        return False
    held = os.fstat(fd)
    return (held.st_dev, held.st_ino) == (on_disk.st_dev, on_disk.st_ino)
