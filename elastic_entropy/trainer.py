"""The training loop: build the replicas, train, evaluate the reference, write the results.

One code path serves every algorithm (no branch on its name) and every layout: one process or
many, one replica per process or several. Replica ``a`` of process ``rank`` is the global replica
``rank * replicas_per_process + a``; its data order, dropout masks and Langevin noise come from
streams keyed by that index, so a job gives the same reference in any layout.
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import math
import os
import signal
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf
from torch import Tensor, nn

from elastic_entropy import checkpoint
from elastic_entropy.config import Config
from elastic_entropy.data import DataSplits, ReplicaSampler, load_dataset
from elastic_entropy.distributed import (
    DistInfo,
    any_rank,
    as_peer_lost,
    barrier,
    broadcast_object,
    gather_objects,
    init_distributed,
    make_communicator,
    seed_everything,
    teardown,
    wrap_data_parallel,
)
from elastic_entropy.graphs import GraphedPasses, cuda_graph_capture, forward_backward
from elastic_entropy.loggers import Progress, RunLogger
from elastic_entropy.models import build_model
from elastic_entropy.optim import (
    SGD,
    DataParallelSGD,
    ElasticSGD,
    EntropySGD,
    LocalSGD,
    Parle,
    SGDAfterDDP,
    replica_param_groups,
)
from elastic_entropy.scoping import Schedule, papers_rate

log = logging.getLogger(__name__)

ALGORITHMS: dict[str, type[Parle]] = {
    "parle": Parle,
    "entropy_sgd": EntropySGD,
    "elastic_sgd": ElasticSGD,
    "sgd": SGD,
    "dp_sgd": DataParallelSGD,
    "local_sgd": LocalSGD,
    "ddp": SGDAfterDDP,
}


# ---------------------------------------------------------------------------------- building
def build_optimizer(
    cfg: Config, models: list[nn.Module], comm: Any, outer_steps_per_epoch: int
) -> Parle:
    """The optimizer named by ``algorithm.name``, its couplings scoped by ``scoping``."""
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
        rate = papers_rate(outer_steps_per_epoch) if rate is None else rate
        kwargs[f"{coupling}_schedule"] = Schedule(initial, rate, cap)
    cls = ALGORITHMS[cfg.algorithm.name]
    if cls in (Parle, EntropySGD):
        kwargs["seed"] = cfg.seed
    params = replica_param_groups(m.parameters() for m in models)
    return cls(params, comm=comm, **kwargs)


def _has_dropout(model: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.dropout._DropoutNd) for m in model.modules())


class ReplicaRandomness:
    """Per-replica state of torch's default generator (dropout masks), swapped in around each
    replica's forward so that a replica's randomness does not depend on its neighbours."""

    def __init__(self, seeds: list[int], device: torch.device, enabled: bool) -> None:
        self.enabled = enabled
        self.device = device
        self.states: list[tuple[Tensor, Tensor | None]] = []
        if not enabled:
            return
        with torch.random.fork_rng(devices=self._cuda_devices()):
            for seed in seeds:
                torch.manual_seed(seed)
                self.states.append(self._get())

    def _cuda_devices(self) -> list[int]:
        return [self.device.index or 0] if self.device.type == "cuda" else []

    def _get(self) -> tuple[Tensor, Tensor | None]:
        cuda = torch.cuda.get_rng_state(self.device) if self.device.type == "cuda" else None
        return torch.get_rng_state(), cuda

    def _set(self, state: tuple[Tensor, Tensor | None]) -> None:
        torch.set_rng_state(state[0])
        if state[1] is not None:
            torch.cuda.set_rng_state(state[1], self.device)

    def state_dict(self) -> list[list[Tensor | None]]:
        return [list(state) for state in self.states]

    def load_state_dict(self, states: list[list[Tensor | None]]) -> None:
        if len(states) != len(self.states):
            raise ValueError("replica randomness saved for another number of replicas")
        self.states = [(cpu, cuda) for cpu, cuda in states]

    @contextlib.contextmanager
    def use(self, replica: int) -> Iterator[None]:
        if not self.enabled:
            yield
            return
        saved = self._get()
        self._set(self.states[replica])
        try:
            yield
        finally:
            self.states[replica] = self._get()
            self._set(saved)


@dataclass
class Plan:
    """How long the run is, in minibatches per replica."""

    steps_per_epoch: int
    total_steps: int
    eval_interval: int
    outer_steps_per_epoch: int


def make_plan(cfg: Config, num_train: int) -> Plan:
    steps_per_epoch = max(1, num_train // cfg.data.batch_size)
    period = cfg.algorithm.steps_per_exchange()
    wanted = cfg.max_steps if cfg.max_steps is not None else math.ceil(cfg.epochs * steps_per_epoch)
    # end on an outer-step boundary, where the live parameters are the anchors
    total = math.ceil(wanted / period) * period
    return Plan(
        steps_per_epoch=steps_per_epoch,
        total_steps=total,
        eval_interval=max(1, round(cfg.eval_every * steps_per_epoch)),
        outer_steps_per_epoch=max(1, steps_per_epoch // period),
    )


# ---------------------------------------------------------------------------------- evaluation
@torch.no_grad()
def evaluate(model: nn.Module, x: Tensor, y: Tensor, batch_size: int = 1024) -> dict[str, float]:
    was_training = model.training
    model.eval()
    loss_sum, correct = 0.0, 0
    for start in range(0, len(y), batch_size):
        out = model(x[start : start + batch_size])
        target = y[start : start + batch_size]
        loss_sum += nn.functional.cross_entropy(out, target, reduction="sum").item()
        correct += (out.argmax(dim=1) == target).sum().item()
    model.train(was_training)
    return {"loss": loss_sum / len(y), "acc": correct / len(y)}


@torch.no_grad()
def recompute_batchnorm(model: nn.Module, x: Tensor, batch_size: int = 1024) -> None:
    """The papers' dry feed: fresh BatchNorm statistics for averaged weights, dropout off."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not norms:
        return
    momenta = {}
    for m in norms:
        m.reset_running_stats()
        momenta[m] = m.momentum
        m.momentum = None  # a cumulative average over the whole pass
    model.train()
    for m in model.modules():
        if isinstance(m, nn.modules.dropout._DropoutNd):
            m.eval()
    for start in range(0, len(x), batch_size):
        model(x[start : start + batch_size])
    for m, momentum in momenta.items():
        m.momentum = momentum
    model.eval()


