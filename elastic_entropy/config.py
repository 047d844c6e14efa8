"""Structured configs: one dataclass per component, registered as options of Hydra's groups.

Groups: ``algorithm/`` (parle, entropy_sgd, elastic_sgd, sgd, dp_sgd, local_sgd, ddp),
``model/`` (cnn1d, mlp, lenet), ``data/`` (mnist1d, digits, mnist, cifar10), ``scoping/``
(exponential, constant), ``cluster/`` (local, gpu), ``logger/`` (basic, tensorboard, wandb, all).
Algorithm keys are the optimizer's argument names. Values are checked in ``__post_init__``, which
runs when the composed config becomes objects (``OmegaConf.to_object``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from typing import Any, ClassVar

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING


def _require(condition: bool, key: str, value: Any, rule: str) -> None:
    if not condition:
        raise ValueError(f"Invalid {key}: {value!r} ({rule})")


def _non_negative(key: str, value: float) -> None:
    _require(math.isfinite(value) and value >= 0.0, key, value, "must be finite and >= 0")


@dataclass
class AlgorithmConfig:
    name: str = MISSING
    lr: float = 0.1
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 0.0
    # replicas per process when cluster.replicas_per_process is left unset
    DEFAULT_REPLICAS: ClassVar[int] = 1

    def __post_init__(self) -> None:
        _non_negative("algorithm.lr", self.lr)
        _require(
            0.0 <= self.momentum < 1.0, "algorithm.momentum", self.momentum, "must be in [0, 1)"
        )
        _non_negative("algorithm.weight_decay", self.weight_decay)

    def steps_per_exchange(self) -> int:
        """Minibatches per outer step (one exchange between replicas): 1 without an inner loop."""
        return max(1, getattr(self, "num_inner_steps", 1))

    def optimizer_kwargs(self) -> dict[str, Any]:
        """Everything but ``name``: the keys are the optimizer's argument names."""
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name != "name"}


@dataclass
class _InnerLoopConfig(AlgorithmConfig):
    inner_lr: float | None = None  # None: the same as lr
    num_inner_steps: int = 10
    gamma: float = 0.03
    alpha: float = 0.75
    noise: float = 0.0

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.inner_lr is not None:
            _non_negative("algorithm.inner_lr", self.inner_lr)
        _require(
            self.num_inner_steps >= 1,
            "algorithm.num_inner_steps",
            self.num_inner_steps,
            "must be >= 1 here; use algorithm=elastic_sgd or sgd for no inner loop",
        )
        _non_negative("algorithm.gamma", self.gamma)
        _require(0.0 <= self.alpha < 1.0, "algorithm.alpha", self.alpha, "must be in [0, 1)")
        _non_negative("algorithm.noise", self.noise)


@dataclass
class ParleConfig(_InnerLoopConfig):
    name: str = "parle"
    rho: float = 1.0
    overlap: bool = False  # all-reduce behind the next inner loop; the reference is 1 step stale
    DEFAULT_REPLICAS: ClassVar[int] = 4

    def __post_init__(self) -> None:
        super().__post_init__()
        _non_negative("algorithm.rho", self.rho)


@dataclass
class EntropySGDConfig(_InnerLoopConfig):
    name: str = "entropy_sgd"
    lr: float = 1.0  # Entropy-SGD's outer lr absorbs 1/gamma: 1 in the papers
    inner_lr: float | None = 0.1


@dataclass
class ElasticSGDConfig(AlgorithmConfig):
    name: str = "elastic_sgd"
    rho: float = 1.0
    DEFAULT_REPLICAS: ClassVar[int] = 4

    def __post_init__(self) -> None:
        super().__post_init__()
        _non_negative("algorithm.rho", self.rho)


@dataclass
class SGDConfig(AlgorithmConfig):
    name: str = "sgd"


