"""``flatness.*``: the YAML's values are the schema's, bad values are named, and a checkpoint made
without the group resumes with it."""

from __future__ import annotations

import pytest

from elastic_entropy.config import FlatnessConfig
from elastic_entropy.training.checkpointer import config_changes, plain_config
from tests.conftest import compose_config


def test_the_yaml_defaults_are_the_schema_defaults_and_off() -> None:
    cfg = compose_config()
    assert cfg.flatness == FlatnessConfig()
    assert not cfg.flatness.enabled


def test_overrides_reach_the_group() -> None:
    cfg = compose_config("flatness.enabled=true", "flatness.radii=[0.2]", "flatness.noise=0")
    assert cfg.flatness.enabled and cfg.flatness.radii == [0.2] and cfg.flatness.noise == 0.0


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("flatness.num_samples=0", "Invalid flatness.num_samples: 0 (must be in [1, 100000])"),
        ("flatness.probes=0", "Invalid flatness.probes: 0"),
        ("flatness.iterations=1000000", "Invalid flatness.iterations: 1000000"),
        ("flatness.tolerance=0", "Invalid flatness.tolerance: 0.0 (must be finite and > 0)"),
        ("flatness.radii=[]", "Invalid flatness.radii: [] (must be a list of relative radii"),
        ("flatness.radii=[0.1,-0.1]", "Invalid flatness.radii: [0.1, -0.1]"),
        ("flatness.gamma=0", "Invalid flatness.gamma: 0.0 (must be finite and > 0)"),
        ("flatness.noise=-1", "Invalid flatness.noise: -1.0 (must be finite and >= 0)"),
        ("flatness.num_inner_steps=1", "Invalid flatness.num_inner_steps: 1 (must be 0 (no"),
        ("flatness.seed=-1", "Invalid flatness.seed: -1 (must be in [0, 2**32))"),
        ("flatness.radii=[inf]", "Invalid flatness.radii: [inf] (must be a list of relative"),
    ],
)
def test_bad_values_are_named(override: str, message: str) -> None:
    with pytest.raises(ValueError) as raised:
        compose_config(override)
    assert message in str(raised.value)


def test_a_checkpoint_without_the_group_resumes_with_it_on() -> None:
    saved = plain_config(compose_config())
    del saved["flatness"]  # an earlier version's checkpoint
    assert config_changes(saved, plain_config(compose_config("flatness.enabled=true"))) == []
    changed = plain_config(compose_config("flatness.enabled=true", "seed=1"))
    assert config_changes(saved, changed) == ["seed=0 there, 1 here"]