def load_reference(model: nn.Module, optimizer: Parle, train_x: Tensor) -> nn.Module:
    """Copy the reference (a collective call) into ``model`` and refresh its BatchNorm."""
    with torch.no_grad():
        for p, ref in zip(model.parameters(), optimizer.reference()):
            p.copy_(ref)
    recompute_batchnorm(model, train_x)
    return model


# ---------------------------------------------------------------------------------- the run
@dataclass
class Run:
    cfg: Config
    info: DistInfo
    run_dir: Path
    data: DataSplits
    models: list[nn.Module]
    reference_model: nn.Module
    optimizer: Parle
    samplers: list[ReplicaSampler]
    randomness: ReplicaRandomness
    plan: Plan
    metrics: RunLogger
    overrides: tuple[str, ...] = ()  # the command line, as Hydra parsed it
    # what the forward pass runs: the models, or torch's DistributedDataParallel around them
    wrapped: list[nn.Module] | None = None
    # the replicas' forward+backward from a CUDA graph (cluster.cuda_graphs), or None: eagerly
    graphed: GraphedPasses | None = None

    @property
    def replicas_per_process(self) -> int:
        return len(self.models)

    @property
    def forward_models(self) -> list[nn.Module]:
        return self.wrapped if self.wrapped is not None else self.models


def _check_run_dir(run_dir: Path) -> str | None:
    """Why ``run_dir`` cannot take this run, or None."""
    if (run_dir / "results.json").exists():
        return (
            f"run directory {run_dir} already holds a finished run (results.json); "
            "choose another hydra.run.dir"
        )
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        probe = run_dir / ".write-test"
        probe.write_text("")
        probe.unlink()
    except OSError as error:
        return (
            f"cannot write to the run directory {run_dir} ({error.strerror}); "
            "choose a writable hydra.run.dir"
        )
    return None


def _prepare_run_dir(run_dir: Path, info: DistInfo) -> Path:
    """Rank 0 decides and checks the run directory; every rank gets its path or its error."""
    problem = _check_run_dir(run_dir) if info.is_main else None
    run_dir_name, problem = broadcast_object((str(run_dir), problem), info)
    if problem is not None:
        raise ValueError(problem)
    return Path(run_dir_name)