@dataclass
class DataParallelSGDConfig(AlgorithmConfig):
    """The baseline: every replica's gradient averaged every minibatch (batch = n x B)."""

    name: str = "dp_sgd"
    DEFAULT_REPLICAS: ClassVar[int] = 4


@dataclass
class DDPConfig(AlgorithmConfig):
    """torch's DistributedDataParallel + SGD: one model per process, gradients all-reduced in
    backward (start N processes with torchrun for N workers)."""

    name: str = "ddp"


@dataclass
class LocalSGDConfig(AlgorithmConfig):
    """Replicas run SGD alone and are replaced by their average every num_local_steps steps."""

    name: str = "local_sgd"
    num_local_steps: int = 10
    DEFAULT_REPLICAS: ClassVar[int] = 4

    def __post_init__(self) -> None:
        super().__post_init__()
        _require(
            self.num_local_steps >= 1,
            "algorithm.num_local_steps",
            self.num_local_steps,
            "must be >= 1 (1 averages after every step)",
        )

    def steps_per_exchange(self) -> int:
        return self.num_local_steps


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


@dataclass
class ScopingConfig:
    """``coupling_t = min(initial (1 + rate)^t, max)`` per outer step; ``rate: null`` is the
    papers' ``0.5 / B`` with ``B`` outer steps per epoch."""

    name: str = "exponential"
    gamma_rate: float | None = None
    gamma_max: float = 1.0
    rho_rate: float | None = None
    rho_max: float = 10.0

    def __post_init__(self) -> None:
        for key in ("gamma_rate", "rho_rate"):
            value = getattr(self, key)
            if value is not None:
                _non_negative(f"scoping.{key}", value)
        for key in ("gamma_max", "rho_max"):
            value = getattr(self, key)
            _require(value >= 0.0, f"scoping.{key}", value, "must be >= 0 (inf for no cap)")


@dataclass
class ClusterConfig:
    name: str = "local"
    replicas_per_process: int | None = None  # None: the algorithm's default (Parle: 4)
    backend: str = "auto"  # auto: nccl on GPUs, gloo on CPUs
    device: str = "auto"  # auto: cuda:LOCAL_RANK when CUDA is there, else cpu
    timeout_s: float = 600.0  # a silent peer ends the job after this long
    # the mean goes process -> node -> job; None: torchrun's LOCAL_WORLD_SIZE (one node otherwise)
    processes_per_node: int | None = None
    inter_node_period: int = 1  # cross nodes every k-th outer step (k > 1 changes the algorithm)
    # the replicas' forward+backward in one CUDA graph: auto = on CUDA devices where it can be
    # (not with algorithm=ddp or dropout), on = insist, off = never
    cuda_graphs: str = "auto"

    def __post_init__(self) -> None:
        if self.replicas_per_process is not None:
            _require(
                self.replicas_per_process >= 1,
                "cluster.replicas_per_process",
                self.replicas_per_process,
                "must be >= 1",
            )
        _require(
            self.backend in ("auto", "gloo", "nccl"),
            "cluster.backend",
            self.backend,
            "choose auto, gloo or nccl",
        )
        _require(
            self.device in ("auto", "cpu", "cuda"),
            "cluster.device",
            self.device,
            "choose auto, cpu or cuda",
        )
        _require(self.timeout_s > 0, "cluster.timeout_s", self.timeout_s, "must be > 0")
        if self.processes_per_node is not None:
            _require(
                self.processes_per_node >= 1,
                "cluster.processes_per_node",
                self.processes_per_node,
                "must be >= 1",
            )
        _require(
            self.inter_node_period >= 1,
            "cluster.inter_node_period",
            self.inter_node_period,
            "must be >= 1",
        )
        _require(
            self.cuda_graphs in ("auto", "on", "off"),
            "cluster.cuda_graphs",
            self.cuda_graphs,
            "choose auto, on or off",
        )
        _require(
            not (self.cuda_graphs == "on" and self.device == "cpu"),
            "cluster.cuda_graphs",
            self.cuda_graphs,
            "CUDA graphs need cluster.device=cuda (or auto on a GPU); use auto or off on CPUs",
        )


