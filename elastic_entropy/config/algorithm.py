"""The ``algorithm/`` group (keys are the optimizer's argument names) and ``scoping/``, the
schedule of the couplings."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any, ClassVar

from omegaconf import MISSING

from elastic_entropy.config._checks import _non_negative, _require
from elastic_entropy.defaults import NUM_INNER_STEPS

# how the replicas start: each from its own random initialisation (the authors': n models, or seed
# 42 + rank), keyed by its global index so that any layout gives the same bits; or all from one
REPLICA_INITS = ("independent", "shared")
# the unit in which scoping's null rate grows the couplings by about e^0.5 (scoping.py)
RATE_PERIODS = ("nb_outer_steps", "pass")
# Entropy-SGD's update: Parle's inner loop with rho = 0, or the Entropy-SGD authors' own
ENTROPY_SGD_VARIANTS = ("parle", "iclr2017")
# the inner loop's step: Nesterov SGD, or AdamW (Entropy-Adam, DiLoCo)
INNER_OPTIMIZERS = ("sgd", "adamw")


def _check_adam(config: Any) -> None:
    """``betas`` and ``eps`` of an AdamW step, and which inner step it is."""
    _require(
        len(config.betas) == 2 and all(0.0 <= b < 1.0 for b in config.betas),
        "algorithm.betas",
        list(config.betas),
        "needs two numbers in [0, 1)",
    )
    _require(config.eps > 0.0, "algorithm.eps", config.eps, "must be > 0")
    _require(
        config.inner_optimizer in INNER_OPTIMIZERS,
        "algorithm.inner_optimizer",
        config.inner_optimizer,
        f"choose one of {', '.join(INNER_OPTIMIZERS)}",
    )


def _adam_kwargs(kwargs: dict[str, Any]) -> dict[str, Any]:
    return {**kwargs, "betas": tuple(kwargs["betas"])}  # YAML lists, torch's tuples


@dataclass
class AlgorithmConfig:
    name: str = MISSING
    lr: float = 0.1
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 0.0
    replica_init: str = "independent"  # one of REPLICA_INITS; read by the run, not the optimizer
    # each update as one compiled pass over the flat buffers (optim.fused): null, on a GPU with
    # Triton; true, anywhere (a CPU too); false, the eager reference steps
    fused: bool | None = None
    # replicas per process when cluster.replicas_per_process is left unset
    DEFAULT_REPLICAS: ClassVar[int] = 1
    # the keys that are not the optimizer's arguments
    RUN_KEYS: ClassVar[tuple[str, ...]] = ("name", "replica_init")
    # whether the optimizer has fused steps (the SGD family's; AdamW's steps are eager)
    HAS_FUSED_STEP: ClassVar[bool] = True

    def __post_init__(self) -> None:
        _non_negative("algorithm.lr", self.lr)
        _require(
            0.0 <= self.momentum < 1.0, "algorithm.momentum", self.momentum, "must be in [0, 1)"
        )
        _non_negative("algorithm.weight_decay", self.weight_decay)
        _require(
            self.replica_init in REPLICA_INITS,
            "algorithm.replica_init",
            self.replica_init,
            f"choose one of {', '.join(REPLICA_INITS)}",
        )
        _require(
            self.HAS_FUSED_STEP or self.fused is not True,
            "algorithm.fused",
            self.fused,
            f"algorithm={self.name} has no fused step (its AdamW steps are eager); leave it null",
        )

    def steps_per_exchange(self) -> int:
        """Minibatches per outer step (one exchange between replicas): 1 without an inner loop."""
        return max(1, getattr(self, "num_inner_steps", 1))

    def optimizer_kwargs(self) -> dict[str, Any]:
        """Everything but ``RUN_KEYS``: the keys are the optimizer's argument names."""
        run_keys = self.RUN_KEYS if self.HAS_FUSED_STEP else (*self.RUN_KEYS, "fused")
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name not in run_keys}


@dataclass
class _InnerLoopConfig(AlgorithmConfig):
    inner_lr: float | None = None  # None: the same as lr
    num_inner_steps: int = NUM_INNER_STEPS
    gamma: float = 0.03
    alpha: float = 0.75
    noise: float = 0.0
    # sgd: the inner loop's Nesterov step (momentum); adamw: Entropy-Adam, the coupling
    # gamma (y - x) added to the gradient before Adam's moments (betas, eps)
    inner_optimizer: str = "sgd"
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    eps: float = 1e-8

    def optimizer_kwargs(self) -> dict[str, Any]:
        return _adam_kwargs(super().optimizer_kwargs())

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_adam(self)
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
    # parle: Parle's inner loop with rho = 0; iclr2017: the Entropy-SGD authors' update (inner
    # momentum reset every outer step, coupling and noise added after it, weight decay outside too)
    variant: str = "parle"

    def __post_init__(self) -> None:
        super().__post_init__()
        _require(
            self.variant in ENTROPY_SGD_VARIANTS,
            "algorithm.variant",
            self.variant,
            f"choose one of {', '.join(ENTROPY_SGD_VARIANTS)}",
        )
        _require(
            not (self.variant == "iclr2017" and self.inner_optimizer == "adamw"),
            "algorithm.inner_optimizer",
            self.inner_optimizer,
            "variant=iclr2017 is the authors' SGD inner loop; use variant=parle for Entropy-Adam",
        )


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