def build_run(cfg: Config, info: DistInfo, run_dir: Path) -> Run:
    seed_everything(cfg.seed)
    if cfg.deterministic:
        # cuBLAS needs a fixed workspace to be deterministic; harmless on CPUs
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
    replicas = cfg.replicas_per_process
    num_replicas = replicas * info.world_size
    data = load_dataset(
        cfg.data.name,
        cfg.data.root,
        cfg.data.seed,
        cfg.data.validation_fraction,
        cfg.data.train_fraction,
    ).to(info.device)
    plan = make_plan(cfg, len(data.y_train))
    # one initialisation (same seed on every rank) shared by every replica
    first = build_model(
        cfg.model.name, data.input_shape, data.num_classes, **cfg.model.model_kwargs()
    )
    first.to(info.device)
    models = [first] + [copy.deepcopy(first) for _ in range(replicas - 1)]
    reference_model = copy.deepcopy(first)
    comm = make_communicator(
        info, replicas, cfg.cluster.processes_per_node, cfg.cluster.inter_node_period
    )
    optimizer = build_optimizer(cfg, models, comm, plan.outer_steps_per_epoch)
    offset = comm.replica_offset
    samplers = [
        ReplicaSampler(
            len(data.y_train),
            cfg.data.batch_size,
            replica=offset + a,
            num_replicas=num_replicas,
            policy=cfg.data.policy,
            seed=cfg.seed,
        )
        for a in range(replicas)
    ]
    randomness = ReplicaRandomness(
        [cfg.seed * 1_000_003 + 17 + offset + a for a in range(replicas)],
        info.device,
        _has_dropout(first),
    )
    metrics = RunLogger(cfg.logger, run_dir, info.is_main)
    wrapped = None
    if cfg.algorithm.name == "ddp":
        # after the optimizer has moved the parameters into its flat buffer: DDP keeps hooks on
        # the same parameter objects, and its averaged gradients land in the optimizer's views
        wrapped = [wrap_data_parallel(models[0], info, comm.stats)]
    graphed = _graphed_passes(cfg, info, models, data, randomness.enabled or wrapped is not None)
    return Run(
        cfg,
        info,
        run_dir,
        data,
        models,
        reference_model,
        optimizer,
        samplers,
        randomness,
        plan,
        metrics,
        wrapped=wrapped,
        graphed=graphed,
    )


def _graphed_passes(
    cfg: Config, info: DistInfo, models: list[nn.Module], data: DataSplits, has_hooks: bool
) -> GraphedPasses | None:
    """The CUDA-graph path when ``cluster.cuda_graphs`` asks for it and it can be taken."""
    mode = cfg.cluster.cuda_graphs
    if mode == "off":
        return None
    why_not = None
    if info.device.type != "cuda":
        why_not = f"the device is {info.device.type}, not CUDA"
    elif has_hooks:
        # dropout swaps each replica's random stream around its forward, DDP all-reduces in
        # backward hooks: neither can live inside a graph
        why_not = "the model has dropout or runs under DistributedDataParallel"
    if why_not is None:
        capture = cuda_graph_capture(info.device)
        batch = cfg.data.batch_size
        strict = mode == "on"
        return GraphedPasses(
            models, data.x_train, data.y_train, batch, capture=capture, strict=strict
        )
    if mode == "on":
        raise ValueError(
            f"Invalid cluster.cuda_graphs: 'on' ({why_not}); use cluster.cuda_graphs=auto or off"
        )
    return None


def _plain_passes(run: Run, indices: list[Tensor]) -> Tensor:
    stats = []
    for a, model in enumerate(run.forward_models):
        x, y = run.data.x_train[indices[a]], run.data.y_train[indices[a]]
        with run.randomness.use(a):  # dropout masks are drawn in forward; backward draws none
            stats.append(forward_backward(model, x, y))
    return torch.stack(stats, dim=1)


def train_step(run: Run) -> Tensor:
    """One minibatch for every replica of this process, then one optimizer step.

    Returns each replica's minibatch loss and accuracy, ``[2, replicas]``, left on the device so
    that nothing waits for them until a metrics record is written.
    """
    _schedule_learning_rates(run)
    indices = [sampler.next() for sampler in run.samplers]
    if run.graphed is not None:
        stats = run.graphed(indices)
    else:
        stats = _plain_passes(run, indices)
    run.optimizer.step()
    run.optimizer.zero_grad()
    return stats


def lr_factor(schedule: str, step: int, total_steps: int) -> float:
    """The multiplier of the learning rates at minibatch ``step`` (0-based) of ``total_steps``."""
    if schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * step / total_steps))
    return 1.0


def _schedule_learning_rates(run: Run) -> None:
    """Set lr and inner_lr for the coming step: a function of the step alone, so that a resumed
    run takes the same rates."""
    if run.cfg.lr_schedule == "constant":
        return
    factor = lr_factor(run.cfg.lr_schedule, run.optimizer.num_steps, run.plan.total_steps)
    inner_lr = getattr(run.cfg.algorithm, "inner_lr", None)
    for group in run.optimizer.param_groups:
        group["lr"] = run.cfg.algorithm.lr * factor
        if inner_lr is not None:
            group["inner_lr"] = inner_lr * factor


