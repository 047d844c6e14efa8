"""The app sets torch's intra-op threads (``cluster.threads``) and says so once in train.log.

The logged count is ``torch.get_num_threads()`` read in the training process after it set it, so
these runs fail if the key stops reaching torch: the tests' environment has OMP_NUM_THREADS=1, so
a torch left alone reports 1.
"""

from __future__ import annotations

import re
from pathlib import Path

from tests.conftest import cli_env, run_cli

SMALL = ["max_steps=10", "progress=false", "logger.plots=false", "model=mlp", "data=digits"]


def _logged_threads(run_dir: Path) -> list[tuple[int, str]]:
    text = (run_dir / "train.log").read_text()
    return [(int(n), why) for n, why in re.findall(r"intra-op threads: (\d+) \((.*)\)", text)]


def test_an_explicit_count_reaches_torch(tmp_path: Path) -> None:
    done = run_cli([*SMALL, "cluster.threads=3", f"hydra.run.dir={tmp_path / 'run'}"], tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    assert _logged_threads(tmp_path / "run") == [(3, "cluster.threads=3")]


def test_auto_keeps_the_environment_s_omp_num_threads(tmp_path: Path) -> None:
    done = run_cli([*SMALL, f"hydra.run.dir={tmp_path / 'run'}"], tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    count = int(cli_env()["OMP_NUM_THREADS"])  # what run_cli passes on (1 unless set)
    why = f"OMP_NUM_THREADS={count} in the environment"
    assert _logged_threads(tmp_path / "run") == [(count, why)]
