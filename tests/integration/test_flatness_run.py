"""``flatness.enabled=true`` as a user types it: the numbers land in results.json, the run's table
and the report, measured on the reference that is saved, which they leave as it was trained."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from elastic_entropy.data import load_dataset
from elastic_entropy.flatness import fixed_batches, measure
from elastic_entropy.models import build_model
from tests.conftest import REPO, cli_env, compose_config, run_cli

BASE = ["max_steps=20", "progress=false", "logger.plots=false", "model.channels=8"]
SMALL = [
    "flatness.num_samples=200",
    "flatness.batch_size=64",  # chunks: 64 + 64 + 64 + 8
    "flatness.iterations=30",
    "flatness.probes=4",
    "flatness.radii=[0.02,0.2]",
    "flatness.draws=2",
    "flatness.num_inner_steps=10",
    "flatness.num_nodes=2",
]


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, str]:
    tmp = tmp_path_factory.mktemp("flatness")
    on = run_cli([*BASE, "flatness.enabled=true", *SMALL, f"hydra.run.dir={tmp / 'on'}"], tmp)
    assert on.returncode == 0, on.stderr[-3000:]
    off = run_cli([*BASE, f"hydra.run.dir={tmp / 'off'}"], tmp)
    assert off.returncode == 0, off.stderr[-3000:]
    return tmp / "on", tmp / "off", on.stdout


def test_results_hold_the_flatness_of_the_saved_reference(runs: tuple[Path, Path, str]) -> None:
    on, off, stdout = runs
    found = json.loads((on / "results.json").read_text())["flatness"]
    assert "flatness" not in json.loads((off / "results.json").read_text())
    reference = torch.load(on / "reference.pt")
    trained = [v for k, v in reference.items() if "running" not in k and "num_batches" not in k]
    norm = math.sqrt(sum(float(v.double().square().sum()) for v in trained))
    assert found["weight_norm"] == pytest.approx(norm, rel=1e-6)
    assert found["num_parameters"] == sum(v.numel() for v in trained)
    assert found["num_samples"] == 200
    assert [r["radius"] for r in found["rises"]] == [0.02, 0.2]
    assert found["top_eigenvalue"] > 0 and found["trace"] > 0
    entropy = found["local_entropy"]
    assert entropy["gamma"] == 1.0 and len(entropy["nodes"]) == 2
    assert entropy["loss"] == pytest.approx(found["loss"])
    assert f"top Hessian eigenvalue {found['top_eigenvalue']:.4g}" in stdout


def test_the_numbers_are_those_of_the_saved_reference_on_the_first_samples(
    runs: tuple[Path, Path, str],
) -> None:
    """reference.pt in a fresh model, measured by hand with the run's settings on the first 200
    training points: the run's numbers (same seeds, same chunks)."""
    on, _, _ = runs
    found = json.loads((on / "results.json").read_text())["flatness"]
    cfg = compose_config(*BASE, "flatness.enabled=true", *SMALL)
    data = load_dataset(cfg.data.name, cfg.data.root, cfg.data.seed)
    model = build_model(
        cfg.model.name, data.input_shape, data.num_classes, **cfg.model.model_kwargs()
    )
    model.load_state_dict(torch.load(on / "reference.pt"))
    f = cfg.flatness
    again = measure(
        model,
        fixed_batches(data.x_train, data.y_train, f.num_samples, f.batch_size),
        iterations=f.iterations,
        tolerance=f.tolerance,
        probes=f.probes,
        radii=f.radii,
        draws=f.draws,
        gamma=f.gamma,
        noise=f.noise,
        num_inner_steps=f.num_inner_steps,
        num_nodes=f.num_nodes,
        seed=f.seed,
    )
    for key in ("loss", "top_eigenvalue", "trace", "weight_norm"):
        assert again[key] == pytest.approx(found[key], rel=1e-4), key
    assert [r["mean"] for r in again["rises"]] == pytest.approx(
        [r["mean"] for r in found["rises"]], rel=1e-3, abs=1e-7
    )
    assert again["local_entropy"]["local_entropy"] == pytest.approx(
        found["local_entropy"]["local_entropy"], rel=1e-4
    )


def test_measuring_changes_nothing_that_was_trained(runs: tuple[Path, Path, str]) -> None:
    on, off, _ = runs
    a, b = torch.load(on / "reference.pt"), torch.load(off / "reference.pt")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    results = [json.loads((d / "results.json").read_text())["reference"] for d in (on, off)]
    assert results[0] == results[1]


def test_the_report_shows_the_flatness_columns(runs: tuple[Path, Path, str]) -> None:
    on, off, _ = runs
    out = on.parent / "report"
    done = subprocess.run(
        [sys.executable, "-m", "elastic_entropy.report", str(on), str(off), "--out", str(out)],
        cwd=REPO,
        env=cli_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    lines = (out / "report.md").read_text().splitlines()
    header = [c.strip() for c in lines[2].strip("|").split("|")]
    # in the order given: the measured run first
    measured, plain = ([c.strip() for c in line.strip("|").split("|")] for line in lines[4:6])
    found = json.loads((on / "results.json").read_text())["flatness"]
    for column, value in [
        ("top eig.", f"{found['top_eigenvalue']:.4g}"),
        ("trace", f"{found['trace']:.4g}"),
        ("rise r=0.2", f"{found['rises'][1]['mean']:.3g}"),
        ("f_gamma", f"{found['local_entropy']['local_entropy']:.4g}"),
    ]:
        assert measured[header.index(column)] == value
        assert plain[header.index(column)] == "–"  # no flatness measured there
