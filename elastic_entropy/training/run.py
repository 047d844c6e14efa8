"""The run: everything built once from the config (immutable afterwards), its plan, and the
loop's counters, the one small object that changes as it trains.

Replica ``a`` of process ``rank`` is the global replica ``rank * replicas_per_process + a``; its
data order, dropout masks and Langevin noise come from streams keyed by that index, so a job
gives the same reference in any layout.
"""

from __future__ import annotations

import copy
import math
import os
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
from torch import Tensor, nn

from elastic_entropy import footprint
from elastic_entropy.augment import Augmentation, augmentation_seeds
from elastic_entropy.comm import Communicator, make_communicator, wrap_data_parallel
from elastic_entropy.config import Config, TargetModelConfig
from elastic_entropy.data import DataSplits, ReplicaSampler, minibatches_per_pass
from elastic_entropy.distributed import DistInfo, broadcast_object, seed_everything
from elastic_entropy.loaders import (
    DatasetSplits,
)
from elastic_entropy.loggers import RunLogger
from elastic_entropy.models import build_model, check_task
from elastic_entropy.optim import Parle
from elastic_entropy.targets import (
    build_target_model,
    check_output,
)
from elastic_entropy.training.algorithms import ALGORITHMS, build_optimizer
from elastic_entropy.training.checkpointer import Checkpointer, Each, ProcessRandomness
from elastic_entropy.training.forward import check_layout, with_compile, with_layout
from elastic_entropy.training.graphs import GraphedPasses
from elastic_entropy.training.inputs import batch_source, build_data, graphed_for
from elastic_entropy.training.loss_scale import LossScale
from elastic_entropy.training.passes import (
    PlainPasses,
    ReplicaRandomness,
    has_dropout,
    with_precision,
)
from elastic_entropy.training.run_lock import RunDirBusy, RunLock


@dataclass(frozen=True)
class Plan:
    """How long the run is, in minibatches per replica, and how often it exchanges."""

    steps_per_epoch: int
    total_steps: int
    eval_interval: int
    steps_per_exchange: int  # minibatches per outer step
    outer_steps_per_epoch: int  # outer steps per pass (steps_per_epoch // steps_per_exchange)
    gradient_bytes: int = 0  # one replica's gradient: what data-parallel SGD sends per step
    nb: int = 1  # minibatches in one pass over a replica's own data (its fraction or shard)
    # minibatches in one epoch of cfg.epoch_unit: what epochs, eval_every and the lr schedule count
    steps_per_epoch_unit: int = 1
    rate_period: int = 1  # outer steps over which a null scoping rate grows by e^0.5


