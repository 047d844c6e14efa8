"""Elastic restarts: a checkpoint written by one layout of the replicas, resumed by another.

Parle's replicas meet only in their mean, so a job may come back with another number of
processes (a node lost, a node added: ``torchrun --nnodes=1:2``) or of replicas per process. Each
global replica ``g`` (replica ``g % R`` of rank ``g // R`` in a layout of ``R`` per process) keeps
all that is its own: weights, optimizer state, data order, dropout and noise streams. With fewer
replicas the last ones leave the job (and so the mean); with more, the new ones start from the
reference (the mean of the saved replicas) with zero momenta and the fresh streams a new run
would give them, or, for algorithms whose replicas are copies of one another (data-parallel
SGD), as copies of replica 0. Under ``data.policy=shard`` or ``frac`` a new number of replicas
re-deals the shards (the fractions, which start at ``i / n``), so every replica starts a new pass
over its new share. The couplings go on from the job's outer step ``t``; their schedules take this
layout's settings, so a null scoping rate follows the new share's ``nb`` (a shard's size changes
with the number of replicas; a fraction's does not).

The state of the process (its counters, communication totals, global generators, logger) is the
same rank's when that rank was there, else rank 0's.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from elastic_entropy.comm.base import tree_sum

State = dict[str, Any]
Piece = Any  # one replica's share of a component's state


@dataclass(frozen=True)
class Layout:
    world_size: int
    replicas_per_process: int

    @property
    def num_replicas(self) -> int:
        return self.world_size * self.replicas_per_process

    def replicas_of(self, rank: int) -> range:
        per = self.replicas_per_process
        return range(rank * per, (rank + 1) * per)

    def __str__(self) -> str:
        return f"{self.world_size} process(es) x {self.replicas_per_process}"


@dataclass(frozen=True)
class Change:
    """What a relayout did to the job's replicas, for the log and ``metrics.jsonl``."""

    old: Layout
    new: Layout

    @property
    def dropped(self) -> list[int]:
        return list(range(self.new.num_replicas, self.old.num_replicas))

    @property
    def added(self) -> list[int]:
        return list(range(self.old.num_replicas, self.new.num_replicas))

    def record(self, step: int) -> dict[str, Any]:
        return {
            "event": "relayout",
            "step": step,
            "from": [self.old.world_size, self.old.replicas_per_process],
            "to": [self.new.world_size, self.new.replicas_per_process],
            "dropped": self.dropped,
            "added": self.added,
        }

    def __str__(self) -> str:
        text = (
            f"{self.old.num_replicas} replicas as {self.old} resumed as "
            f"{self.new.num_replicas} as {self.new}"
        )
        if self.dropped:
            text += f"; replicas {self.dropped} left the job"
        if self.added:
            text += f"; replicas {self.added} start from the reference"
        return text


# ---------------------------------------------------------------------------- per-replica pieces
def _split_models(state: State, per: int) -> list[Piece]:
    pieces: list[dict[str, Tensor]] = [{} for _ in range(per)]
    for key, value in state.items():
        a, rest = key.split(".", 1)
        pieces[int(a)][rest] = value
    return pieces


def _join_models(pieces: Sequence[Piece], _fresh: State) -> State:
    return {f"{a}.{key}": value for a, piece in enumerate(pieces) for key, value in piece.items()}


def _split_optimizer(state: State, per: int) -> list[Piece]:
    """One replica's parameter groups, each with its parameters' states in order, and its noise
    streams (one per storage)."""
    groups: list[list[tuple[dict[str, Any], list[Any]]]] = [[] for _ in range(per)]
    for group in state["param_groups"]:
        params = [state["state"].get(i) for i in group["params"]]
        groups[int(group["replica"])].append((group, params))
    generators = state["parle"]["generators"]
    num_storages = len(generators) // per
    return [
        {"groups": groups[a], "generators": [generators[s * per + a] for s in range(num_storages)]}
        for a in range(per)
    ]


