"""One registry from an algorithm's config name to its optimizer and what it needs, so that
nothing else in the package branches on an algorithm's name."""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from elastic_entropy.comm import Communicator
from elastic_entropy.config import Config
from elastic_entropy.optim import (
    SGD,
    AdamW,
    DataParallelAdamW,
    DataParallelSGD,
    DiLoCo,
    ElasticSGD,
    EntropySGD,
    LocalSGD,
    Parle,
    SGDAfterDDP,
    replica_param_groups,
)
from elastic_entropy.scoping import Schedule, papers_rate


@dataclass(frozen=True)
class Algorithm:
    """An optimizer class and its needs beyond the config's keyword arguments."""

    optimizer: type[Parle]
    # the Langevin noise streams are seeded from the run's seed
    takes_seed: bool = False
    # the forward runs under torch's DistributedDataParallel, which averages the gradients
    is_data_parallel_wrapped: bool = False
    # every replica takes the same steps: a replica added on an elastic resume copies replica 0
    # (and they start as copies: their configs refuse algorithm.replica_init=independent)
    replicas_are_copies: bool = False


ALGORITHMS: dict[str, Algorithm] = {
    "parle": Algorithm(Parle, takes_seed=True),
    "entropy_sgd": Algorithm(EntropySGD, takes_seed=True),
    "elastic_sgd": Algorithm(ElasticSGD),
    "sgd": Algorithm(SGD),
    "dp_sgd": Algorithm(DataParallelSGD, replicas_are_copies=True),
    "local_sgd": Algorithm(LocalSGD),
    "ddp": Algorithm(SGDAfterDDP, is_data_parallel_wrapped=True, replicas_are_copies=True),
    "adamw": Algorithm(AdamW),
    "dp_adamw": Algorithm(DataParallelAdamW, replicas_are_copies=True),
    # the shared x is every replica's anchor; an added replica starts from it with zero moments
    "diloco": Algorithm(DiLoCo),
}


def scoped(cfg: Config, rate_period: int) -> dict[str, object]:
    """The optimizer's keyword arguments, its couplings replaced by ``scoping``'s schedules.

    A null rate is the authors' ``0.5 / rate_period`` per outer step: ``rate_period`` is ``nb``
    (minibatches in one pass over a replica's own data) under ``scoping.rate_period=
    nb_outer_steps``, and outer steps per pass under ``pass`` (see ``Plan.rate_period``)."""
    kwargs = cfg.algorithm.optimizer_kwargs()
    for coupling in ("gamma", "rho"):
        if coupling not in kwargs:
            continue
        rate = getattr(cfg.scoping, f"{coupling}_rate")
        cap = getattr(cfg.scoping, f"{coupling}_max")
        initial = kwargs.pop(coupling)
        if cap < initial:
            raise ValueError(
                f"scoping.{coupling}_max={cap} is below algorithm.{coupling}={initial}; "
                f"raise scoping.{coupling}_max or lower algorithm.{coupling}"
            )
        rate = papers_rate(rate_period) if rate is None else rate
        kwargs[f"{coupling}_schedule"] = Schedule(initial, rate, cap)
    return kwargs


def build_optimizer(
    cfg: Config, models: list[nn.Module], comm: Communicator, rate_period: int
) -> Parle:
    """The optimizer named by ``algorithm.name`` over the replicas ``models``."""
    algorithm = ALGORITHMS[cfg.algorithm.name]
    kwargs = scoped(cfg, rate_period)
    if algorithm.takes_seed:
        kwargs["seed"] = cfg.seed
    # replicas of their own initialisation are built so on every rank (run._replicas): the
    # optimizer must not overwrite them with the first process's
    kwargs["same_init"] = cfg.algorithm.replica_init == "shared"
    if "inner_lr" in kwargs:
        kwargs["inner_lr_follows_lr"] = cfg.lr_schedule.inner_lr == "follow"
    params = replica_param_groups(m.parameters() for m in models)
    return algorithm.optimizer(params, comm=comm, **kwargs)  # type: ignore[arg-type]
