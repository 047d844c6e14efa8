"""The checkpointer: built from a mapping of name to component, it decides when to save (every
``checkpoint.every_outer_steps`` outer steps, at the end, when a signal asks), what to keep
(``checkpoint.keep_last``), and restores every component when a run resumes.

A component is anything with ``state_dict()`` / ``load_state_dict()`` (:class:`Stateful`): the
optimizer, the samplers, the replicas' random streams, the communication counters, the loop's
counters, the logger (its wandb run id). The files themselves are written and verified by
:mod:`elastic_entropy.checkpoint` (atomic writes, a manifest of checksums).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any, Protocol

from elastic_entropy import checkpoint
from elastic_entropy.config import Config
from elastic_entropy.data import REDEALT_POLICIES
from elastic_entropy.distributed import DistInfo, barrier, broadcast_object, gather_objects
from elastic_entropy.training.relayout import PER_REPLICA, Change, Layout, relayout

log = logging.getLogger(__name__)


class Stateful(Protocol):
    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


class Each:
    """A list of components as one: saved in order, restored only into as many."""

    def __init__(self, items: Sequence[Stateful]) -> None:
        self.items = items

    def state_dict(self) -> dict[str, Any]:
        return {"items": [item.state_dict() for item in self.items]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        saved = state["items"]
        if len(saved) != len(self.items):
            raise ValueError(f"{len(saved)} saved for {len(self.items)} here")
        for item, one in zip(self.items, saved):
            item.load_state_dict(one)


class ProcessRandomness:
    """Python's, numpy's and torch's global generators."""

    def state_dict(self) -> dict[str, Any]:
        return checkpoint.rng_state()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        checkpoint.set_rng_state(state)


def plain_config(cfg: Config) -> dict[str, Any]:
    return {k: v for k, v in asdict(cfg).items() if k not in ("defaults", "hydra")}


# keys that may change between an interrupted run and its resumption
RESUMABLE_CHANGES = (
    "epochs",
    "max_steps",
    "progress",
    "eval_every",
    "checkpoint",
    "cluster.timeout_s",
    "cluster.cuda_graphs",  # how the passes are launched, not what they compute
    "cluster.threads",  # how many threads compute it, not what is trained
    "algorithm.fused",  # the same updates, compiled into one pass each (equal to rounding)
    # how the forward runs (the same function, another layout or compiled kernels)
    "channels_last",
    "compile",
    # how minibatches are read: both input paths give the same ones (see loaders)
    "data.pipeline",
    "data.num_workers",
    "data.pin_memory",
    "data.prefetch_factor",
    "data.persistent_workers",
    # the layout: a checkpoint resumes in another one (see relayout)
    "cluster.replicas_per_process",
    "cluster.processes_per_node",
    "logger",  # where metrics go, not what is trained
    # measured on the final reference, not trained: a run without it (an earlier version's
    # checkpoint too) resumes with it on, or off
    "flatness",
)


# components a checkpoint of an earlier version may lack (a run without them is the same run)
OPTIONAL = ("augmentation", "loss_scale")


def _flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


# keys added after checkpoints were first written, with the value that behaves as runs did
# before them: a checkpoint without the key was made with that value
ADDED_KEYS: dict[str, Any] = {
    "data.train": None,
    "data.val": None,
    "data.test": None,
    "data.num_classes": None,
    "data.crop_padding": 0,
    "data.flip": False,
    "lr_schedule.milestones": [],
    "lr_schedule.factors": [],
    "lr_schedule.warmup_epochs": 0.0,
    "precision": "fp32",
    "loss_scale": 65536.0,
    "channels_last": False,
    "data.seq_len": 64,
    # issue 16: the inner loop's step (earlier runs: Nesterov SGD)
    "algorithm.inner_optimizer": "sgd",
    "algorithm.betas": [0.9, 0.999],
    "algorithm.eps": 1e-8,
    # issue 15: earlier runs stepped eagerly (what null does on a CPU)
    "algorithm.fused": None,
    "compile": False,
    # the input path: earlier runs held their data as tensors (what auto does with theirs)
    "data.pipeline": "auto",
    "data.num_workers": 0,
    "data.pin_memory": True,
    "data.prefetch_factor": 2,
    "data.persistent_workers": True,
    # issue 14: the authors' schedules. Earlier runs started every replica from one
    # initialisation, grew the couplings by e^0.5 per pass, counted epochs in passes and scaled an
    # explicit inner_lr with lr; an Entropy-SGD run was Parle's inner loop
    "algorithm.replica_init": "shared",
    "algorithm.variant": "parle",
    "scoping.rate_period": "pass",
    "epoch_unit": "pass",
    "lr_schedule.inner_lr": "follow",
    "data.frac": None,
    # issue 15: torch's intra-op threads, which earlier runs left to torch (one per core)
    "cluster.threads": "auto",
}


