"""The ``logger/`` group: where metrics go, and wandb's run settings."""

from __future__ import annotations

from dataclasses import dataclass, field

from elastic_entropy.config._checks import _require
from elastic_entropy.sink_checks import check_tensorboard, check_wandb

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
