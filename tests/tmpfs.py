"""A small file system that really fills up (ENOSPC from the kernel, not a mock): a tmpfs of a
given size, mounted for the test and unmounted after. Needs root (CI runs as root); a test that
cannot mount one is skipped with the reason."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

PAGE = 4096


@contextmanager
def small_filesystem(directory: Path, size_bytes: int) -> Iterator[Path]:
    """``directory`` as a tmpfs of ``size_bytes`` (rounded up to whole pages)."""
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a small tmpfs needs root and mount(8)")
    directory.mkdir(parents=True, exist_ok=True)
    pages = -(-size_bytes // PAGE)
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={pages * PAGE}", "tmpfs", str(directory)],
        capture_output=True,
        text=True,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        yield directory
    finally:
        subprocess.run(["umount", "-l", str(directory)], check=True)