def config_changes(saved: dict[str, Any], current: dict[str, Any]) -> list[str]:
    if isinstance(saved.get("lr_schedule"), str):  # a name, before it became a group
        saved = {**saved, "lr_schedule": {"name": saved["lr_schedule"]}}
    new = _flatten(current)
    # a key one algorithm's schema added (algorithm.variant) is no key of another's
    added = {key: value for key, value in ADDED_KEYS.items() if key in new}
    old = added | _flatten(saved)
    changes = []
    for key in sorted(set(old) | set(new)):
        if any(key == k or key.startswith(k + ".") for k in RESUMABLE_CHANGES):
            continue
        if old.get(key) != new.get(key):
            changes.append(f"{key}={old.get(key)!r} there, {new.get(key)!r} here")
    return changes


def _from_format_1(state: dict[str, Any]) -> dict[str, Any]:
    """A checkpoint written before components owned their state, in today's layout."""
    state = dict(state)
    state["models"] = {
        f"{a}.{key}": value
        for a, saved in enumerate(state["models"])
        for key, value in saved.items()
    }
    state["samplers"] = {"items": state["samplers"]}
    state["randomness"] = {"states": state["randomness"]}
    state["progress"] = {key: state.pop(key) for key in ("step", "wall_s", "window")}
    state["step"] = state["progress"]["step"]
    state["logger"] = {"wandb_run_id": state.pop("wandb_run_id", None)}
    return state