def _shared_only(config: AlgorithmConfig) -> None:
    """Replicas that take the same steps must start as copies of one another."""
    _require(
        config.replica_init == "shared",
        "algorithm.replica_init",
        config.replica_init,
        f"algorithm={config.name} keeps its replicas copies of one another: they start from one "
        "initialisation, algorithm.replica_init=shared",
    )


@dataclass
class DataParallelSGDConfig(AlgorithmConfig):
    """The baseline: every replica's gradient averaged every minibatch (batch = n x B)."""

    name: str = "dp_sgd"
    replica_init: str = "shared"
    DEFAULT_REPLICAS: ClassVar[int] = 4

    def __post_init__(self) -> None:
        super().__post_init__()
        _shared_only(self)


@dataclass
class DDPConfig(AlgorithmConfig):
    """torch's DistributedDataParallel + SGD: one model per process, gradients all-reduced in
    backward (start N processes with torchrun for N workers)."""

    name: str = "ddp"
    replica_init: str = "shared"

    def __post_init__(self) -> None:
        super().__post_init__()
        _shared_only(self)


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
class AdamWConfig(AlgorithmConfig):
    """AdamW on the same machinery: the baseline of Entropy-Adam and DiLoCo."""

    name: str = "adamw"
    lr: float = 1e-3
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    eps: float = 1e-8
    inner_optimizer: str = "adamw"  # what the step is (not an argument of the optimizer)
    RUN_KEYS: ClassVar[tuple[str, ...]] = (
        "name", "replica_init", "momentum", "nesterov", "inner_optimizer",
    )  # fmt: skip
    HAS_FUSED_STEP: ClassVar[bool] = False

    def optimizer_kwargs(self) -> dict[str, Any]:
        return _adam_kwargs(super().optimizer_kwargs())

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_adam(self)
        _require(
            (self.momentum, self.nesterov) == (0.9, True) and self.inner_optimizer == "adamw",
            "algorithm.momentum",
            self.momentum,
            "algorithm=adamw has no momentum of its own: its moments' rates are algorithm.betas",
        )


@dataclass
class DataParallelAdamWConfig(AdamWConfig):
    """Data-parallel AdamW: every replica's gradient averaged every minibatch (DiLoCo's
    baseline)."""

    name: str = "dp_adamw"
    replica_init: str = "shared"
    DEFAULT_REPLICAS: ClassVar[int] = 4

    def __post_init__(self) -> None:
        super().__post_init__()
        _shared_only(self)


@dataclass
class DiLoCoConfig(AlgorithmConfig):
    """DiLoCo: H = num_inner_steps AdamW steps per replica alone, then an outer Nesterov step
    (lr, momentum) on x - mean_a y^a, the one exchange; the replicas start as copies."""

    name: str = "diloco"
    lr: float = 0.7  # the outer step's, as the paper's
    momentum: float = 0.9
    replica_init: str = "shared"
    num_inner_steps: int = 50
    inner_lr: float = 1e-3
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    eps: float = 1e-8
    inner_optimizer: str = "adamw"  # sgd: a plain SGD inner step (the parity corners)
    DEFAULT_REPLICAS: ClassVar[int] = 4
    HAS_FUSED_STEP: ClassVar[bool] = False

    def optimizer_kwargs(self) -> dict[str, Any]:
        return _adam_kwargs(super().optimizer_kwargs())

    def __post_init__(self) -> None:
        super().__post_init__()
        _shared_only(self)
        _check_adam(self)
        _non_negative("algorithm.inner_lr", self.inner_lr)
        _require(
            self.num_inner_steps >= 1,
            "algorithm.num_inner_steps",
            self.num_inner_steps,
            "must be >= 1 (DiLoCo's H: the steps between exchanges)",
        )


@dataclass
class ScopingConfig:
    """``coupling_t = min(initial (1 + rate)^t, max)`` per outer step ``t``. ``rate: null`` grows
    the coupling by about ``e^0.5`` per ``rate_period``: ``nb_outer_steps`` is the authors' rate
    ``0.5 / nb``, ``nb`` the minibatches in one pass over a replica's own data (its fraction or
    shard), i.e. ``e^0.5`` per ``L`` passes; ``pass`` is ``0.5 / (passes' minibatches // L)``,
    ``e^0.5`` per pass over the training set, ``L`` times faster: what runs made before this key
    ran."""

    name: str = "exponential"
    gamma_rate: float | None = None
    gamma_max: float = 1.0
    rho_rate: float | None = None
    rho_max: float = 10.0
    rate_period: str = "nb_outer_steps"
    UNBOUNDED: ClassVar[tuple[str, ...]] = ("gamma_max", "rho_max")  # inf: no cap

    def __post_init__(self) -> None:
        _require(
            self.rate_period in RATE_PERIODS,
            "scoping.rate_period",
            self.rate_period,
            f"choose one of {', '.join(RATE_PERIODS)}",
        )
        for key in ("gamma_rate", "rho_rate"):
            value = getattr(self, key)
            if value is not None:
                _non_negative(f"scoping.{key}", value)
        for key in ("gamma_max", "rho_max"):
            value = getattr(self, key)
            _require(value >= 0.0, f"scoping.{key}", value, "must be >= 0 (inf for no cap)")