def _join_optimizer(pieces: Sequence[Piece], fresh: State) -> State:
    """The fresh optimizer's numbering of the parameters, holding the pieces' values."""
    saved = [(a, group, params) for a, p in enumerate(pieces) for group, params in p["groups"]]
    if len(saved) != len(fresh["param_groups"]):
        raise ValueError(f"{len(saved)} parameter groups saved for {len(fresh['param_groups'])}")
    groups, state = [], {}
    for (a, group, params), mine in zip(saved, fresh["param_groups"]):
        groups.append({**group, "replica": a, "params": mine["params"]})
        state.update({i: value for i, value in zip(mine["params"], params) if value is not None})
    num_storages = len(pieces[0]["generators"])
    generators = [p["generators"][s] for s in range(num_storages) for p in pieces]
    return {
        "state": state,
        "param_groups": groups,
        "parle": {**fresh["parle"], "generators": generators},
    }


def _split_list(key: str) -> Splitter:
    # an empty list holds nothing per replica (no dropout: no dropout streams)
    return lambda state, per: list(state[key]) or [None] * per


def _join_list(key: str) -> Joiner:
    return lambda pieces, fresh: {key: [piece for piece in pieces if piece is not None]}


Splitter = Callable[[State, int], list[Piece]]
Joiner = Callable[[Sequence[Piece], State], State]

# the components with a replica axis, and how to cut it and glue it back
PER_REPLICA: dict[str, tuple[Splitter, Joiner]] = {
    "models": (_split_models, _join_models),
    "optimizer": (_split_optimizer, _join_optimizer),
    "samplers": (_split_list("items"), _join_list("items")),
    "randomness": (_split_list("states"), _join_list("states")),
    "augmentation": (_split_list("states"), _join_list("states")),
}
# the optimizer's buffers that hold the anchor at an outer-step boundary (the rest are momenta)
ANCHOR_STATES = ("anchor", "ema")


# ---------------------------------------------------------------------------- new replicas
def tree_mean(tensors: Sequence[Tensor]) -> Tensor:
    return tree_sum(torch.stack(list(tensors))).div_(len(tensors))


def _mean_model(pieces: Sequence[Piece]) -> Piece:
    """The reference's weights; integer buffers (BatchNorm's counter) are replica 0's."""
    first = pieces[0]
    return {
        key: tree_mean([p[key] for p in pieces]) if value.is_floating_point() else value.clone()
        for key, value in first.items()
    }


def _reference_optimizer(pieces: Sequence[Piece], fresh: Piece) -> Piece:
    """Replica 0's hyper-parameters, anchors at the reference, zero momenta, fresh noise."""
    groups = []
    for g, (group, params) in enumerate(pieces[0]["groups"]):
        new_params = []
        for i, value in enumerate(params):
            if value is None:
                new_params.append(None)
                continue
            new_params.append(
                {
                    name: tree_mean([p["groups"][g][1][i][name] for p in pieces])
                    if name in ANCHOR_STATES
                    else torch.zeros_like(tensor)
                    for name, tensor in value.items()
                }
            )
        groups.append((group, new_params))
    return {"groups": groups, "generators": fresh["generators"]}


def _new_piece(name: str, saved: Sequence[Piece], fresh: Piece, is_copy: bool) -> Piece:
    """A replica the checkpoint did not have, from the saved replicas ``saved`` (all of them)."""
    if name == "models":
        return copy.deepcopy(saved[0]) if is_copy else _mean_model(saved)
    if name == "optimizer":
        if is_copy:
            return {"groups": copy.deepcopy(saved[0]["groups"]), "generators": fresh["generators"]}
        return _reference_optimizer(saved, fresh)
    return fresh  # data order, dropout masks: the streams a fresh run gives this replica