class Checkpointer:
    """Saves and restores ``components`` (name to :class:`Stateful`) in the run directory."""

    HEADER = ("format", "step", "rank", "world_size", "replicas_per_process", "config")

    def __init__(
        self,
        run_dir: Path,
        info: DistInfo,
        components: Mapping[str, Stateful],
        *,
        cfg: Config,
        replicas_per_process: int,
        steps_per_exchange: int,
        total_steps: int,
        new_replicas_copy: bool = False,
    ) -> None:
        clash = set(components) & set(self.HEADER)
        assert not clash, f"component names {clash} are the checkpoint's own keys"
        self.run_dir = run_dir
        self.info = info
        self.components = dict(components)
        self.config = plain_config(cfg)
        self.layout = (info.world_size, replicas_per_process)
        # an elastic resume: new replicas copy replica 0 (copies of one another) or start from
        # the reference; shards depend on the number of replicas
        self.new_replicas_copy = new_replicas_copy
        self.reshards = cfg.data.policy in REDEALT_POLICIES
        self.change: Change | None = None  # set when the checkpoint resumed had another layout
        self.is_resume = cfg.checkpoint.resume
        self.keep_last = cfg.checkpoint.keep_last
        self.every_steps = cfg.checkpoint.every_outer_steps * steps_per_exchange
        self.total_steps = total_steps

    # ------------------------------------------------------------------------------ saving
    def should_save(self, step: int, *, is_stopping: bool = False) -> bool:
        """The policy: every ``every_outer_steps`` outer steps, at the end, and on a signal."""
        return is_stopping or step % self.every_steps == 0 or step == self.total_steps

    def state_dict(self, step: int) -> dict[str, Any]:
        return {
            "format": checkpoint.FORMAT,
            "step": step,
            "rank": self.info.rank,
            "world_size": self.layout[0],
            "replicas_per_process": self.layout[1],
            "config": self.config,
            **{name: component.state_dict() for name, component in self.components.items()},
        }

    def save(self, step: int) -> Path:
        """Every rank writes its file; rank 0 writes the manifest last, then prunes old ones."""
        directory = checkpoint.step_dir(self.run_dir, step)
        digests = self._save_everywhere(directory, step)
        if self.info.is_main:
            checkpoint.write_manifest(
                directory,
                {
                    "step": step,
                    "world_size": self.layout[0],
                    "replicas_per_process": self.layout[1],
                    "sha256": digests,
                },
            )
            checkpoint.prune(self.run_dir, self.keep_last, directory)
        barrier(self.info)
        return directory

    def _save_everywhere(self, directory: Path, step: int) -> list[str]:
        """Every rank's file written, or the same error on every rank: a disk full under one
        rank stops all of them in one line, instead of leaving the others to wait for it
        until ``cluster.timeout_s``."""
        try:
            digest, problem = (
                checkpoint.save_rank(self.state_dict(step), directory, self.info.rank),
                None,
            )
        except checkpoint.DiskFullError as error:
            digest, problem = "", (error.errno, str(error))
        answers = gather_objects((digest, problem), self.info)
        for rank, (_, failed) in enumerate(answers):
            if failed is not None:
                errno, text = failed
                where = "" if rank == self.info.rank else f"rank {rank}: "
                raise checkpoint.DiskFullError(errno, where + text)
        return [digest for digest, _ in answers]

    # ------------------------------------------------------------------------------ restoring
    def _incompatibility(self, found: checkpoint.Found) -> str | None:
        changes = config_changes(checkpoint.load_rank(found, 0)["config"], self.config)
        # a group's option before the keys that came with it
        changes.sort(key=lambda change: not change.split("=", 1)[0].endswith(".name"))
        if changes:
            return (
                f"checkpoint {found.path} was made with another config ({'; '.join(changes[:4])});"
                " resume with the same settings or choose another hydra.run.dir"
            )
        return None

    def _load(self, found: checkpoint.Found, rank: int) -> dict[str, Any]:
        state = checkpoint.load_rank(found, rank)
        return _from_format_1(state) if state["format"] == 1 else state

    def _state_for_here(self, found: checkpoint.Found) -> dict[str, Any]:
        """This rank's state: its own file, or, when the layout changed, cut from all of them."""
        manifest = found.manifest
        old = Layout(manifest["world_size"], manifest["replicas_per_process"])
        new = Layout(*self.layout)
        if old == new:
            return self._load(found, self.info.rank)
        self.change = Change(old, new)
        fresh = {n: self.components[n].state_dict() for n in PER_REPLICA if n in self.components}
        return relayout(
            lambda rank: self._load(found, rank),
            self.change,
            self.info.rank,
            fresh,
            is_copy=self.new_replicas_copy,
            reshards=self.reshards,
        )

    def restore(self) -> checkpoint.Found | None:
        """Load the run directory's newest checkpoint into every component (rank 0 chooses it
        for all), or None for a fresh run. A checkpoint that does not fit is a CheckpointError."""
        if not self.is_resume:
            return None
        found, problem = None, None
        if self.info.is_main:
            found = checkpoint.find_latest(self.run_dir)
            problem = self._incompatibility(found) if found is not None else None
        # the others read their own file: rank 0's state stays here
        chosen, problem = broadcast_object(
            (found.without_state() if found is not None else None, problem), self.info
        )
        if problem is not None:
            raise checkpoint.CheckpointError(problem)
        if chosen is None:
            return None
        state = self._state_for_here(found if found is not None else chosen)
        for name, component in self.components.items():
            if name in OPTIONAL and name not in state:
                continue  # written before the component existed: it starts as built
            try:
                component.load_state_dict(state[name])
            except (RuntimeError, ValueError, KeyError) as error:
                raise checkpoint.CheckpointError(
                    f"checkpoint {chosen.path} does not fit this run (its {name}: "
                    f"{str(error).splitlines()[0]}); choose another hydra.run.dir"
                ) from error
        if self.info.is_main and self.change is not None:
            log.warning("elastic resume from %s: %s", chosen.path.name, self.change)
        if self.info.is_main and chosen.skipped:
            # one line for all of them, so that a fallback is seen and not mistaken for a resume
            log.warning(
                "skipped checkpoint %s; resuming from %s",
                "; ".join(chosen.skipped),
                chosen.path.name,
            )
        return chosen