@dataclass
class CheckpointConfig:
    every_outer_steps: int = 25  # also at the end, and on SIGTERM / SIGUSR1
    keep_last: int = 3
    resume: bool = True  # resume from the run directory's newest checkpoint when there is one
    on_signal: bool = True  # SIGTERM / SIGUSR1: write a checkpoint, then exit 75

    def __post_init__(self) -> None:
        _require(
            self.every_outer_steps >= 1,
            "checkpoint.every_outer_steps",
            self.every_outer_steps,
            "must be >= 1",
        )
        _require(self.keep_last >= 1, "checkpoint.keep_last", self.keep_last, "must be >= 1")


WANDB_MODES = ("auto", "online", "offline", "disabled")
SINKS = ("console", "jsonl", "tensorboard", "wandb")


@dataclass
class WandbConfig:
    """wandb's run settings; ``None`` leaves a key to wandb's own ``WANDB_*`` variables."""

    # auto: $WANDB_MODE when set, else online with credentials and offline without
    mode: str = "auto"
    project: str | None = None  # None: $WANDB_PROJECT, else elastic-entropy
    entity: str | None = None  # None: $WANDB_ENTITY, else your default entity
    group: str | None = None  # None: $WANDB_RUN_GROUP, else the Hydra sweep directory
    name: str | None = None  # None: $WANDB_NAME, else the sweep job's overrides (or wandb's)
    tags: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        _require(
            self.mode in WANDB_MODES,
            "logger.wandb.mode",
            self.mode,
            f"choose {', '.join(WANDB_MODES)}",
        )


@dataclass
class LoggerConfig:
    """Where metrics go (rank 0 only). ``metrics.jsonl`` is always written: plots, the report
    command and resumption read it. Options of the ``logger`` group preset ``sinks``."""

    name: str = "basic"
    sinks: list[str] = field(default_factory=lambda: ["console", "jsonl"])
    every_outer_steps: int = 1  # replica losses, distances, forces, couplings, throughput
    eval_replicas: bool = True  # every eval_every: each replica on the held-out split too
    plots: bool = True  # PNGs in RUN_DIR/plots at the end of the run
    wandb: WandbConfig = field(default_factory=WandbConfig)

    def __post_init__(self) -> None:
        unknown = [s for s in self.sinks if s not in SINKS]
        _require(not unknown, "logger.sinks", list(self.sinks), f"choose from {', '.join(SINKS)}")
        _require(
            self.every_outer_steps >= 1,
            "logger.every_outer_steps",
            self.every_outer_steps,
            "must be >= 1",
        )
        # checked here, before anything starts, so that a missing package or key is one line
        from elastic_entropy.loggers import check_tensorboard, check_wandb

        if "tensorboard" in self.sinks:
            check_tensorboard()
        if "wandb" in self.sinks:
            check_wandb(self.wandb.mode)


@dataclass
class TensorBoardLoggerConfig(LoggerConfig):
    name: str = "tensorboard"
    sinks: list[str] = field(default_factory=lambda: ["console", "jsonl", "tensorboard"])


@dataclass
class WandbLoggerConfig(LoggerConfig):
    name: str = "wandb"
    sinks: list[str] = field(default_factory=lambda: ["console", "jsonl", "wandb"])


@dataclass
class AllLoggerConfig(LoggerConfig):
    name: str = "all"
    sinks: list[str] = field(default_factory=lambda: list(SINKS))


