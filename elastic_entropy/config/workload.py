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
class TargetModelConfig(ModelConfig):
    """A model of yours: ``_target_`` (a dotted path to an ``nn.Module`` factory or class) and
    the keyword arguments it takes, from a YAML file without a schema."""

    target: str = MISSING
    kwargs: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_node(cls, node: dict[str, Any]) -> TargetModelConfig:
        if "_target_" not in node:
            raise ValueError(
                "Invalid model: a model config needs a name (model=cnn1d, mlp, lenet...) or a "
                "_target_ (the dotted path of your nn.Module factory)"
            )
        kwargs = {k: v for k, v in node.items() if k not in ("_target_", "name")}
        target = str(node["_target_"])
        return cls(name=str(node.get("name", target)), target=target, kwargs=kwargs)

    def node(self) -> dict[str, Any]:
        return {"_target_": self.target, **self.kwargs}


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
    # None: the authors' valid convs and 3x3, 2x2 pools (the padded 2x2 variant on small images)
    padding: int | None = None
    pools: list[int] | None = None

    def __post_init__(self) -> None:
        _require(len(self.channels) == 2, "model.channels", self.channels, "needs two sizes")
        _require(0.0 <= self.dropout < 1.0, "model.dropout", self.dropout, "must be in [0, 1)")
        if self.padding is not None:
            _require(self.padding >= 0, "model.padding", self.padding, "must be >= 0")
        if self.pools is not None:
            _require(
                len(self.pools) == 2 and min(self.pools) >= 1,
                "model.pools",
                self.pools,
                "needs two sizes >= 1",
            )

    def model_kwargs(self) -> dict[str, Any]:
        pools = None if self.pools is None else tuple(self.pools)
        return {**super().model_kwargs(), "channels": tuple(self.channels), "pools": pools}


def _sizes_and_dropout(config: Any, sizes: tuple[str, ...]) -> None:
    """A language model's sizes (each >= 1) and its dropout rate."""
    for key in sizes:
        _require(getattr(config, key) >= 1, f"model.{key}", getattr(config, key), "must be >= 1")
    _require(0.0 <= config.dropout < 1.0, "model.dropout", config.dropout, "must be in [0, 1)")


@dataclass
class CharLSTMConfig(ModelConfig):
    """The char-rnn shape: an embedding, LSTM layers, a linear read-out per position."""

    name: str = "char_lstm"
    embedding: int = 64
    hidden: int = 128
    layers: int = 2
    dropout: float = 0.0

    def __post_init__(self) -> None:
        _sizes_and_dropout(self, ("embedding", "hidden", "layers"))


@dataclass
class TransformerConfig(ModelConfig):
    """A small decoder-only transformer (causal attention, pre-norm blocks)."""

    name: str = "transformer"
    width: int = 128
    layers: int = 2
    heads: int = 4
    dropout: float = 0.0

    def __post_init__(self) -> None:
        _sizes_and_dropout(self, ("width", "layers", "heads"))
        _require(
            self.width % self.heads == 0,
            "model.width",
            self.width,
            f"must be a multiple of model.heads={self.heads}",
        )


@dataclass
class WRNConfig(ModelConfig):
    """Wide ResNet WRN-depth-widen_factor (WRN-28-10: 36.5M parameters)."""

    name: str = "wrn"
    depth: int = 28
    widen_factor: int = 10
    dropout: float = 0.0
    base_width: int = 16  # 16 in the paper; smaller for CPU-sized variants

    def __post_init__(self) -> None:
        _require(
            self.depth >= 10 and (self.depth - 4) % 6 == 0,
            "model.depth",
            self.depth,
            "must be 6n + 4 (10, 16, 22, 28, 40)",
        )
        _require(self.widen_factor >= 1, "model.widen_factor", self.widen_factor, "must be >= 1")
        _require(self.base_width >= 1, "model.base_width", self.base_width, "must be >= 1")
        _require(0.0 <= self.dropout < 1.0, "model.dropout", self.dropout, "must be in [0, 1)")


@dataclass
class AllCNNConfig(ModelConfig):
    """All-CNN-C with BatchNorm (1.37M parameters at width 1)."""

    name: str = "allcnn"
    width: float = 1.0  # scales the 96 and 192 channels
    dropout: float = 0.0  # after each stride-2 block
    input_dropout: float = 0.0

    def __post_init__(self) -> None:
        _require(0.0 < self.width <= 16.0, "model.width", self.width, "must be in (0, 16]")
        for key in ("dropout", "input_dropout"):
            value = getattr(self, key)
            _require(0.0 <= value < 1.0, f"model.{key}", value, "must be in [0, 1)")


