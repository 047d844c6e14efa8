"""The suite itself: every pytest-xdist worker must collect the same test names.

The workers collect apart, at slightly different times and with their own hash seeds. A test id
built from a timestamp (gzip's mtime) or from set order differed between two workers once, and
xdist then ran nothing at all: the whole CI failed in 23 s.
"""

from __future__ import annotations

import subprocess
import sys
import time

from tests.conftest import REPO, cli_env


def _collected(hash_seed: str) -> list[str]:
    env = {**cli_env(), "PYTHONHASHSEED": hash_seed}
    options = ["--collect-only", "-q", "-n", "0", "-p", "no:cacheprovider"]
    done = subprocess.run(
        [sys.executable, "-m", "pytest", *options],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    return [line for line in done.stdout.splitlines() if "::" in line]


def test_two_collections_seconds_apart_with_other_hash_seeds_name_the_same_tests() -> None:
    first = _collected("1")
    time.sleep(1.1)  # gzip and friends stamp whole seconds
    second = _collected("2")
    assert len(first) > 800
    changed = sorted(set(first) ^ set(second))
    assert first == second, "ids that differ between two collections:\n" + "\n".join(changed[:10])
