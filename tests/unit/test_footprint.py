"""The replicas' memory estimate: parameter counts from the meta device, the refusal above
what the machine has."""

from __future__ import annotations

import pytest
import torch

from elastic_entropy import footprint
from elastic_entropy.data import load_dataset
from elastic_entropy.models import build_model
from tests.conftest import compose_config


@pytest.mark.parametrize("name", ["digits", "mnist1d"])
def test_input_shapes_are_the_loaders_own(name: str) -> None:
    data = load_dataset(name, "data", 0)
    assert footprint.INPUTS[name] == (data.input_shape, data.num_classes)


@pytest.mark.parametrize(
    "overrides",
    [(), ("model=mlp", "model.hidden=[64,32]"), ("model=lenet", "data=digits")],
)
def test_meta_count_is_the_real_models(overrides: tuple[str, ...]) -> None:
    cfg = compose_config(*overrides)
    shape, classes = footprint.INPUTS[cfg.data.name]
    real = build_model(cfg.model.name, shape, classes, **cfg.model.model_kwargs())
    assert footprint.num_parameters(cfg) == sum(p.numel() for p in real.parameters())
    # a net that does not fit its data is left to the run, which says why
    assert footprint.num_parameters(compose_config("model=lenet")) is None


def test_refused_only_above_what_is_available() -> None:
    one = footprint.replica_bytes(1000)
    assert one == 1000 * footprint.BUFFERS_PER_PARAMETER * 4
    footprint.check_fits(1000, 4, available=4 * one)
    footprint.check_fits(1000, 4, available=None)  # cannot tell: never refused
    with pytest.raises(ValueError, match=r"2 processes on this machine x 4 replicas of 1,000 "):
        footprint.check_fits(1000, 4, available=4 * one, processes=2)
    available = footprint.available_bytes(torch.device("cpu"))
    assert available is not None and available > 0
    footprint.check_config(compose_config("cluster.device=cpu"))  # the default run fits
    with pytest.raises(ValueError, match=r"lower cluster\.replicas_per_process"):
        footprint.check_config(
            compose_config("cluster.device=cpu", "model=mlp", "model.hidden=[100000,100000]")
        )