HELP_HEADER = """elastic-entropy: train with Parle (Entropy-SGD replicas elastically coupled to
their average), Entropy-SGD, Elastic-SGD or SGD. Every run writes metrics.jsonl, config.yaml,
results.json and reference.pt to its run directory (outputs/DATE/TIME).

  elastic-entropy                                  Parle, 4 replicas, MNIST-1D (the default job)
  elastic-entropy algorithm=sgd                    the baseline on the same machinery
  elastic-entropy algorithm.num_inner_steps=5 algorithm.rho=0.5 data=digits model=mlp
  torchrun --standalone --nproc-per-node=2 -m elastic_entropy.train cluster.replicas_per_process=2
  elastic-entropy report RUN_DIR [RUN_DIR...]      redraw and compare runs from their metrics
"""
HELP_FOOTER = """Use --cfg job to print the composed config, --help for this text.
Couplings are strengths: Deep Relaxation's variance is 1/gamma."""


LR_SCHEDULES = ("constant", "cosine")


@dataclass
class Config:
    defaults: list[Any] = field(
        default_factory=lambda: [
            {"algorithm": "parle"},
            {"model": "cnn1d"},
            {"data": "mnist1d"},
            {"scoping": "exponential"},
            {"cluster": "local"},
            {"logger": "basic"},
            "_self_",
        ]
    )
    # Hydra's own settings: microseconds in the run directory so that two runs never share one
    hydra: Any = field(
        default_factory=lambda: {
            "run": {"dir": "outputs/${now:%Y-%m-%d}/${now:%H-%M-%S-%f}"},
            "sweep": {"dir": "multirun/${now:%Y-%m-%d}/${now:%H-%M-%S-%f}"},
            "help": {"app_name": "elastic-entropy", "header": HELP_HEADER, "footer": HELP_FOOTER},
            # the run writes config.yaml and overrides.yaml itself, once, when it starts fresh:
            # Hydra's .hydra/ would be rewritten by every resumed or refused attempt
            "output_subdir": None,
        }
    )
    algorithm: Any = MISSING  # Any: each option keeps its own dataclass
    model: Any = MISSING
    data: DataConfig = MISSING
    scoping: ScopingConfig = MISSING
    cluster: ClusterConfig = MISSING
    logger: LoggerConfig = MISSING
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    seed: int = 0
    deterministic: bool = False  # torch.use_deterministic_algorithms: bitwise-reproducible runs
    epochs: float = 20.0  # minibatches per replica = epochs x (training set / batch size)
    max_steps: int | None = None  # when set, replaces epochs (minibatches per replica)
    eval_every: float = 1.0  # epochs between evaluations of the reference
    # constant, or cosine: lr and inner_lr annealed from their values to 0 over the run
    lr_schedule: str = "constant"
    progress: bool = True

    def __post_init__(self) -> None:
        _require(self.epochs > 0, "epochs", self.epochs, "must be > 0")
        if self.max_steps is not None:
            _require(self.max_steps >= 1, "max_steps", self.max_steps, "must be >= 1")
        _require(self.eval_every > 0, "eval_every", self.eval_every, "must be > 0")
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
            self.lr_schedule in LR_SCHEDULES,
            "lr_schedule",
            self.lr_schedule,
            f"choose one of {', '.join(LR_SCHEDULES)}",
        )

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
    },
    "model": {"cnn1d": CNN1DConfig, "mlp": MLPConfig, "lenet": LeNetConfig},
    "data": {
        "mnist1d": DataConfig(name="mnist1d"),
        "digits": DataConfig(name="digits", batch_size=32),
        "mnist": DataConfig(name="mnist", batch_size=128),
        "cifar10": DataConfig(name="cifar10", batch_size=128),
    },
    "scoping": {
        "exponential": ScopingConfig,
        "constant": ScopingConfig(
            name="constant", gamma_rate=0.0, gamma_max=math.inf, rho_rate=0.0, rho_max=math.inf
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


def register_configs() -> None:
    store = ConfigStore.instance()
    store.store(name="config", node=Config)
    for group, options in GROUPS.items():
        for name, node in options.items():
            store.store(group=group, name=name, node=node)
