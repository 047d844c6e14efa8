"""Structured configs: one dataclass per component, registered as options of Hydra's groups.

Groups: ``algorithm/`` (parle, entropy_sgd, elastic_sgd, sgd, dp_sgd, local_sgd, ddp),
``model/`` (cnn1d, mlp, lenet), ``data/`` (mnist1d, digits, mnist, cifar10), ``scoping/``
(exponential, constant), ``cluster/`` (local, gpu), ``logger/`` (basic, tensorboard, wandb, all).
Algorithm keys are the optimizer's argument names. Values are checked in ``__post_init__``, which
runs when the composed config becomes objects (``OmegaConf.to_object``).

Each group's dataclasses live in their own module (``algorithm``, ``workload``, ``cluster``,
``logger``); this one holds the root ``Config``, the groups' options and their registration.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING

from elastic_entropy.config._checks import (
    _non_negative,
    _positive,
    _require,
    _seed,
    check_numbers,
)
from elastic_entropy.config.algorithm import (
    AdamWConfig,
    AlgorithmConfig,
    DataParallelAdamWConfig,
    DataParallelSGDConfig,
    DDPConfig,
    DiLoCoConfig,
    ElasticSGDConfig,
    EntropySGDConfig,
    LocalSGDConfig,
    ParleConfig,
    ScopingConfig,
    SGDConfig,
    _InnerLoopConfig,
)
from elastic_entropy.config.cluster import CheckpointConfig, ClusterConfig
from elastic_entropy.config.flatness import FlatnessConfig
from elastic_entropy.config.logger import (
    SINKS,
    WANDB_MODES,
    AllLoggerConfig,
    LoggerConfig,
    TensorBoardLoggerConfig,
    WandbConfig,
    WandbLoggerConfig,
)
from elastic_entropy.config.schedule import LR_SCHEDULES, LRScheduleConfig
from elastic_entropy.config.workload import (
    AllCNNConfig,
    CharLSTMConfig,
    CNN1DConfig,
    DataConfig,
    LeNetConfig,
    MLPConfig,
    ModelConfig,
    ResNet18Config,
    TargetModelConfig,
    TransformerConfig,
    WRNConfig,
)

__all__ = [
    "CONFIG_MODULE",
    "CONFIG_PATH",
    "GROUPS",
    "LR_SCHEDULES",
    "SINKS",
    "WANDB_MODES",
    "AlgorithmConfig",
    "AllLoggerConfig",
    "CNN1DConfig",
    "CheckpointConfig",
    "ClusterConfig",
    "Config",
    "DDPConfig",
    "DataConfig",
    "DataParallelSGDConfig",
    "ElasticSGDConfig",
    "EntropySGDConfig",
    "FlatnessConfig",
    "LRScheduleConfig",
    "LeNetConfig",
    "LocalSGDConfig",
    "LoggerConfig",
    "MLPConfig",
    "ModelConfig",
    "ParleConfig",
    "SGDConfig",
    "ScopingConfig",
    "TargetModelConfig",
    "TensorBoardLoggerConfig",
    "WandbConfig",
    "WandbLoggerConfig",
    "_InnerLoopConfig",
    "_non_negative",
    "_require",
    "register_configs",
]


@dataclass
class Config:
    """The schema of ``configs/config.yaml``: the run's keys, typed and checked (the values a
    run starts from are the YAML files'; these defaults serve code that builds a Config)."""

    algorithm: Any = MISSING  # Any: each option keeps its own dataclass
    model: Any = MISSING
    data: DataConfig = MISSING
    scoping: ScopingConfig = MISSING
    cluster: ClusterConfig = MISSING
    logger: LoggerConfig = MISSING
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    # how flat the final reference is, measured at the end (off by default: it costs more
    # than the default job)
    flatness: FlatnessConfig = field(default_factory=FlatnessConfig)
    seed: int = 0
    deterministic: bool = False  # torch.use_deterministic_algorithms: bitwise-reproducible runs
    # what epochs, eval_every and lr_schedule's milestones and warmup count (EPOCH_UNITS): pass,
    # the training set's size in minibatches; nb_outer_steps, the authors' Entropy-SGD / Parle
    # epoch: nb outer steps of L minibatches, nb = minibatches in one pass over a replica's data
    epoch_unit: str = "pass"
    epochs: float = 20.0  # minibatches per replica = epochs x (one epoch of epoch_unit)
    max_steps: int | None = None  # when set, replaces epochs (minibatches per replica)
    eval_every: float = 1.0  # epochs between evaluations of the reference
    lr_schedule: LRScheduleConfig = field(default_factory=LRScheduleConfig)
    progress: bool = True
    # fp32, bf16 or fp16: the training forward under torch.autocast (parameters, gradients and
    # the optimizer stay float32); fp16 scales the loss (loss_scale: its initial value) and skips
    # the steps whose gradients overflow
    precision: str = "fp32"
    loss_scale: float = 65536.0
    # how the training forward runs, not what it computes: image minibatches in the NHWC layout,
    # and the forward through torch.compile (eager, with one warning, where it cannot compile)
    channels_last: bool = False
    compile: bool = False

    def __post_init__(self) -> None:
        if isinstance(self.model, dict):  # a YAML model of yours, no schema: its _target_
            self.model = TargetModelConfig.from_node(self.model)
        # the groups have checked their own keys by now; this walk catches what no rule names
        # (inf, nan, 1e300) before the plan turns it into an OverflowError or a hang
        check_numbers(self)
        _require(
            self.epoch_unit in EPOCH_UNITS,
            "epoch_unit",
            self.epoch_unit,
            f"choose one of {', '.join(EPOCH_UNITS)}",
        )
        _require(self.epochs > 0, "epochs", self.epochs, "must be > 0")
        if self.max_steps is not None:
            _require(self.max_steps >= 1, "max_steps", self.max_steps, "must be >= 1")
        _require(self.eval_every > 0, "eval_every", self.eval_every, "must be > 0")
        _seed("seed", self.seed)
        if self.algorithm.name == "ddp":
            _require(
                self.cluster.replicas_per_process in (None, 1),
                "cluster.replicas_per_process",
                self.cluster.replicas_per_process,
                "algorithm=ddp wraps one model per process: start N processes with torchrun "
                "--nproc-per-node=N, or use algorithm=dp_sgd for several replicas in one process",
            )
        _require(
            not (self.algorithm.name == "ddp" and self.cluster.cuda_graphs == "on"),
            "cluster.cuda_graphs",
            self.cluster.cuda_graphs,
            "algorithm=ddp runs torch's DistributedDataParallel, which is not captured; "
            "use cluster.cuda_graphs=auto or off",
        )

        _require(
            self.precision in PRECISIONS,
            "precision",
            self.precision,
            f"choose one of {', '.join(PRECISIONS)}",
        )
        _positive("loss_scale", self.loss_scale)

    @property
    def replicas_per_process(self) -> int:
        if self.cluster.replicas_per_process is not None:
            return self.cluster.replicas_per_process
        return type(self.algorithm).DEFAULT_REPLICAS