def _dp_bytes(run: Run, steps: int) -> int:
    """What data-parallel SGD sends per worker: the whole gradient every minibatch."""
    opt = run.optimizer
    element = next(iter(opt.param_groups))["params"][0].element_size()
    return steps * opt.num_params_per_replica * element


_DIAGNOSTICS = ("distance", "elastic_force", "prox_force", "entropy_grad")


def _coupling_at(schedule: Schedule, t: int) -> float:
    at = copy.copy(schedule)
    at.t = max(t, 0)
    return at.value


def base_metrics(run: Run, step: int, wall_s: float, since: tuple[int, float]) -> dict[str, Any]:
    """What every record holds: where the run is, its couplings, rates and traffic so far.

    ``since`` is the (step, wall time) of the previous record: samples/s is over that interval.
    """
    opt, plan = run.optimizer, run.plan
    period = opt.steps_per_exchange
    # gamma_t and rho_t of the outer step that minibatch `step` belongs to (the schedules have
    # already moved on when it has just completed): the values the logged forces were scaled by
    t = opt.gamma_schedule.t - (1 if step % period == 0 else 0)
    group = opt.param_groups[0]
    samples = (step - since[0]) * run.cfg.data.batch_size * opt.num_replicas
    record = {
        "step": step,
        "epoch": step / plan.steps_per_epoch,
        "outer_step": step // period,
        "gamma": _coupling_at(opt.gamma_schedule, t),
        "rho": _coupling_at(opt.rho_schedule, t),
        "lr": group["lr"],
    }
    if opt.num_inner_steps > 0:
        record["inner_lr"] = group["inner_lr"] if group["inner_lr"] is not None else group["lr"]
    record |= {
        "bytes_per_replica": opt.comm.stats.bytes_per_replica,
        "dp_bytes_per_replica": _dp_bytes(run, step),
        "collectives": opt.comm.stats.num_collectives,
        "elapsed_s": wall_s,
        "samples_per_s": samples / max(wall_s - since[1], 1e-9),
    }
    return record


def _per_replica(name: str, values: list[float]) -> dict[str, float]:
    """``name`` (the mean over replicas) and ``name/replica_a`` for each replica of the job."""
    return {
        name: sum(values) / len(values),
        **{f"{name}/replica_{a}": v for a, v in enumerate(values)},
    }


def _loss_and_acc(entry: Tensor) -> Tensor:
    # a checkpoint written before accuracies were kept holds losses only
    return entry if entry.dim() == 2 else torch.stack([entry, torch.full_like(entry, math.nan)])


def train_metrics(run: Run, window: list[Tensor]) -> dict[str, Any]:
    """Replica losses and accuracies over ``window`` (the minibatches since the last record) and
    the couplings the optimizer measured in the outer step just done, gathered to rank 0."""
    stats = torch.stack([_loss_and_acc(t) for t in window]).mean(dim=0).cpu()
    diagnostics = run.optimizer.pop_diagnostics()
    if diagnostics is None:  # asked for before the outer step; absent only if it never ran
        diagnostics = {name: torch.full((stats.shape[1],), math.nan) for name in _DIAGNOSTICS}
    measured = torch.stack([diagnostics[name].double() for name in _DIAGNOSTICS])
    parts = gather_objects((stats, measured, run.optimizer.comm.stats.wait_s), run.info)
    if not run.info.is_main:
        return {}
    stats = torch.cat([p[0] for p in parts], dim=1).tolist()
    measured = torch.cat([p[1] for p in parts], dim=1).tolist()
    record = {**_per_replica("train_loss", stats[0]), **_per_replica("train_acc", stats[1])}
    for name, values in zip(_DIAGNOSTICS, measured):
        record |= _per_replica(name, values)
    record["comm_wait_s"] = sum(p[2] for p in parts) / len(parts)  # mean over processes
    return record


def _reference_distances(run: Run) -> list[float]:
    """``|x^a - xbar|`` for the replicas of this process, against the reference just loaded
    (its parameters are the all-reduced mean of the anchors: no further communication)."""
    reference = list(run.reference_model.parameters())
    distances = []
    with torch.no_grad():
        for a in range(run.replicas_per_process):
            square = sum(
                float((x - r).double().square().sum())
                for x, r in zip(run.optimizer.anchors(a), reference)
            )
            distances.append(math.sqrt(square))
    return distances