def make_plan(cfg: Config, num_train: int, num_replicas: int | None = None) -> Plan:
    """The plan of a job of ``num_replicas`` replicas (``None``: one process's) on ``num_train``
    samples. ``steps_per_epoch`` is a pass over the training set (what metrics and results
    count epochs in); ``nb`` is a pass over one replica's own data, the authors' unit."""
    steps_per_epoch = max(1, num_train // cfg.data.batch_size)
    nb = minibatches_per_pass(
        num_train,
        cfg.data.batch_size,
        num_replicas=cfg.replicas_per_process if num_replicas is None else num_replicas,
        policy=cfg.data.policy,
        frac=cfg.data.frac,
    )
    period = cfg.algorithm.steps_per_exchange()
    outer_steps_per_epoch = max(1, steps_per_epoch // period)
    # the authors' epoch: nb outer steps of L minibatches each (L passes over a replica's data)
    unit = steps_per_epoch if cfg.epoch_unit == "pass" else nb * period
    wanted = cfg.max_steps if cfg.max_steps is not None else math.ceil(cfg.epochs * unit)
    # end on an outer-step boundary, where the live parameters are the anchors
    total = math.ceil(wanted / period) * period
    return Plan(
        steps_per_epoch=steps_per_epoch,
        total_steps=total,
        eval_interval=max(1, round(cfg.eval_every * unit)),
        steps_per_exchange=period,
        outer_steps_per_epoch=outer_steps_per_epoch,
        nb=nb,
        steps_per_epoch_unit=unit,
        rate_period=nb if cfg.scoping.rate_period == "nb_outer_steps" else outer_steps_per_epoch,
    )


@dataclass
class Counters:
    """Where the loop is: the minibatches done, the training time, and the replicas' losses and
    accuracies (``[2, replicas]`` per minibatch) since the last metrics record."""

    device: torch.device
    step: int = 0
    window: list[Tensor] = field(default_factory=list)
    wall_s_before: float = 0.0  # training time of earlier attempts
    _started: float = field(default_factory=time.perf_counter)

    def start_clock(self) -> None:
        self._started = time.perf_counter() - self.wall_s_before

    @property
    def wall_s(self) -> float:
        """Training time so far, earlier attempts included."""
        return time.perf_counter() - self._started

    def state_dict(self) -> dict[str, object]:
        return {
            "step": self.step,
            "wall_s": self.wall_s,
            "window": [t.cpu() for t in self.window],
        }

    def load_state_dict(self, state: dict[str, object]) -> None:
        self.step = int(state["step"])  # type: ignore[call-overload]
        self.wall_s_before = float(state["wall_s"])  # type: ignore[arg-type]
        self.window = [t.to(self.device) for t in state["window"]]  # type: ignore[attr-defined]


@dataclass(frozen=True)
class Run:
    cfg: Config
    info: DistInfo
    run_dir: Path
    data: DataSplits | DatasetSplits  # held as tensors, or read by loaders
    models: list[nn.Module]
    reference_model: nn.Module
    optimizer: Parle
    comm: Communicator
    samplers: list[ReplicaSampler]
    randomness: ReplicaRandomness
    plan: Plan
    metrics: RunLogger
    counters: Counters
    # the replicas' forward+backward: one after another, or from a CUDA graph
    passes: PlainPasses
    checkpointer: Checkpointer
    graphed: GraphedPasses | None = None  # cluster.cuda_graphs, when taken
    loss_scale: LossScale | None = None  # precision=fp16
    overrides: tuple[str, ...] = ()  # the command line, as Hydra parsed it

    @property
    def replicas_per_process(self) -> int:
        return len(self.models)

    def close(self) -> None:
        """Stop the data's loader workers, if any (the loader path)."""
        self.passes.close()
        self.data.close()


def check_run_dir(run_dir: Path, cfg_resume: bool = True) -> RunLock | str:
    """Rank 0's claim on ``run_dir``: its lock, taken before anything is written there, or why
    it cannot take this run."""
    finished = (
        f"run directory {run_dir} already holds a finished run (results.json); "
        "choose another hydra.run.dir"
    )
    # a finished run may go on with a larger budget (results.extend_finished decides, once the
    # plan is known); without resume it stays as it is
    can_extend = cfg_resume
    if (run_dir / "results.json").exists() and not can_extend:
        return finished
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        lock = RunLock.acquire(run_dir)
    except RunDirBusy as busy:
        return (
            f"run directory {run_dir} is in use by another run ({busy.holder}); wait for it to "
            "end, or choose another hydra.run.dir"
        )
    except OSError as error:
        return (
            f"cannot write to the run directory {run_dir} ({error.strerror}); "
            "choose a writable hydra.run.dir"
        )
    if (run_dir / "results.json").exists() and not can_extend:  # it finished while we looked
        lock.release()
        return finished
    return lock


def prepare_run_dir(
    run_dir: Path, info: DistInfo, can_resume: bool = True
) -> tuple[Path, RunLock | None]:
    """Rank 0 decides, checks and locks the run directory; every rank gets its path or its
    error. The caller holds the lock (rank 0's; None elsewhere) until the run ends."""
    claim = check_run_dir(run_dir, can_resume) if info.is_main else None
    lock = claim if isinstance(claim, RunLock) else None
    problem = claim if isinstance(claim, str) else None
    run_dir_name, problem = broadcast_object((str(run_dir), problem), info)
    if problem is not None:
        if lock is not None:
            lock.release()
        raise ValueError(problem)
    return Path(run_dir_name), lock


def _set_determinism(cfg: Config) -> None:
    seed_everything(cfg.seed)
    if cfg.deterministic:
        # cuBLAS needs a fixed workspace to be deterministic; harmless on CPUs
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)


def _model(cfg: Config, data: DataSplits | DatasetSplits) -> nn.Module:
    """The network named by ``model`` (or your ``_target_``), checked on two samples."""
    if isinstance(cfg.model, TargetModelConfig):
        model = build_target_model(cfg.model.node(), data.input_shape, data.num_classes)
    else:
        check_task(cfg.model.name, cfg.data.name, is_text=bool(data.label_shape))
        options = cfg.model.model_kwargs()
        model = build_model(cfg.model.name, data.input_shape, data.num_classes, **options)
    check_output(model, data.head(2), data.num_classes, data.label_shape)
    return model


def init_seed(seed: int, global_replica: int) -> int:
    """The seed of global replica ``global_replica``'s own initialisation (replica_init=
    independent): a stream of its own, the same in any layout."""
    return seed * 1_000_003 + 41 + global_replica


def _replicas(cfg: Config, data: DataSplits, info: DistInfo) -> list[nn.Module]:
    """The replicas of this process: each from its own initialisation, seeded by its global
    index (``algorithm.replica_init=independent``, the authors'), or all from one (``shared``:
    the same seed on every rank). The global generators are left as one shared start leaves
    them, so that what is drawn after (data, dropout) does not depend on the choice."""
    per = cfg.replicas_per_process
    first = _model(cfg, data)
    # before the copies: a layout that cannot fit stops in one line, not in the OOM killer
    processes = int(os.environ.get("LOCAL_WORLD_SIZE", "1")) if info.device.type == "cpu" else 1
    footprint.check_fits(
        sum(p.numel() for p in first.parameters()),
        per,
        footprint.available_bytes(info.device),
        processes,
    )
    if cfg.algorithm.replica_init == "shared":
        first.to(info.device)
        return [first] + [copy.deepcopy(first) for _ in range(per - 1)]
    after_shared = torch.random.get_rng_state()
    models = []
    for a in range(per):
        torch.manual_seed(init_seed(cfg.seed, info.rank * per + a))
        models.append(_model(cfg, data).to(info.device))
    torch.random.set_rng_state(after_shared)
    return models


def _samplers(cfg: Config, num_train: int, offset: int, num_replicas: int) -> list[ReplicaSampler]:
    return [
        ReplicaSampler(
            num_train,
            cfg.data.batch_size,
            replica=offset + a,
            num_replicas=num_replicas,
            policy=cfg.data.policy,
            seed=cfg.seed,
            frac=cfg.data.frac,
        )
        for a in range(cfg.replicas_per_process)
    ]


def build_run(cfg: Config, info: DistInfo, run_dir: Path, overrides: tuple[str, ...] = ()) -> Run:
    _set_determinism(cfg)
    replicas = cfg.replicas_per_process
    data = build_data(cfg, info.device)
    plan = make_plan(cfg, data.num_train, replicas * info.world_size)
    models = _replicas(cfg, data, info)
    # the reference's container: evaluation.load_reference fills it with the optimizer's
    # reference, mean_a x^a (independent replicas have no one start to copy), before each use
    reference_model = copy.deepcopy(models[0])
    comm = make_communicator(
        info, replicas, cfg.cluster.processes_per_node, cfg.cluster.inter_node_period
    )
    optimizer = build_optimizer(cfg, models, comm, plan.rate_period)
    first = next(models[0].parameters())
    plan = replace(plan, gradient_bytes=optimizer.num_params_per_replica * first.element_size())
    offset = comm.replica_offset
    randomness = ReplicaRandomness(
        [cfg.seed * 1_000_003 + 17 + offset + a for a in range(replicas)],
        info.device,
        has_dropout(models[0]),
    )
    augmentation = Augmentation(
        augmentation_seeds(cfg.seed, range(offset, offset + replicas)),
        info.device,
        crop_padding=cfg.data.crop_padding,
        flip=cfg.data.flip,
    )
    augment = augmentation if augmentation.enabled else None
    forward_models = models
    is_wrapped = ALGORITHMS[cfg.algorithm.name].is_data_parallel_wrapped
    if is_wrapped:
        # after the optimizer has moved the parameters into its flat buffer: DDP keeps hooks on
        # the same parameter objects, and its averaged gradients land in the optimizer's views
        forward_models = [wrap_data_parallel(models[0], info, comm.stats)]
    check_layout(cfg.channels_last, data.input_shape)
    forward_models = with_precision(forward_models, cfg.precision)
    forward_models = with_compile(with_layout(forward_models, cfg.channels_last), cfg.compile)
    graphed = graphed_for(
        cfg,
        data,
        with_layout(with_precision(models, cfg.precision), cfg.channels_last),
        randomness.enabled or is_wrapped,
        augment,
    )
    samplers = _samplers(cfg, data.num_train, offset, replicas * info.world_size)
    metrics = RunLogger(cfg.logger, run_dir, info.is_main)
    counters = Counters(info.device)
    # what must survive a restart, each saving and restoring its own state
    components = {
        "models": nn.ModuleList(models),
        "optimizer": optimizer,
        "samplers": Each(samplers),
        "randomness": randomness,
        "augmentation": augmentation,
        "rng": ProcessRandomness(),
        "comm": comm.stats,
        "progress": counters,
        "logger": metrics,
    }
    loss_scale = LossScale(cfg.loss_scale) if cfg.precision == "fp16" else None
    if loss_scale is not None:
        components["loss_scale"] = loss_scale
    checkpointer = Checkpointer(
        run_dir,
        info,
        components,
        cfg=cfg,
        replicas_per_process=replicas,
        steps_per_exchange=plan.steps_per_exchange,
        total_steps=plan.total_steps,
        new_replicas_copy=ALGORITHMS[cfg.algorithm.name].replicas_are_copies,
    )
    source = batch_source(cfg, data, samplers, offset)
    return Run(
        cfg=cfg,
        info=info,
        run_dir=run_dir,
        data=data,
        models=models,
        reference_model=reference_model,
        optimizer=optimizer,
        comm=comm,
        samplers=samplers,
        randomness=randomness,
        plan=plan,
        metrics=metrics,
        counters=counters,
        passes=PlainPasses(forward_models, source, randomness, augment, loss_scale),
        checkpointer=checkpointer,
        graphed=graphed,
        loss_scale=loss_scale,
        overrides=overrides,
    )
