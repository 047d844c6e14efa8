"""The composed Hydra config: groups, overrides, validation."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import ClassVar

import pytest
from hydra import compose, initialize_config_module
from hydra.errors import ConfigCompositionException
from omegaconf import DictConfig

from elastic_entropy.config import CONFIG_MODULE, ParleConfig, register_configs
from elastic_entropy.config._checks import check_numbers
from elastic_entropy.config.keys import describe, unknown_keys
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
        ("data.policy=random", "choose full, shard or frac"),
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


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("epochs=inf", "Invalid epochs: inf"),
        ("eval_every=nan", "Invalid eval_every: nan"),
        ("cluster.timeout_s=inf", "Invalid cluster.timeout_s: inf"),
        ("algorithm.gamma=nan", "Invalid algorithm.gamma: nan"),
        ("scoping.gamma_rate=inf", "Invalid scoping.gamma_rate: inf"),
        ("data.train_fraction=nan", "Invalid data.train_fraction: nan"),
        ("logger.every_outer_steps=10000000000000000", "Invalid logger.every_outer_steps"),
        ("cluster.replicas_per_process=1025", "must be in [1, 1024]"),
        ("data.seed=-1", "Invalid data.seed: -1"),
    ],
)
def test_no_number_is_infinite_or_absurd(override: str, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        compose_config(override)


def test_the_walk_covers_keys_that_no_rule_names() -> None:
    """A key added without a check of its own, in a nested dataclass or a list, is still held
    finite; a key in UNBOUNDED may be inf (no cap) but never nan."""

    @dataclass
    class Inner:
        sizes: list[int] = field(default_factory=lambda: [1, 2])
        cap: float = 1.0
        UNBOUNDED: ClassVar[tuple[str, ...]] = ("cap",)

    @dataclass
    class Outer:
        rate: float = 0.5
        inner: Inner = field(default_factory=Inner)

    check_numbers(Outer(inner=Inner(cap=math.inf)))
    for bad, key in [
        (Outer(rate=math.inf), "rate"),
        (Outer(inner=Inner(sizes=[1, 2**60])), "inner.sizes"),
        (Outer(inner=Inner(cap=math.nan)), "inner.cap"),
        (Outer(inner=Inner(cap=-math.inf)), "inner.cap"),
    ]:
        with pytest.raises(ValueError, match=f"Invalid {re.escape(key)}: "):
            check_numbers(bad)
    assert compose_config("scoping=constant").scoping.gamma_max == math.inf


def _composed(*overrides: str) -> DictConfig:
    register_configs()
    with initialize_config_module(CONFIG_MODULE, version_base="1.3"):
        return compose("config", overrides=list(overrides))


def test_added_keys_are_found_at_any_depth_with_the_nearest_valid_one() -> None:
    # to_object keeps an added key as an attribute nothing reads: the walk is what finds it
    assert compose_config("+algorithm.lrr=0.5").algorithm.lr == 0.1
    found = unknown_keys(_composed("+algorithm.lrr=0.5", "+logger.wandb.projetc=x", "+epoch=3"))
    assert [f.key for f in found] == ["algorithm.lrr", "logger.wandb.projetc", "epoch"]
    assert [describe(f).rsplit("; ", 1)[1] for f in found] == [
        "did you mean algorithm.lr?",
        "did you mean logger.wandb.project?",
        "did you mean epochs?",
    ]
    assert unknown_keys(_composed("algorithm=local_sgd", "model=mlp")) == []
    (other,) = unknown_keys(_composed("+model.widthh=3"))
    assert describe(other).endswith("the keys of model are channels, dropout, batchnorm")