def eval_metrics(run: Run) -> dict[str, Any]:
    """The reference (a collective) on the test split, the validation split when there is one,
    and a fixed sample of the training set as large as the test split; each replica's distance
    to it and, with ``logger.eval_replicas``, each replica on the held-out split (validation,
    else test); gathered to rank 0."""
    data = run.data
    reference = load_reference(run.reference_model, run.optimizer, data.x_train)
    num_train = min(len(data.y_train), len(data.y_test))
    splits = {
        "test": (data.x_test, data.y_test),
        "train": (data.x_train[:num_train], data.y_train[:num_train]),
    }
    if data.x_val is not None and data.y_val is not None:
        splits["val"] = (data.x_val, data.y_val)
    record: dict[str, Any] = {}
    for split, (x, y) in splits.items():
        if run.info.is_main:  # the same reference on every rank: one of them evaluates it
            result = evaluate(reference, x, y)
            record[f"reference/{split}_loss"] = result["loss"]
            record[f"reference/{split}_acc"] = result["acc"]
    held = "val" if "val" in splits else "test"
    distances = _reference_distances(run)
    scores = (
        [evaluate(model, *splits[held]) for model in run.models]
        if run.cfg.logger.eval_replicas
        else []
    )
    parts = gather_objects((distances, scores), run.info)
    if not run.info.is_main:
        return {}
    record |= _per_replica("reference_distance", [d for part in parts for d in part[0]])
    scores = [score for part in parts for score in part[1]]
    if scores:
        record |= _per_replica(f"{held}_loss", [r["loss"] for r in scores])
        record |= _per_replica(f"{held}_acc", [r["acc"] for r in scores])
    return record


# ---------------------------------------------------------------------------------- checkpoints
@dataclass
class Progressed:
    """Where the loop is: what a checkpoint needs beyond the modules and the optimizer."""

    step: int = 0
    wall_s: float = 0.0  # training time before this process started (earlier attempts)
    # [loss/acc, replica] per minibatch since the last metrics record
    window: list[Tensor] = field(default_factory=list)


def _plain_config(cfg: Config) -> dict[str, Any]:
    return {k: v for k, v in asdict(cfg).items() if k not in ("defaults", "hydra")}


# keys that may change between an interrupted run and its resumption
_RESUMABLE_CHANGES = (
    "epochs",
    "max_steps",
    "progress",
    "eval_every",
    "checkpoint",
    "cluster.timeout_s",
    "cluster.cuda_graphs",  # how the passes are launched, not what they compute
    "logger",  # where metrics go, not what is trained
)


def _flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _config_changes(saved: dict[str, Any], current: dict[str, Any]) -> list[str]:
    old, new = _flatten(saved), _flatten(current)
    changes = []
    for key in sorted(set(old) | set(new)):
        if any(key == k or key.startswith(k + ".") for k in _RESUMABLE_CHANGES):
            continue
        if old.get(key) != new.get(key):
            changes.append(f"{key}={old.get(key)!r} there, {new.get(key)!r} here")
    return changes


def capture(run: Run, progressed: Progressed, wall_s: float) -> dict[str, Any]:
    opt = run.optimizer
    return {
        "format": checkpoint.FORMAT,
        "step": progressed.step,
        "rank": run.info.rank,
        "world_size": run.info.world_size,
        "replicas_per_process": run.replicas_per_process,
        "config": _plain_config(run.cfg),
        "models": [m.state_dict() for m in run.models],
        "optimizer": opt.state_dict(),
        "samplers": [s.state_dict() for s in run.samplers],
        "randomness": run.randomness.state_dict(),
        "rng": checkpoint.rng_state(),
        "comm": asdict(opt.comm.stats),
        "window": [t.cpu() for t in progressed.window],
        "wall_s": wall_s,
        # rank 0's: a resumed or requeued job continues the same wandb run
        "wandb_run_id": run.metrics.wandb_run_id,
    }


def save_checkpoint(run: Run, progressed: Progressed, wall_s: float) -> Path:
    """Every rank writes its file; rank 0 writes the manifest last, then prunes old ones."""
    directory = checkpoint.step_dir(run.run_dir, progressed.step)
    digest = checkpoint.save_rank(capture(run, progressed, wall_s), directory, run.info.rank)
    digests = gather_objects(digest, run.info)
    if run.info.is_main:
        checkpoint.write_manifest(
            directory,
            {
                "step": progressed.step,
                "world_size": run.info.world_size,
                "replicas_per_process": run.replicas_per_process,
                "sha256": digests,
            },
        )
        checkpoint.prune(run.run_dir, run.cfg.checkpoint.keep_last)
    barrier(run.info)
    return directory


