"""The ``model/`` and ``data/`` groups: what is trained, on what."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

from omegaconf import MISSING

from elastic_entropy.config._checks import _require, _seed


@dataclass
class ModelConfig:
    name: str = MISSING

    def model_kwargs(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name != "name"}


@dataclass
class CNN1DConfig(ModelConfig):
    name: str = "cnn1d"
    channels: int = 32
    dropout: float = 0.0
    batchnorm: bool = True

    def __post_init__(self) -> None:
        _require(self.channels >= 1, "model.channels", self.channels, "must be >= 1")
        _require(0.0 <= self.dropout < 1.0, "model.dropout", self.dropout, "must be in [0, 1)")


@dataclass
class MLPConfig(ModelConfig):
    name: str = "mlp"
    hidden: list[int] = field(default_factory=lambda: [256])
    dropout: float = 0.0
    batchnorm: bool = False

    def __post_init__(self) -> None:
        _require(
            all(h >= 1 for h in self.hidden), "model.hidden", self.hidden, "sizes must be >= 1"
        )
        _require(0.0 <= self.dropout < 1.0, "model.dropout", self.dropout, "must be in [0, 1)")

    def model_kwargs(self) -> dict[str, Any]:
        return {**super().model_kwargs(), "hidden": tuple(self.hidden)}


@dataclass
class LeNetConfig(ModelConfig):
    name: str = "lenet"
    channels: list[int] = field(default_factory=lambda: [20, 50])
    hidden: int = 500
    dropout: float = 0.25
    batchnorm: bool = True

    def __post_init__(self) -> None:
        _require(len(self.channels) == 2, "model.channels", self.channels, "needs two sizes")
        _require(0.0 <= self.dropout < 1.0, "model.dropout", self.dropout, "must be in [0, 1)")

    def model_kwargs(self) -> dict[str, Any]:
        return {**super().model_kwargs(), "channels": tuple(self.channels)}


@dataclass
class DataConfig:
    name: str = MISSING
    batch_size: int = 64
    root: str = "data"  # local folder for mnist and cifar10; never downloaded
    policy: str = "full"  # full: every replica sees all the data in its own order; shard: 1/n each
    seed: int = 42  # the data set's own seed (MNIST-1D generation, splits), not the run's
    validation_fraction: float = 0.0
    # a fixed subset of the training set (after the validation split): data-scarce experiments
    train_fraction: float = 1.0

    def __post_init__(self) -> None:
        _require(self.batch_size >= 1, "data.batch_size", self.batch_size, "must be >= 1")
        _seed("data.seed", self.seed)
        _require(
            0.0 < self.train_fraction <= 1.0,
            "data.train_fraction",
            self.train_fraction,
            "must be in (0, 1]",
        )
        _require(
            self.policy in ("full", "shard"), "data.policy", self.policy, "choose full or shard"
        )
        _require(
            0.0 <= self.validation_fraction < 1.0,
            "data.validation_fraction",
            self.validation_fraction,
            "must be in [0, 1)",
        )