GROUPS: dict[str, dict[str, Any]] = {
    "algorithm": {
        "parle": ParleConfig,
        "entropy_sgd": EntropySGDConfig,
        "elastic_sgd": ElasticSGDConfig,
        "sgd": SGDConfig,
        "dp_sgd": DataParallelSGDConfig,
        "local_sgd": LocalSGDConfig,
        "ddp": DDPConfig,
        "adamw": AdamWConfig,
        "dp_adamw": DataParallelAdamWConfig,
        "diloco": DiLoCoConfig,
    },
    "model": {
        "cnn1d": CNN1DConfig,
        "mlp": MLPConfig,
        "lenet": LeNetConfig,
        "wrn": WRNConfig,
        "allcnn": AllCNNConfig,
        "resnet18": ResNet18Config,
        "char_lstm": CharLSTMConfig,
        "transformer": TransformerConfig,
    },
    "data": {
        "mnist1d": DataConfig(name="mnist1d"),
        "digits": DataConfig(name="digits", batch_size=32),
        "mnist": DataConfig(name="mnist", batch_size=128),
        "cifar10": DataConfig(name="cifar10", batch_size=128, crop_padding=4, flip=True),
        "cifar100": DataConfig(name="cifar100", batch_size=128, crop_padding=4, flip=True),
        "svhn": DataConfig(name="svhn", batch_size=128),
        "mnist5k": DataConfig(name="mnist5k", batch_size=128),
        "imagefolder": DataConfig(name="imagefolder", batch_size=64),
        "pydoc": DataConfig(name="pydoc", batch_size=32, seq_len=64),
        "textfile": DataConfig(name="textfile", batch_size=32, seq_len=64),
        "custom": DataConfig,  # the values are your YAML's (data/custom.yaml)
    },
    "scoping": {
        "exponential": ScopingConfig,
        "constant": ScopingConfig(
            name="constant", gamma_rate=0.0, gamma_max=math.inf, rho_rate=0.0, rho_max=math.inf
        ),
    },
    "lr_schedule": {
        "constant": LRScheduleConfig,
        "cosine": LRScheduleConfig(name="cosine"),
        "step": LRScheduleConfig(
            name="step", milestones=[60, 120, 160], factors=[0.2, 0.04, 0.008]
        ),
    },
    "cluster": {"local": ClusterConfig, "gpu": ClusterConfig(name="gpu", device="cuda")},
    # classes, not instances: the wandb check reads the environment when a run is configured
    "logger": {
        "basic": LoggerConfig,
        "tensorboard": TensorBoardLoggerConfig,
        "wandb": WandbLoggerConfig,
        "all": AllLoggerConfig,
    },
}


PRECISIONS = ("fp32", "bf16", "fp16")
EPOCH_UNITS = ("pass", "nb_outer_steps")

# the YAML groups, linked into the package (elastic_entropy/configs -> configs/)
CONFIG_MODULE = "elastic_entropy.configs"
CONFIG_PATH = f"pkg://{CONFIG_MODULE}"


def register_configs() -> None:
    """The dataclasses as the schemas of the YAML files: ``schema`` for ``config.yaml``,
    ``GROUP/schema_OPTION`` for ``configs/GROUP/OPTION.yaml`` (its first default)."""
    store = ConfigStore.instance()
    store.store(name="schema", node=Config)
    for group, options in GROUPS.items():
        for name, node in options.items():
            schema = node if isinstance(node, type) else type(node)
            store.store(group=group, name=f"schema_{name}", node=schema)