def _check_compatible(
    run: Run, found: checkpoint.Found, saved_config: dict[str, Any]
) -> str | None:
    manifest = found.manifest
    layout = (manifest["world_size"], manifest["replicas_per_process"])
    here = (run.info.world_size, run.replicas_per_process)
    if layout != here:
        return (
            f"checkpoint {found.path} holds {layout[0] * layout[1]} replicas as {layout[0]} "
            f"process(es) x {layout[1]}, but this run has {here[0]} x {here[1]}; resume with the "
            "same torchrun --nproc-per-node and cluster.replicas_per_process, or choose another "
            "hydra.run.dir"
        )
    changes = _config_changes(saved_config, _plain_config(run.cfg))
    if changes:
        return (
            f"checkpoint {found.path} was made with another config ({'; '.join(changes[:4])}); "
            "resume with the same settings or choose another hydra.run.dir"
        )
    return None


def restore(run: Run) -> Progressed:
    """Resume from the run directory's newest checkpoint, if any (rank 0 decides for all)."""
    found = checkpoint.find_latest(run.run_dir) if run.info.is_main else None
    problem = None
    if found is not None:
        problem = _check_compatible(run, found, checkpoint.load_rank(found, 0)["config"])
    found, problem = broadcast_object((found, problem), run.info)
    if problem is not None:
        raise checkpoint.CheckpointError(problem)
    if found is None:
        return Progressed()
    state = checkpoint.load_rank(found, run.info.rank)
    try:
        for model, saved in zip(run.models, state["models"]):
            model.load_state_dict(saved)
        run.optimizer.load_state_dict(state["optimizer"])
    except (RuntimeError, ValueError) as error:
        raise checkpoint.CheckpointError(
            f"checkpoint {found.path} does not fit this model ({str(error).splitlines()[0]}); "
            "choose another hydra.run.dir"
        ) from error
    for sampler, saved in zip(run.samplers, state["samplers"]):
        sampler.load_state_dict(saved)
    run.randomness.load_state_dict(state["randomness"])
    checkpoint.set_rng_state(state["rng"])
    for name, value in state["comm"].items():
        setattr(run.optimizer.comm.stats, name, value)
    run.metrics.wandb_run_id = state.get("wandb_run_id")
    progressed = Progressed(
        step=state["step"],
        wall_s=state["wall_s"],
        window=[t.to(run.info.device) for t in state["window"]],
    )
    if run.info.is_main:
        for reason in found.skipped:
            log.warning("skipped checkpoint %s", reason)
        run.metrics.truncate_after(progressed.step)
        run.metrics.log({"event": "resume", "step": progressed.step, "checkpoint": str(found.path)})
        print(f"resumed from step {progressed.step} ({found.path})", flush=True)
    return progressed


class StopSignals:
    """SIGTERM / SIGUSR1 (preemption, the scheduler's warning) ask for a checkpoint and exit."""

    SIGNALS = (signal.SIGTERM, signal.SIGUSR1)

    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled
        self.received: int | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> StopSignals:
        if self.enabled and threading.current_thread() is threading.main_thread():
            for sig in self.SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if self.received is not None:
            # asked twice: stop now, the way the signal would have without us
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
        self.received = signum

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


class Preempted(Exception):
    """Raised after the checkpoint is written, to exit with EXIT_PREEMPTED."""


EXIT_PREEMPTED = 75  # EX_TEMPFAIL: torchrun restarts it, the sbatch script requeues it


def _should_stop(run: Run, stop: StopSignals) -> bool:
    """Any rank signalled? One tiny all-reduce, polled only at outer-step boundaries."""
    flag = torch.tensor([1.0 if stop.received is not None else 0.0], device=run.info.device)
    return any_rank(flag, run.info)


def save_config(run: Run) -> None:
    """``config.yaml`` (resolved, with the layout) and ``overrides.yaml`` of a fresh run."""
    resolved = OmegaConf.create(_plain_config(run.cfg))
    resolved.replicas_per_process = run.replicas_per_process
    resolved.processes = run.info.world_size
    OmegaConf.save(resolved, run.run_dir / "config.yaml")
    OmegaConf.save(OmegaConf.create(list(run.overrides)), run.run_dir / "overrides.yaml")


def _log_quarantine(run: Run) -> None:
    events = run.optimizer.quarantine_events
    if not events:
        return
    for event in events:
        run.metrics.log({"event": "quarantine", **event})
        if run.info.is_main:
            log.warning(
                "replica %d diverged (non-finite parameters) at step %d: left out of the mean "
                "and reset to the reference",
                event["replica"],
                event["step"],
            )
    events.clear()


