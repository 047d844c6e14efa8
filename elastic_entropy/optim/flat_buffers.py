"""The flat ``[replicas, N]`` storage behind Parle: parameters, gradients and state are views."""

from __future__ import annotations

from collections.abc import Iterable, MutableMapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, NamedTuple

import torch
from torch import Tensor

if TYPE_CHECKING:
    from elastic_entropy.comm.base import Communicator

StorageKey = tuple[torch.device, torch.dtype]


@dataclass
class Storage:
    """Flat ``[replicas, N]`` buffers for one device and dtype; parameters are views of ``live``."""

    live: Tensor
    grad: Tensor
    scratch: Tensor
    state: dict[str, Tensor]
    noise: Tensor | None = None
    generators: list[torch.Generator] = field(default_factory=list)


@dataclass
class Segment:
    """The columns ``[start, end)`` of one storage that hold one parameter group."""

    group_index: int  # index in ``param_groups`` of replica 0's group; its values rule all replicas
    key: StorageKey
    start: int
    end: int

    @property
    def cols(self) -> slice:
        return slice(self.start, self.end)


class Slot(NamedTuple):
    """Where one parameter lives: row ``row`` (its replica), columns from ``column`` of ``key``."""

    param: Tensor
    key: StorageKey
    row: int
    column: int


def replica_param_groups(
    replicas: Iterable[Iterable[Tensor]], **options: Any
) -> list[dict[str, Any]]:
    """Parameter groups for several replicas in one process, e.g.
    ``Parle(replica_param_groups(m.parameters() for m in models), lr=0.1)``."""
    return [{"params": list(params), "replica": a, **options} for a, params in enumerate(replicas)]


def group_replicas(
    param_groups: Sequence[dict[str, Any]], shared: Sequence[str]
) -> list[list[int]]:
    """Indices into ``param_groups`` per replica (the ``"replica"`` key of each group).

    Replica ``a``'s groups must match replica 0's: as many, with parameters of the same shapes,
    dtypes and devices, and the same values of the hyper-parameters named in ``shared``.
    """
    by_replica: dict[int, list[int]] = {}
    for index, group in enumerate(param_groups):
        by_replica.setdefault(int(group["replica"]), []).append(index)
    ids = sorted(by_replica)
    if ids != list(range(len(ids))):
        raise ValueError(f"replica ids must be 0..n-1, got {ids}")
    first = [param_groups[i] for i in by_replica[0]]
    for a in ids[1:]:
        groups = [param_groups[i] for i in by_replica[a]]
        if len(groups) != len(first):
            raise ValueError(
                f"replica {a} has {len(groups)} parameter groups but replica 0 has {len(first)}"
            )
        for g0, ga in zip(first, groups):
            _check_same_replica(a, g0, ga, shared)
    return [by_replica[a] for a in ids]


def _check_same_replica(
    a: int, g0: dict[str, Any], ga: dict[str, Any], shared: Sequence[str]
) -> None:
    shapes0 = [(p.shape, p.dtype, p.device) for p in g0["params"]]
    shapesa = [(p.shape, p.dtype, p.device) for p in ga["params"]]
    if shapes0 != shapesa:
        raise ValueError(f"replica {a}'s parameters differ in shape from replica 0's")
    for name in shared:
        if g0[name] != ga[name]:
            raise ValueError(
                f"replica {a} has {name}={ga[name]} but replica 0 has {g0[name]}; "
                "replicas share their hyper-parameters"
            )


def _lay_out(
    param_groups: Sequence[dict[str, Any]], group_indices: list[int]
) -> tuple[dict[StorageKey, int], list[list[int]], list[Segment]]:
    """Columns of replica 0's groups: storage sizes, each parameter's offset, the segments."""
    sizes: dict[StorageKey, int] = {}
    segments: list[Segment] = []
    offsets: list[list[int]] = []  # per group of replica 0: column offset of each param
    for group_index in group_indices:
        params = param_groups[group_index]["params"]
        group_offsets = [0] * len(params)
        for key in dict.fromkeys((p.device, p.dtype) for p in params):
            start = sizes.get(key, 0)
            column = start
            for i, p in enumerate(params):
                if (p.device, p.dtype) == key:
                    group_offsets[i] = column
                    column += p.numel()
            sizes[key] = column
            segments.append(Segment(group_index, key, start, column))
        offsets.append(group_offsets)
    return sizes, offsets, segments


def _new_storage(num_replicas: int, size: int, key: StorageKey) -> Storage:
    live = torch.empty(num_replicas, size, device=key[0], dtype=key[1])
    return Storage(live=live, grad=torch.zeros_like(live), scratch=torch.empty_like(live), state={})