@dataclass
class ResNet18Config(ModelConfig):
    """The CIFAR ResNet-18 (11.2M parameters at width 64)."""

    name: str = "resnet18"
    width: int = 64
    dropout: float = 0.0  # before the linear head

    def __post_init__(self) -> None:
        _require(self.width >= 1, "model.width", self.width, "must be >= 1")
        _require(0.0 <= self.dropout < 1.0, "model.dropout", self.dropout, "must be in [0, 1)")


# minibatches gathered from tensors on the device, or read by DataLoaders (loaders.py)
PIPELINES = ("auto", "tensors", "loader")


@dataclass
class DataConfig:
    name: str = MISSING
    batch_size: int = 64
    root: str = "data"  # local folder for mnist and cifar10; never downloaded
    # full: every replica sees all the data in its own order; shard: a disjoint 1/n each; frac:
    # the authors' contiguous fraction data.frac of one shuffle from i/n on (overlapping)
    policy: str = "full"
    frac: float | None = None  # data.policy=frac: each replica's fraction, in (0, 1]
    seed: int = 42  # the data set's own seed (MNIST-1D generation, splits), not the run's
    validation_fraction: float = 0.0
    # a fixed subset of the training set (after the validation split): data-scarce experiments
    train_fraction: float = 1.0
    # your own data sets (name=custom): _target_ nodes of map-style torch Datasets giving
    # (input, label) pairs; val and test are optional
    train: Any = None
    val: Any = None
    test: Any = None
    num_classes: int | None = None  # None: the largest label + 1
    # augmentation of training minibatches on the device, from each replica's own stream: random
    # crops of the image padded by crop_padding zeros, and horizontal flips (the papers' CIFAR)
    crop_padding: int = 0
    flip: bool = False
    # how minibatches reach the replicas (elastic_entropy.loaders): held on the device as
    # tensors, or read by a DataLoader per replica; auto holds what fits
    pipeline: str = "auto"
    seq_len: int = 64  # text (data=pydoc, textfile): the characters of one sample's window
    num_workers: int = 0  # the loader path's worker processes per replica
    pin_memory: bool = True  # page-locked batches, on a CUDA device only
    prefetch_factor: int = 2  # minibatches each worker reads ahead
    persistent_workers: bool = True  # evaluation loaders keep their workers

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
            self.policy in ("full", "shard", "frac"),
            "data.policy",
            self.policy,
            "choose full, shard or frac",
        )
        if self.policy == "frac":
            _require(
                self.frac is not None and 0.0 < self.frac <= 1.0,
                "data.frac",
                self.frac,
                "data.policy=frac needs each replica's fraction in (0, 1], e.g. data.frac=0.5",
            )
        else:
            _require(
                self.frac is None,
                "data.frac",
                self.frac,
                f"is read only with data.policy=frac (here {self.policy}); set both",
            )
        _require(
            self.pipeline in PIPELINES,
            "data.pipeline",
            self.pipeline,
            f"choose one of {', '.join(PIPELINES)}",
        )
        _require(self.num_workers >= 0, "data.num_workers", self.num_workers, "must be >= 0")
        _require(self.seq_len >= 1, "data.seq_len", self.seq_len, "must be >= 1")
        _require(
            self.prefetch_factor >= 1, "data.prefetch_factor", self.prefetch_factor, "must be >= 1"
        )
        _require(
            0 <= self.crop_padding <= 64,
            "data.crop_padding",
            self.crop_padding,
            "must be in [0, 64]",
        )
        for split in ("train", "val", "test"):
            node = getattr(self, split)
            _require(
                node is None or (isinstance(node, dict) and "_target_" in node),
                f"data.{split}",
                node,
                "must be a _target_ node: {_target_: my_package.MyDataset, ...its arguments}",
            )
        _require(
            self.train is not None or self.name != "custom",
            "data.train",
            None,
            "data=custom reads your data set: set data.train={_target_: my_package.MyDataset}",
        )
        _require(
            self.train is not None or (self.val is None and self.test is None),
            "data.train",
            None,
            "data.val and data.test need data.train (your training set's _target_)",
        )
        _require(
            0.0 <= self.validation_fraction < 1.0,
            "data.validation_fraction",
            self.validation_fraction,
            "must be in [0, 1)",
        )