# ---------------------------------------------------------------------------- the whole state
class Saved:
    """The checkpoint's rank files, each read once, cut into replicas when first asked."""

    def __init__(self, load: Callable[[int], State], layout: Layout) -> None:
        self.load = load
        self.layout = layout
        self._files: dict[int, State] = {}
        self._pieces: dict[tuple[str, int], list[Piece]] = {}

    def file(self, rank: int) -> State:
        if rank not in self._files:
            self._files[rank] = self.load(rank)
        return self._files[rank]

    def piece(self, name: str, replica: int) -> Piece:
        rank, a = divmod(replica, self.layout.replicas_per_process)
        if (name, rank) not in self._pieces:
            split = PER_REPLICA[name][0]
            self._pieces[name, rank] = split(
                self.file(rank)[name], self.layout.replicas_per_process
            )
        return self._pieces[name, rank][a]

    def every_piece(self, name: str) -> list[Piece]:
        return [self.piece(name, g) for g in range(self.layout.num_replicas)]


def _window(saved: Saved, change: Change, rank: int) -> list[Tensor]:
    """The replicas' losses since the last record, by column; none when replicas came or went
    (the first record after the resume then covers fewer minibatches)."""
    if change.old.num_replicas != change.new.num_replicas:
        return []
    per = change.old.replicas_per_process
    columns = [
        [w[:, g % per] for w in saved.file(g // per)["progress"]["window"]]
        for g in change.new.replicas_of(rank)
    ]
    return [torch.stack(entry, dim=1) for entry in zip(*columns)]


def _optimizer(saved: Saved, change: Change, pieces: list[Piece], fresh: State) -> State:
    joined = _join_optimizer(pieces, fresh)
    parle = dict(saved.file(0)["optimizer"]["parle"])
    # the layout is this run's; the rest (steps, the schedules' outer step) the job's
    parle.update({key: fresh["parle"][key] for key in ("replicas_per_process", "num_replicas")})
    parle["generators"] = joined["parle"]["generators"]
    if change.old.num_replicas != change.new.num_replicas:
        # an overlapped mean launched over other replicas: the next outer step waits for its own
        parle["in_flight"] = None
        # the job's outer step, this layout's schedule (a shard's nb moved with the replicas)
        for key in ("gamma_schedule", "rho_schedule"):
            parle[key] = {**fresh["parle"][key], "t": parle[key]["t"]}
    return {**joined, "parle": parle}


def relayout(
    load: Callable[[int], State],
    change: Change,
    rank: int,
    fresh: State,
    *,
    is_copy: bool,
    reshards: bool,
) -> State:
    """Rank ``rank``'s state in ``change.new``, from the rank files of ``change.old`` (``load``)
    and this run's freshly built state ``fresh`` (for the streams of new replicas).

    ``is_copy``: new replicas copy replica 0 (replicas that are copies of one another);
    ``reshards``: the replicas' data depend on their number (``data.policy=shard`` or
    ``frac``)."""
    saved = Saved(load, change.old)
    resized = change.old.num_replicas != change.new.num_replicas
    mine = list(change.new.replicas_of(rank))
    process_rank = rank if rank < change.old.world_size else 0
    state = dict(saved.file(process_rank))
    state.update(rank=rank, world_size=change.new.world_size)
    state["replicas_per_process"] = change.new.replicas_per_process
    for name, (split, join) in PER_REPLICA.items():
        if name not in fresh:
            continue
        if name not in saved.file(0):  # a checkpoint from before the component: as built
            state[name] = fresh[name]
            continue
        fresh_pieces = split(fresh[name], change.new.replicas_per_process)
        pieces = []
        for a, g in enumerate(mine):
            if name == "samplers" and resized and reshards:
                pieces.append(fresh_pieces[a])  # new shards: a new pass over each
            elif g < change.old.num_replicas:
                pieces.append(saved.piece(name, g))
            else:
                pieces.append(_new_piece(name, saved.every_piece(name), fresh_pieces[a], is_copy))
        if name == "optimizer":
            state[name] = _optimizer(saved, change, pieces, fresh[name])
        else:
            state[name] = join(pieces, fresh[name])
    state["progress"] = {**state["progress"], "window": _window(saved, change, rank)}
    return state