def _logged_config(run: Run) -> dict[str, Any]:
    return {
        **_plain_config(run.cfg),
        "processes": run.info.world_size,
        "replicas_per_process": run.replicas_per_process,
        "num_replicas": run.optimizer.num_replicas,
    }


def log_record(
    run: Run,
    progressed: Progressed,
    wall_s: float,
    since: tuple[int, float],
    *,
    is_train: bool,
    is_eval: bool,
) -> dict[str, Any]:
    """One line of metrics.jsonl (and of TensorBoard, wandb): every rank takes part in the
    gathers and the reference's evaluation, rank 0 writes."""
    record = base_metrics(run, progressed.step, wall_s, since)
    if is_train:
        record |= train_metrics(run, progressed.window)
        progressed.window.clear()
    if is_eval:
        record |= eval_metrics(run)
    run.metrics.log(record)
    return record


def fit(run: Run, stop: StopSignals) -> float:
    """Train to ``plan.total_steps`` minibatches per replica; returns the training time.

    Metrics: every ``logger.every_outer_steps`` outer steps a record of the replicas (losses,
    distances, coupling forces) and of the run (couplings, rates, traffic), cheap enough to keep
    often; every ``eval_every`` epochs the reference's (and replicas') evaluation joins it.
    """
    plan, info, cfg = run.plan, run.info, run.cfg
    progressed = restore(run) if cfg.checkpoint.resume else Progressed()
    if progressed.step == 0:
        if info.is_main:
            save_config(run)
        run.metrics.truncate_after(0)  # lines of an attempt that died before any checkpoint
    run.metrics.start(progressed.step, _logged_config(run))
    period = run.optimizer.steps_per_exchange
    checkpoint_every = cfg.checkpoint.every_outer_steps * period
    log_every = cfg.logger.every_outer_steps * period
    desc = f"{cfg.algorithm.name} x{run.optimizer.num_replicas}"
    progress = Progress(
        plan.total_steps, progressed.step, cfg.progress and run.metrics.is_console, desc
    )
    shown: dict[str, float] = {}
    started = time.perf_counter() - progressed.wall_s
    since = (progressed.step, progressed.wall_s)
    try:
        for step in range(progressed.step + 1, plan.total_steps + 1):
            is_train = step % log_every == 0 or step == plan.total_steps
            if is_train:
                run.optimizer.request_diagnostics()  # measured in this step's outer step
            progressed.window.append(train_step(run))
            progressed.step = step
            _log_quarantine(run)
            is_eval = step % plan.eval_interval == 0 or step == plan.total_steps
            if is_train or is_eval:
                wall_s = time.perf_counter() - started
                record = log_record(
                    run, progressed, wall_s, since, is_train=is_train, is_eval=is_eval
                )
                since = (step, wall_s)
                for key, label in _SHOWN.items():
                    if key in record:
                        shown[label] = record[key]
            progress.update(1, **shown)
            if step % period == 0 and _should_stop(run, stop):
                save_checkpoint(run, progressed, time.perf_counter() - started)
                progress.close()
                run.metrics.exit_code = EXIT_PREEMPTED
                run.metrics.is_preempted = True
                raise Preempted(f"stopped by signal at step {step}; checkpoint written")
            if step % checkpoint_every == 0 or step == plan.total_steps:
                save_checkpoint(run, progressed, time.perf_counter() - started)
    except BaseException:
        if run.metrics.exit_code == 0:
            run.metrics.exit_code = 1  # wandb marks the run failed
        raise
    progress.close()
    return time.perf_counter() - started


# record keys on the progress bar, by their label there
_SHOWN = {
    "train_loss": "loss",
    "reference/test_acc": "ref_acc",
    "distance": "dist",
    "gamma": "gamma",
    "rho": "rho",
}


