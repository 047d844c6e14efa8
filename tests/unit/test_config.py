"""The composed Hydra config: groups, overrides, validation."""

from __future__ import annotations

import pytest
from hydra.errors import ConfigCompositionException

from elastic_entropy.config import ParleConfig
from elastic_entropy.training.run import make_plan
from tests.conftest import compose_config


def test_default_is_parle_with_four_replicas_on_mnist1d() -> None:
    cfg = compose_config()
    assert isinstance(cfg.algorithm, ParleConfig)
    assert (cfg.algorithm.name, cfg.model.name, cfg.data.name) == ("parle", "cnn1d", "mnist1d")
    assert cfg.replicas_per_process == 4


@pytest.mark.parametrize(
    ("option", "replicas"), [("sgd", 1), ("entropy_sgd", 1), ("elastic_sgd", 4), ("local_sgd", 4)]
)
def test_each_algorithm_has_its_own_keys(option: str, replicas: int) -> None:
    cfg = compose_config(f"algorithm={option}")
    assert cfg.algorithm.name == option and cfg.replicas_per_process == replicas
    kwargs = cfg.algorithm.optimizer_kwargs()
    assert ("gamma" in kwargs) == (option == "entropy_sgd")
    three = compose_config(f"algorithm={option}", "cluster.replicas_per_process=3")
    assert three.replicas_per_process == 3


def test_overrides_use_the_optimizer_argument_names() -> None:
    cfg = compose_config(
        "algorithm.num_inner_steps=5",
        "algorithm.gamma=0.1",
        "algorithm.rho=0.5",
        "data.batch_size=32",
    )
    assert cfg.algorithm.optimizer_kwargs()["num_inner_steps"] == 5
    assert cfg.data.batch_size == 32


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("algorithm.lr=-1", "Invalid algorithm.lr: -1.0"),
        ("algorithm.alpha=1", "Invalid algorithm.alpha: 1.0"),
        ("algorithm.num_inner_steps=0", "use algorithm=elastic_sgd or sgd"),
        ("data.batch_size=0", "Invalid data.batch_size: 0"),
        ("data.policy=random", "choose full or shard"),
        ("cluster.backend=mpi", "choose auto, gloo or nccl"),
        ("epochs=0", "Invalid epochs: 0.0"),
    ],
)
def test_bad_values_are_named(override: str, message: str) -> None:
    with pytest.raises(ValueError, match=message.replace(".", r"\.")):
        compose_config(override)


def test_unknown_group_option_and_key() -> None:
    with pytest.raises(ConfigCompositionException, match="algorithm/adam"):
        compose_config("algorithm=adam")
    with pytest.raises(ConfigCompositionException, match=r"algorithm\.lrr"):
        compose_config("algorithm.lrr=1")


def test_plan_ends_on_an_outer_step_boundary() -> None:
    cfg = compose_config("algorithm.num_inner_steps=7", "max_steps=30")
    plan = make_plan(cfg, 4000)
    assert plan.total_steps == 35 and plan.steps_per_epoch == 62 and plan.outer_steps_per_epoch == 8