class FlatBuffers:
    """Every replica of this process in one ``[replicas, N]`` tensor per device and dtype.

    Row ``a`` of a storage is replica ``a`` of this process; its columns are the parameters of
    replica 0's groups in order, a group's parameters of one device and dtype side by side (a
    :class:`Segment`, which a step updates as one slice). ``live`` holds the parameters (each
    ``p.data`` is a view of it), ``grad`` the gradients (each ``p.grad`` a view, so backward
    accumulates straight into it), ``scratch`` the step's temporaries, and ``state[name]`` the
    optimizer state of that name (``self.state[p][name]`` is a view). One collective of one
    storage then averages every parameter of every replica of the process.
    """

    def __init__(
        self,
        param_groups: Sequence[dict[str, Any]],
        replicas: list[list[int]],
        state_names: Sequence[str],
    ) -> None:
        sizes, offsets, self.segments = _lay_out(param_groups, replicas[0])
        self.storages = {key: _new_storage(len(replicas), n, key) for key, n in sizes.items()}
        self.slots = [
            Slot(p, (p.device, p.dtype), a, column)
            for a, group_indices in enumerate(replicas)
            for group_index, group_offsets in zip(group_indices, offsets)
            for p, column in zip(param_groups[group_index]["params"], group_offsets)
        ]
        self._grad_views: list[tuple[Tensor, Tensor]] = []
        with torch.no_grad():
            for slot in self.slots:
                self._bind(slot)
        for storage in self.storages.values():
            for name in state_names:
                if name in ("anchor", "ema"):
                    storage.state[name] = storage.live.clone()
                else:
                    storage.state[name] = torch.zeros_like(storage.live)
        self._replica0_slots = [slot for slot in self.slots if slot.row == 0]

    def _bind(self, slot: Slot) -> None:
        """Make the parameter (and its gradient) views of the flat buffers, keeping their values."""
        p, storage = slot.param, self.storages[slot.key]
        n = p.numel()
        live = storage.live[slot.row, slot.column : slot.column + n]
        live.copy_(p.detach().reshape(-1))
        p.data = live.view_as(p)
        grad = storage.grad[slot.row, slot.column : slot.column + n].view_as(p)
        if p.grad is not None:
            grad.copy_(p.grad)
        p.grad = grad
        self._grad_views.append((p, grad))

    # ------------------------------------------------------------------ reading the buffers
    @staticmethod
    def buffer(storage: Storage, name: str) -> Tensor:
        """``"live"``, ``"grad"`` or a state name: that ``[replicas, N]`` tensor of ``storage``."""
        if name == "live":
            return storage.live
        return storage.grad if name == "grad" else storage.state[name]

    def flat(self, name: str) -> dict[StorageKey, Tensor]:
        """The ``[replicas, N]`` tensor ``name`` of every storage."""
        return {key: self.buffer(storage, name) for key, storage in self.storages.items()}

    def segment_storages(self) -> list[tuple[Segment, Storage]]:
        """Each segment with the storage it is a slice of."""
        return [(segment, self.storages[segment.key]) for segment in self.segments]

    @property
    def anchor_name(self) -> str:
        """Which buffer holds the anchors ``x``: the live parameters when there is no inner loop."""
        return "anchor" if "anchor" in next(iter(self.storages.values())).state else "live"

    @property
    def num_params_per_replica(self) -> int:
        return sum(s.live.shape[1] for s in self.storages.values())

    def finite_rows(self, name: str) -> Tensor:
        """Which replicas of this process have finite values in ``name``.

        A finite row sum means finite entries (NaN and inf propagate), so one read pass in the
        buffer's own dtype and no N-long mask (a float64 sum would first copy the buffer: 5x the
        time). A sum that is not finite may still be an overflow of large finite entries: those
        rows alone are checked entry by entry.
        """
        rows = [self._finite_rows(buf) for buf in self.flat(name).values()]
        valid = rows[0]
        for more in rows[1:]:
            valid = valid & more.to(valid.device)
        return valid

    @staticmethod
    def _finite_rows(buf: Tensor) -> Tensor:
        valid = torch.isfinite(buf.sum(dim=1))
        if not bool(valid.all()):
            valid = torch.isfinite(buf).all(dim=1)
        return valid

    def row_distance(self, a: str, b: str | dict[StorageKey, Tensor]) -> Tensor:
        """``|a - b|`` per replica of this process, one norm over every storage (CPU float64).

        ``a`` names a buffer; ``b`` names one too, or is ``N``-long per storage (a mean), broadcast
        over the rows. The squares are summed over the storages in float64.
        """
        total: Tensor | None = None
        for key, storage in self.storages.items():
            other = self.buffer(storage, b) if isinstance(b, str) else b[key]
            diff = torch.sub(self.buffer(storage, a), other, out=storage.scratch)
            square = torch.linalg.vector_norm(diff, dim=1).double().square().cpu()
            total = square if total is None else total + square
        assert total is not None
        return total.sqrt()

    def unflatten(self, flat: dict[StorageKey, Tensor]) -> list[Tensor]:
        """Views of ``N``-long tensors (one per storage) as replica 0's parameters, in order."""
        return [
            flat[key][column : column + p.numel()].view_as(p)
            for p, key, _, column in self._replica0_slots
        ]

    def anchors(self, replica: int) -> list[Tensor]:
        """Replica ``replica``'s (local index) anchor ``x``, one tensor per parameter."""
        name = self.anchor_name
        return [
            self.buffer(self.storages[key], name)[row, column : column + p.numel()].view_as(p)
            for p, key, row, column in self.slots
            if row == replica
        ]

    # ------------------------------------------------------------------ writing the buffers
    def assign_live(self, flat: dict[StorageKey, Tensor]) -> None:
        """Set every replica's live parameters to ``flat`` (``N``-long, one per storage)."""
        for key, storage in self.storages.items():
            storage.live.copy_(flat[key].expand_as(storage.live))

    @torch.no_grad()
    def broadcast_live(self, comm: Communicator) -> None:
        """Every process's replicas start from the first process's (parameters, anchor, average),
        as DDP starts its workers: replicas seeded differently would otherwise be averaged."""
        for storage in self.storages.values():
            comm.broadcast(storage.live)
            for name in ("anchor", "ema"):
                if name in storage.state:
                    storage.state[name].copy_(storage.live)

    def reset_rows(self, rows: list[int], references: dict[StorageKey, Tensor]) -> None:
        """Restart replicas ``rows`` from ``references``: parameters, anchor and average set to
        it, momenta zeroed."""
        for key, storage in self.storages.items():
            for row in rows:
                storage.live[row].copy_(references[key])
                for name, buf in storage.state.items():
                    if name in ("anchor", "ema"):
                        buf[row].copy_(references[key])
                    else:
                        buf[row].zero_()

    def zero_grad(self) -> None:
        """Zero the gradient buffers in place and give the parameters their views back."""
        for storage in self.storages.values():
            storage.grad.zero_()
        for p, view in self._grad_views:
            if p.grad is not view:
                p.grad = view

    def gather_grads(self) -> None:
        """Fold gradients autograd made outside the buffer (after a ``model.zero_grad()``)."""
        for p, view in self._grad_views:
            grad = p.grad
            if grad is view:
                continue
            if grad is None:
                view.zero_()
            else:
                view.copy_(grad)
            p.grad = view

    # ------------------------------------------------------------------ optimizer state
    def link_state(self, state: MutableMapping[Any, Any]) -> None:
        """``state[p]`` holds views of the flat state, so ``state_dict()`` works as torch's."""
        for p, key, row, column in self.slots:
            n = p.numel()
            state[p] = {
                name: buf[row, column : column + n].view_as(p)
                for name, buf in self.storages[key].state.items()
            }

    def load_state(self, state: MutableMapping[Any, Any]) -> None:
        """Copy per-parameter ``state[p]`` (as torch's ``load_state_dict`` left it) into the flat
        state, then make ``state[p]`` views again."""
        with torch.no_grad():
            for p, key, row, column in self.slots:
                loaded = state[p]
                for name, buf in self.storages[key].state.items():
                    if name not in loaded or loaded[name].shape != p.shape:
                        raise ValueError(
                            "optimizer state does not match this model (a parameter's saved "
                            f"'{name}' is missing or has another shape); was it saved for "
                            "another model?"
                        )
                    buf[row, column : column + p.numel()].copy_(loaded[name].reshape(-1))
        self.link_state(state)

    # ------------------------------------------------------------------ noise
    def add_generators(self, seed: int | None, replica_offset: int) -> None:
        """A noise buffer per storage and one generator per row, seeded by global replica."""
        if seed is None:
            seed = int(torch.randint(0, 2**31 - 1, ()).item())
        # one stream per global replica, so the same replica draws the same noise in any layout
        for key_index, (key, storage) in enumerate(self.storages.items()):
            storage.noise = torch.empty_like(storage.live)
            for a in range(storage.live.shape[0]):
                generator = torch.Generator(device=key[0])
                global_replica = replica_offset + a
                generator.manual_seed(seed * 1_000_003 + global_replica * 101 + key_index)
                storage.generators.append(generator)

    def draw_noise(self) -> None:
        """Fill each storage's noise buffer with standard normals, row by row from its stream."""
        for storage in self.storages.values():
            for row, generator in enumerate(storage.generators):
                assert storage.noise is not None
                storage.noise[row].normal_(generator=generator)

    def generator_states(self) -> list[Tensor]:
        return [g.get_state() for s in self.storages.values() for g in s.generators]

    def load_generator_states(self, saved: list[Tensor]) -> None:
        generators = [g for s in self.storages.values() for g in s.generators]
        if len(generators) != len(saved):
            raise ValueError(
                "optimizer state has another number of noise generators; was noise on?"
            )
        for generator, state in zip(generators, saved):
            generator.set_state(state)
