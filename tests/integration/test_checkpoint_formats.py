"""Checkpoints written before components saved their own state (format 1) still resume, exactly;
a checkpoint of a format this version does not know is refused in one line.

The fixture is a real format-1 checkpoint at step 10, written by the trainer of commit 1b54e87
with the arguments of JOB and max_steps=20. Adding a config key makes it a checkpoint "made with
another config": regenerate it then (with the old trainer) or drop the key from the comparison.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import torch

from tests.conftest import REPO, run_cli

FIXTURE = REPO / "tests" / "fixtures" / "format1_checkpoint"
JOB = [
    "max_steps=20",
    "cluster.replicas_per_process=2",
    "algorithm.num_inner_steps=5",
    "checkpoint.every_outer_steps=2",
    "model=mlp",
    "data=digits",
    "model.hidden=[16]",
    "algorithm.noise=0.001",
    "model.dropout=0.1",
    "deterministic=true",
    "progress=false",
    "logger.plots=false",
    # what runs of that version ran (training/checkpointer.py ADDED_KEYS): the resume says so
    "algorithm.replica_init=shared",
    "scoping.rate_period=pass",
]


def _reference(run_dir: Path) -> dict[str, torch.Tensor]:
    return torch.load(run_dir / "reference.pt", weights_only=True)


def test_a_format_1_checkpoint_resumes_bitwise(tmp_path: Path) -> None:
    resumed = tmp_path / "resumed"
    shutil.copytree(FIXTURE, resumed)
    done = run_cli([*JOB, f"hydra.run.dir={resumed}"], tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "resumed from step 10" in done.stdout
    fresh = tmp_path / "fresh"
    done = run_cli([*JOB, f"hydra.run.dir={fresh}"], tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    x, y = _reference(resumed), _reference(fresh)
    assert x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x)
    results = [json.loads((d / "results.json").read_text()) for d in (resumed, fresh)]
    assert results[0]["communication"] == results[1]["communication"]


def test_an_old_checkpoint_names_the_settings_it_ran_with(tmp_path: Path) -> None:
    """Today's defaults (independent initialisations, the authors' scoping rate) are not what
    that run ran: the resume is refused in one line that names the keys to set."""
    run_dir = tmp_path / "run"
    shutil.copytree(FIXTURE, run_dir)
    today = [a for a in JOB if not a.startswith(("algorithm.replica_init", "scoping.rate_period"))]
    done = run_cli([*today, f"hydra.run.dir={run_dir}"], tmp_path)
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert done.returncode == 2 and len(lines) == 1, done.stderr
    assert "algorithm.replica_init='shared' there, 'independent' here" in lines[0]


def test_a_checkpoint_of_an_unknown_format_is_refused_in_one_line(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    shutil.copytree(FIXTURE, run_dir)
    step = run_dir / "checkpoints" / "step-000000010"
    state = torch.load(step / "rank-0.pt", weights_only=True)
    state["format"] = 99
    torch.save(state, step / "rank-0.pt")
    manifest = json.loads((step / "MANIFEST.json").read_text())
    digest = hashlib.sha256((step / "rank-0.pt").read_bytes()).hexdigest()
    manifest["sha256"] = [digest]
    (step / "MANIFEST.json").write_text(json.dumps(manifest))
    done = run_cli([*JOB, f"hydra.run.dir={run_dir}"], tmp_path)
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert done.returncode == 2 and len(lines) == 1, done.stderr
    assert "has checkpoint format 99, not one of 1, 2" in lines[0]
    assert "Traceback" not in done.stderr
