"""A checkpoint written before issue 14's keys names what it ran with: one replica initialisation,
the scoping rate per pass, epochs in passes, an inner_lr that followed lr, Parle's Entropy-SGD."""

from __future__ import annotations

import torch

from elastic_entropy.training.checkpointer import config_changes, plain_config
from tests.conftest import REPO, compose_config

FIXTURE = REPO / "tests/fixtures/format1_checkpoint/checkpoints/step-000000010/rank-0.pt"
MINE = ("algorithm.replica_init", "algorithm.variant", "scoping.rate_period", "epoch_unit")
MINE += ("lr_schedule.inner_lr", "data.frac")


def _changes(*overrides: str) -> list[str]:
    saved = torch.load(FIXTURE, weights_only=False)["config"]
    cfg = compose_config(
        "max_steps=20", "cluster.replicas_per_process=2", "algorithm.num_inner_steps=5",
        "checkpoint.every_outer_steps=2", "model=mlp", "data=digits", "model.hidden=[16]",
        "algorithm.noise=0.001", "model.dropout=0.1", "deterministic=true", "progress=false",
        "logger.plots=false", *overrides,
    )
    changes = config_changes(saved, plain_config(cfg))
    return [c for c in changes if c.startswith(MINE)]


def test_todays_defaults_are_not_what_an_old_run_ran() -> None:
    assert _changes() == [
        "algorithm.replica_init='shared' there, 'independent' here",
        "scoping.rate_period='pass' there, 'nb_outer_steps' here",
    ]


def test_the_old_settings_resume_it() -> None:
    assert _changes("algorithm.replica_init=shared", "scoping.rate_period=pass") == []


def test_a_key_of_one_algorithm_is_not_asked_of_another() -> None:
    """``algorithm.variant`` is Entropy-SGD's: a Parle checkpoint is not missing it."""
    assert not any(c.startswith("algorithm.variant") for c in _changes())