def finish(run: Run, wall_s: float) -> dict[str, Any]:
    """Final evaluation of the reference and of every replica; results on rank 0."""
    data, info = run.data, run.info
    load_reference(run.reference_model, run.optimizer, data.x_train)
    reference = {
        "test": evaluate(run.reference_model, data.x_test, data.y_test),
        "train": evaluate(run.reference_model, data.x_train, data.y_train),
    }
    if data.x_val is not None and data.y_val is not None:
        reference["val"] = evaluate(run.reference_model, data.x_val, data.y_val)
    local = [
        (run.optimizer.comm.replica_offset + a, evaluate(m, data.x_test, data.y_test)["acc"])
        for a, m in enumerate(run.models)
    ]
    replicas = [item for part in gather_objects(local, info) for item in part]
    opt = run.optimizer
    result = {
        "algorithm": run.cfg.algorithm.name,
        "model": run.cfg.model.name,
        "data": run.cfg.data.name,
        "num_replicas": opt.num_replicas,
        "processes": info.world_size,
        "replicas_per_process": run.replicas_per_process,
        "steps_per_replica": run.plan.total_steps,
        "epochs": run.plan.total_steps / run.plan.steps_per_epoch,
        "wall_s": wall_s,
        "cuda_graphs": run.graphed is not None and run.graphed.is_active,
        "reference": {
            "test_acc": reference["test"]["acc"],
            "test_loss": reference["test"]["loss"],
            "train_acc": reference["train"]["acc"],
            "train_loss": reference["train"]["loss"],
            **({"val_acc": reference["val"]["acc"]} if "val" in reference else {}),
        },
        "replicas": [{"replica": a, "test_acc": acc} for a, acc in replicas],
        "communication": {
            "collectives": opt.comm.stats.num_collectives,
            "bytes_per_replica": opt.comm.stats.bytes_per_replica,
            "dp_sgd_bytes_per_replica": _dp_bytes(run, run.plan.total_steps),
        },
        "run_dir": str(run.run_dir),
    }
    if info.is_main:
        torch.save(run.reference_model.state_dict(), run.run_dir / "reference.pt")
        _write_json(run.run_dir / "results.json", result)
        run.metrics.summary(_summary(result))
        if run.cfg.logger.plots:
            _plot(run.run_dir)
    return result


def _summary(result: dict[str, Any]) -> dict[str, float]:
    ref, comm = result["reference"], result["communication"]
    return {
        **{f"final/reference_{k}": v for k, v in ref.items()},
        **{f"final/replica_{r['replica']}_test_acc": r["test_acc"] for r in result["replicas"]},
        "final/bytes_per_replica": comm["bytes_per_replica"],
        "final/dp_sgd_bytes_per_replica": comm["dp_sgd_bytes_per_replica"],
        "final/wall_s": result["wall_s"],
    }


def _plot(run_dir: Path) -> None:
    """PNGs from metrics.jsonl; a finished run is never failed by its pictures."""
    from elastic_entropy.report import plot_run

    try:
        plot_run(run_dir)
    except Exception as error:
        log.warning(
            "plots were not drawn (%s); `elastic-entropy report %s` retries", error, run_dir
        )


def _write_json(path: Path, data: Any) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def _mb(n: float) -> str:
    return f"{n / 1e6:.2f} MB"


def format_table(result: dict[str, Any]) -> str:
    ref, comm = result["reference"], result["communication"]
    ratio = comm["bytes_per_replica"] / max(comm["dp_sgd_bytes_per_replica"], 1)
    lines = [
        f"{result['algorithm']} on {result['data']} ({result['model']}): "
        f"{result['num_replicas']} replicas = {result['processes']} process(es) x "
        f"{result['replicas_per_process']}, {result['steps_per_replica']} steps per replica "
        f"({result['epochs']:.1f} epochs) in {result['wall_s']:.1f} s",
        "",
        f"  {'model':<14}{'test acc':>10}",
        f"  {'reference':<14}{ref['test_acc']:>10.4f}   (train acc {ref['train_acc']:.4f})",
    ]
    lines += [
        f"  {'replica ' + str(r['replica']):<14}{r['test_acc']:>10.4f}" for r in result["replicas"]
    ]
    lines += [
        "",
        f"  communicated per replica: {_mb(comm['bytes_per_replica'])} in {comm['collectives']} "
        f"all-reduces; data-parallel SGD would send {_mb(comm['dp_sgd_bytes_per_replica'])} "
        f"(ratio {ratio:.3f})",
        f"  run directory: {result['run_dir']}",
    ]
    return "\n".join(lines)


def train(cfg: Config, run_dir: Path, overrides: tuple[str, ...] = ()) -> dict[str, Any]:
    """Set up the processes, train, evaluate, write the run directory, tear down."""
    info = init_distributed(cfg.cluster.backend, cfg.cluster.device, cfg.cluster.timeout_s)
    try:
        run_dir = _prepare_run_dir(run_dir, info)
        run = build_run(cfg, info, run_dir)
        run.overrides = overrides
        try:
            with StopSignals(cfg.checkpoint.on_signal) as stop:
                wall_s = fit(run, stop)
            result = finish(run, wall_s)
        finally:
            run.metrics.close()
        if info.is_main:
            print(format_table(result), flush=True)
    except BaseException as error:
        teardown(info, is_clean=False)
        lost = as_peer_lost(error, info, cfg.cluster.timeout_s)
        if lost is not None:
            raise lost from error
        raise
    teardown(info)
    return result
