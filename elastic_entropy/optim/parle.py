"""Parle: replicas running Entropy-SGD, elastically coupled to their average."""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor
from torch.optim import Optimizer

from elastic_entropy.comm.base import Communicator, Done, LocalCommunicator, PendingMasked
from elastic_entropy.optim import functional as F
from elastic_entropy.scoping import Schedule

_HYPER = ("lr", "inner_lr", "momentum", "nesterov", "alpha", "noise", "weight_decay")
_StorageKey = tuple[torch.device, torch.dtype]


@dataclass
class _Storage:
    """Flat ``[replicas, N]`` buffers for one device and dtype; parameters are views of ``live``."""

    live: Tensor
    grad: Tensor
    scratch: Tensor
    state: dict[str, Tensor]
    noise: Tensor | None = None
    generators: list[torch.Generator] = field(default_factory=list)


@dataclass
class _Segment:
    """The columns ``[start, end)`` of one storage that hold one parameter group."""

    group_index: int  # index in ``param_groups`` of replica 0's group; its values rule all replicas
    key: _StorageKey
    start: int
    end: int


class DivergedError(RuntimeError):
    """Every replica has non-finite parameters: nothing is left to average."""


def _check_hyper(group: dict[str, Any]) -> None:
    checks = {
        "lr": group["lr"] >= 0.0,
        "momentum": 0.0 <= group["momentum"] < 1.0,
        "alpha": 0.0 <= group["alpha"] < 1.0,
        "noise": group["noise"] >= 0.0,
        "weight_decay": group["weight_decay"] >= 0.0,
    }
    ranges = {
        "lr": ">= 0",
        "momentum": "in [0, 1)",
        "alpha": "in [0, 1) (the weight of the old average in the EMA)",
        "noise": ">= 0",
        "weight_decay": ">= 0",
    }
    for name, ok in checks.items():
        if not ok or not math.isfinite(group[name]):
            raise ValueError(f"Invalid {name} value: {group[name]} (must be {ranges[name]})")
    inner_lr = group["inner_lr"]
    if inner_lr is not None and (not math.isfinite(inner_lr) or inner_lr < 0.0):
        raise ValueError(f"Invalid inner_lr value: {inner_lr} (must be >= 0, or None for lr)")


def _check_coupling(name: str, value: float) -> None:
    if not math.isfinite(value) or value < 0.0:
        raise ValueError(f"Invalid {name} value: {value} (must be finite and >= 0)")


class Parle(Optimizer):
    r"""Parle (Chaudhari et al., SysML 2018): Entropy-SGD replicas with an elastic reference.

    Every replica ``a`` keeps an anchor ``x``; the live parameters are the inner iterate ``y``.
    ``step()`` is called once per minibatch, after ``backward()``. Calls ``1..L`` run the inner loop
    (``L = num_inner_steps``); the ``L``-th call also runs the outer step, after which the live
    parameters hold the new anchor::

        y <- x ; z <- x
        repeat L times:  g = grad f_B(y) + wd y + gamma_t (y - x)
                         v = m v + g ;  y = y - lr' (g + m v) + noise sqrt(2 lr') xi
                         z = alpha z + (1 - alpha) y
        r = mean_a z^a                                  (one all-reduce of one flat buffer)
        d = (x - z) + rho_t (x - r) ;  u = m u + d ;  x = x - lr (d + m u)

    ``num_inner_steps = 0`` drops the inner loop:
    ``d = grad f_B(x) + wd x + rho_t (x - mean_a x^a)`` (synchronous Elastic-SGD). With one
    replica, ``L = 0`` and ``rho = 0`` this is exactly ``torch.optim.SGD(lr, momentum,
    nesterov=True, weight_decay)``. The inner momentum ``v`` persists across outer steps, as in
    the Parle code.

    ``gamma`` and ``rho`` are coupling *strengths*; in Deep Relaxation units the variance is
    ``1 / gamma``. They grow by scoping (``gamma_schedule``, ``rho_schedule``, stepped once per
    outer step; when given they replace ``gamma`` and ``rho``). The reference
    ``xbar = mean_a x^a`` is what you evaluate and ship: :meth:`reference` computes it (a
    collective call on every process).

    ``overlap=True`` launches each outer step's all-reduce asynchronously and uses it one outer
    step later, so that it runs behind the next inner loop's compute: the outer step then reads
    ``d = (x - z_t) + rho_t (x - r_{t-1})``, a reference one outer step stale (the first outer step
    waits for its own). Off by default: the paper's form is the synchronous one.

    Replicas: plain parameters are one replica. Several replicas in one process are parameter
    groups with a ``"replica"`` key (see :func:`replica_param_groups`), all shaped alike; ``comm``
    averages across processes (``None``: the replicas of this process are all there is). Parameters
    and gradients become views of flat ``[replicas, N]`` buffers, one per device and dtype, so an
    outer step all-reduces one buffer; :meth:`zero_grad` zeroes that buffer in place.

    Example::

        opt = Parle(model.parameters(), lr=0.1, num_inner_steps=10, gamma=0.03, rho=1.0)
        loss_fn(model(x), y).backward(); opt.step(); opt.zero_grad()
        torch.nn.utils.vector_to_parameters(torch.cat([t.flatten() for t in opt.reference()]), ...)
    """

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]],
        lr: float,
        *,
        inner_lr: float | None = None,
        momentum: float = 0.9,
        nesterov: bool = True,
        num_inner_steps: int = 25,
        gamma: float = 0.03,
        rho: float = 1.0,
        alpha: float = 0.75,
        noise: float = 0.0,
        weight_decay: float = 0.0,
        gamma_schedule: Schedule | None = None,
        rho_schedule: Schedule | None = None,
        comm: Communicator | None = None,
        seed: int | None = None,
        overlap: bool = False,
    ) -> None:
        if not isinstance(num_inner_steps, int) or num_inner_steps < 0:
            raise ValueError(
                f"Invalid num_inner_steps value: {num_inner_steps} (must be an int >= 0)"
            )
        _check_coupling("gamma", gamma)
        _check_coupling("rho", rho)
        defaults = {
            "lr": lr,
            "inner_lr": inner_lr,
            "momentum": momentum,
            "nesterov": nesterov,
            "alpha": alpha,
            "noise": noise,
            "weight_decay": weight_decay,
            "replica": 0,
        }
        super().__init__(params, defaults)
        self.num_inner_steps = num_inner_steps
        if num_inner_steps == 0 and any(g["noise"] > 0.0 for g in self.param_groups):
            raise ValueError(
                "noise > 0 needs an inner loop (num_inner_steps >= 1); set noise=0 for Elastic-SGD"
            )
        self.gamma_schedule = gamma_schedule if gamma_schedule is not None else Schedule(gamma)
        self.rho_schedule = rho_schedule if rho_schedule is not None else Schedule(rho)
        replicas = self._groups_by_replica()
        self.comm: Communicator = comm if comm is not None else LocalCommunicator(len(replicas))
        if self.comm.replicas_per_process != len(replicas):
            raise ValueError(
                f"the optimizer holds {len(replicas)} replica(s) but the communicator expects "
                f"{self.comm.replicas_per_process} per process; build the communicator with "
                f"replicas_per_process={len(replicas)}"
            )
        self.num_steps = 0
        self.overlap = overlap
        # the all-reduce launched at the last outer step, collected at the next (overlap=True)
        self._in_flight: dict[_StorageKey, PendingMasked] | None = None
        self.quarantine_events: list[dict[str, int]] = []  # diverged replicas reset, for logs
        # coupling diagnostics: measured during one outer step, only when asked for, so that
        # training without a logger pays nothing (see request_diagnostics)
        self._should_diagnose = False
        self._diagnostics: dict[str, Any] | None = None
        self._valid_local = torch.ones(len(replicas), dtype=torch.bool)
        self._build_storages(replicas)
        self._build_generators(seed)
        self._check_stability()
        self._built = True

    # ------------------------------------------------------------------ construction
    def add_param_group(self, param_group: dict[str, Any]) -> None:
        if getattr(self, "_built", False):
            raise ValueError(
                "Parle lays its parameters out in flat buffers when it is built; pass every "
                "parameter group to the constructor instead of add_param_group()"
            )
        super().add_param_group(param_group)
        group = self.param_groups[-1]
        _check_hyper(group)
        for p in group["params"]:
            if not p.requires_grad:
                raise ValueError(
                    "Parle got a parameter with requires_grad=False; pass only trainable "
                    "parameters (e.g. [p for p in model.parameters() if p.requires_grad])"
                )

    def _groups_by_replica(self) -> list[list[int]]:
        """Indices into ``param_groups`` per replica; replica ``a``'s groups match replica 0's."""
        by_replica: dict[int, list[int]] = {}
        for index, group in enumerate(self.param_groups):
            by_replica.setdefault(int(group["replica"]), []).append(index)
        ids = sorted(by_replica)
        if ids != list(range(len(ids))):
            raise ValueError(f"replica ids must be 0..n-1, got {ids}")
        first = [self.param_groups[i] for i in by_replica[0]]
        for a in ids[1:]:
            groups = [self.param_groups[i] for i in by_replica[a]]
            if len(groups) != len(first):
                raise ValueError(
                    f"replica {a} has {len(groups)} parameter groups but replica 0 has {len(first)}"
                )
            for g0, ga in zip(first, groups):
                shapes0 = [(p.shape, p.dtype, p.device) for p in g0["params"]]
                shapesa = [(p.shape, p.dtype, p.device) for p in ga["params"]]
                if shapes0 != shapesa:
                    raise ValueError(f"replica {a}'s parameters differ in shape from replica 0's")
                for name in _HYPER:
                    if g0[name] != ga[name]:
                        raise ValueError(
                            f"replica {a} has {name}={ga[name]} but replica 0 has {g0[name]}; "
                            "replicas share their hyper-parameters"
                        )
        return [by_replica[a] for a in ids]

    def _state_names(self) -> tuple[str, ...]:
        if self.num_inner_steps == 0:
            return ("outer_momentum",)
        return ("anchor", "ema", "inner_momentum", "outer_momentum")

    def _build_storages(self, replicas: list[list[int]]) -> None:
        num_replicas = len(replicas)
        sizes: dict[_StorageKey, int] = {}
        self._segments: list[_Segment] = []
        offsets: list[list[int]] = []  # per group of replica 0: column offset of each param
        for group_index in replicas[0]:
            params = self.param_groups[group_index]["params"]
            group_offsets = [0] * len(params)
            keys = list(dict.fromkeys((p.device, p.dtype) for p in params))
            for key in keys:
                start = sizes.get(key, 0)
                column = start
                for i, p in enumerate(params):
                    if (p.device, p.dtype) == key:
                        group_offsets[i] = column
                        column += p.numel()
                sizes[key] = column
                self._segments.append(_Segment(group_index, key, start, column))
            offsets.append(group_offsets)

        self._storages: dict[_StorageKey, _Storage] = {}
        for key, size in sizes.items():
            device, dtype = key
            live = torch.empty(num_replicas, size, device=device, dtype=dtype)
            self._storages[key] = _Storage(
                live=live, grad=torch.zeros_like(live), scratch=torch.empty_like(live), state={}
            )
        self._grad_views: list[tuple[Tensor, Tensor]] = []
        with torch.no_grad():
            for a, group_indices in enumerate(replicas):
                for group_index, group_offsets in zip(group_indices, offsets):
                    for p, column in zip(self.param_groups[group_index]["params"], group_offsets):
                        self._bind(p, self._storages[(p.device, p.dtype)], a, column)
        for storage in self._storages.values():
            for name in self._state_names():
                if name in ("anchor", "ema"):
                    storage.state[name] = storage.live.clone()
                else:
                    storage.state[name] = torch.zeros_like(storage.live)
        self._param_slots: list[tuple[Tensor, _StorageKey, int, int]] = []
        for a, group_indices in enumerate(replicas):
            for group_index, group_offsets in zip(group_indices, offsets):
                for p, column in zip(self.param_groups[group_index]["params"], group_offsets):
                    self._param_slots.append((p, (p.device, p.dtype), a, column))
        self._link_state()
        self._replica0_slots = [slot for slot in self._param_slots if slot[2] == 0]

    def _bind(self, p: Tensor, storage: _Storage, row: int, column: int) -> None:
        """Make ``p`` (and its gradient) views of the flat buffers, keeping their values."""
        n = p.numel()
        live = storage.live[row, column : column + n]
        live.copy_(p.detach().reshape(-1))
        p.data = live.view_as(p)
        grad = storage.grad[row, column : column + n].view_as(p)
        if p.grad is not None:
            grad.copy_(p.grad)
        p.grad = grad
        self._grad_views.append((p, grad))

    def _link_state(self) -> None:
        """``self.state[p]`` holds views of the flat state, so ``state_dict()`` works as torch's."""
        for p, key, row, column in self._param_slots:
            storage = self._storages[key]
            n = p.numel()
            self.state[p] = {
                name: buf[row, column : column + n].view_as(p)
                for name, buf in storage.state.items()
            }

    def _build_generators(self, seed: int | None) -> None:
        self._noisy = any(g["noise"] > 0.0 for g in self.param_groups)
        if not self._noisy:
            return
        if seed is None:
            seed = int(torch.randint(0, 2**31 - 1, ()).item())
        # one stream per global replica, so the same replica draws the same noise in any layout
        for key_index, (key, storage) in enumerate(self._storages.items()):
            storage.noise = torch.empty_like(storage.live)
            for a in range(storage.live.shape[0]):
                generator = torch.Generator(device=key[0])
                global_replica = self.comm.replica_offset + a
                generator.manual_seed(seed * 1_000_003 + global_replica * 101 + key_index)
                storage.generators.append(generator)

    def _check_stability(self) -> None:
        rho_max = self.rho_schedule.upper_bound
        if rho_max == 0.0 or (self.num_inner_steps == 0 and self.comm.num_replicas == 1):
            return
        for group in self.param_groups:
            lr, momentum = group["lr"], group["momentum"]
            if math.isinf(rho_max):
                warnings.warn(
                    "rho grows without a cap: once lr * rho * (1 + momentum) >= 2 the elastic "
                    "step overshoots the reference and diverges; give rho_schedule a max_value",
                    stacklevel=3,
                )
                return
            gain = lr * rho_max * (1.0 + momentum)
            if gain >= 2.0:
                raise ValueError(
                    f"Unstable elastic coupling: lr * rho_max * (1 + momentum) = {lr} * {rho_max} "
                    f"* {1.0 + momentum} = {gain:.3g} >= 2, so each outer step moves a replica "
                    "past "
                    f"the reference and the run diverges; keep rho_max below "
                    f"{2.0 / (lr * (1.0 + momentum)):.3g} or lower lr"
                )

    # ------------------------------------------------------------------ stepping
    @property
    def num_replicas(self) -> int:
        """Replicas in the whole job."""
        return self.comm.num_replicas

    @property
    def steps_per_exchange(self) -> int:
        """Minibatches per outer step, i.e. per exchange with the other replicas (``L``, or 1)."""
        return max(1, self.num_inner_steps)

    @property
    def is_outer_step_done(self) -> bool:
        """True between outer steps, when the live parameters hold the anchors."""
        return self.num_steps % self.steps_per_exchange == 0

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Zero the flat gradient buffers in place (``set_to_none`` is ignored: gradients stay
        views of the buffer so that backward accumulates straight into it)."""
        for storage in self._storages.values():
            storage.grad.zero_()
        for p, view in self._grad_views:
            if p.grad is not view:
                p.grad = view

    def _gather_grads(self) -> None:
        # a user's model.zero_grad() drops our views; fold whatever autograd made back in
        for p, view in self._grad_views:
            grad = p.grad
            if grad is view:
                continue
            if grad is None:
                view.zero_()
            else:
                view.copy_(grad)
            p.grad = view

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:  # type: ignore[override]
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        self._gather_grads()
        if self.num_inner_steps == 0:
            self._elastic_step()
            self._advance_schedules()
        else:
            self._inner_step()
            if (self.num_steps + 1) % self.num_inner_steps == 0:
                self._outer_step()
                self._advance_schedules()
        self.num_steps += 1
        return loss

    def _advance_schedules(self) -> None:
        self.gamma_schedule.step()
        self.rho_schedule.step()

    def _views(self, segment: _Segment) -> tuple[_Storage, slice]:
        return self._storages[segment.key], slice(segment.start, segment.end)

    def _inner_step(self) -> None:
        gamma = self.gamma_schedule.value
        if self._noisy:
            for storage in self._storages.values():
                assert storage.noise is not None
                for row, generator in enumerate(storage.generators):
                    storage.noise[row].normal_(generator=generator)
        for segment in self._segments:
            storage, cols = self._views(segment)
            group = self.param_groups[segment.group_index]
            inner_lr = group["inner_lr"] if group["inner_lr"] is not None else group["lr"]
            y = storage.live[:, cols]
            F.inner_step(
                [y],
                [storage.grad[:, cols]],
                [storage.state["anchor"][:, cols]],
                [storage.state["inner_momentum"][:, cols]],
                [storage.scratch[:, cols]],
                lr=inner_lr,
                momentum=group["momentum"],
                nesterov=group["nesterov"],
                weight_decay=group["weight_decay"],
                gamma=gamma,
            )
            if group["noise"] > 0.0:
                assert storage.noise is not None
                F.add_noise([y], [storage.noise[:, cols]], lr=inner_lr, noise=group["noise"])
            F.ema_update([storage.state["ema"][:, cols]], [y], alpha=group["alpha"])

    def _mean(self, name: str) -> dict[_StorageKey, Tensor]:
        """Mean over all replicas of a flat buffer, one collective per storage."""
        pending = {
            k: self.comm.mean_async(self._buffer(s, name)) for k, s in self._storages.items()
        }
        return {key: work.wait() for key, work in pending.items()}

    def _finite_rows(self, name: str) -> Tensor:
        """Which replicas of this process have finite values in ``name``.

        A row's sum is finite exactly when its entries are (NaN and inf propagate), so one read
        pass and no N-long mask; float64 keeps large finite rows from overflowing to inf.
        """
        rows = [
            torch.isfinite(self._buffer(s, name).sum(dim=1, dtype=torch.float64))
            for s in self._storages.values()
        ]
        valid = rows[0]
        for more in rows[1:]:
            valid = valid & more.to(valid.device)
        return valid

    def _launch(self, name: str, valid: Tensor) -> dict[_StorageKey, PendingMasked]:
        """Start the mean over the valid replicas of the job (one collective per storage)."""
        return {
            key: self.comm.masked_mean_async(self._buffer(s, name), valid.to(s.live.device))
            for key, s in self._storages.items()
        }

    @staticmethod
    def _collect(
        pending: dict[_StorageKey, PendingMasked],
    ) -> tuple[dict[_StorageKey, Tensor], Tensor]:
        results = {key: work.wait() for key, work in pending.items()}
        valid_global = next(iter(results.values()))[1].cpu()
        return {key: mean for key, (mean, _) in results.items()}, valid_global

    def _masked_mean(self, name: str, valid: Tensor) -> tuple[dict[_StorageKey, Tensor], Tensor]:
        """Mean over the valid replicas of the job, and which replicas of the job were valid."""
        return self._collect(self._launch(name, valid))

    def _stale_masked_mean(
        self, name: str, valid: Tensor
    ) -> tuple[dict[_StorageKey, Tensor], Tensor]:
        """Launch this outer step's mean and use the previous one's, so that the all-reduce runs
        behind the next inner loop (the first outer step waits for its own)."""
        launched = self._launch(name, valid)
        previous, self._in_flight = self._in_flight, launched
        return self._collect(previous if previous is not None else launched)

    def _average(self, name: str) -> tuple[dict[_StorageKey, Tensor], Tensor]:
        """The mean over replicas of ``name``, leaving out (and flagging) diverged replicas."""
        valid = self._finite_rows(name)
        if self.comm.num_replicas > 1:
            average = self._stale_masked_mean if self.overlap else self._masked_mean
            means, valid_global = average(name, valid)
        else:
            means = {key: self._buffer(s, name)[0] for key, s in self._storages.items()}
            valid_global = valid.cpu()
        self._require_some_valid(valid_global)
        self._valid_local = valid
        return means, valid_global

    def _exchange_validity(self, name: str) -> Tensor:
        """Which replicas of the job have finite ``name``: the flags alone, ``num_replicas``
        numbers in one small collective, for replicas that are not coupled this step."""
        valid = self._finite_rows(name)
        if self.comm.num_replicas > 1:
            storage = next(iter(self._storages.values()))
            empty = self._buffer(storage, name)[:, :0]
            valid_global = self.comm.masked_mean_async(empty, valid).wait()[1].cpu()
        else:
            valid_global = valid.cpu()
        self._require_some_valid(valid_global)
        self._valid_local = valid
        return valid_global

    def _require_some_valid(self, valid_global: Tensor) -> None:
        if not bool(valid_global.any()):
            raise DivergedError(
                f"all {self.comm.num_replicas} replica(s) have non-finite parameters at step "
                f"{self.num_steps + 1}; lower the learning rates (lr, inner_lr) or the couplings"
            )

    def _quarantine(self, valid_global: Tensor) -> None:
        """Reset diverged replicas to the reference of the others; log the event."""
        anchor = "live" if self.num_inner_steps == 0 else "anchor"
        references, _ = self._masked_mean(anchor, self._finite_rows(anchor) & self._valid_local)
        bad_rows = (~self._valid_local).nonzero().flatten().tolist()
        for key, storage in self._storages.items():
            for row in bad_rows:
                storage.live[row].copy_(references[key])
                for name, buf in storage.state.items():
                    if name in ("anchor", "ema"):
                        buf[row].copy_(references[key])
                    else:
                        buf[row].zero_()
        for replica in (~valid_global).nonzero().flatten().tolist():
            self.quarantine_events.append({"step": self.num_steps + 1, "replica": replica})

    @staticmethod
    def _buffer(storage: _Storage, name: str) -> Tensor:
        return storage.live if name == "live" else storage.state[name]

    def _outer_step(self) -> None:
        rho = self.rho_schedule.value
        means, valid_global = self._average("ema")
        if self._should_diagnose:
            self._measure(means, "anchor", gamma=self.gamma_schedule.value, rho=rho)
        for segment in self._segments:
            storage, cols = self._views(segment)
            group = self.param_groups[segment.group_index]
            F.outer_step(
                [storage.state["anchor"][:, cols]],
                [storage.state["ema"][:, cols]],
                [storage.state["outer_momentum"][:, cols]],
                [means[segment.key][cols]],
                [storage.scratch[:, cols]],
                lr=group["lr"],
                momentum=group["momentum"],
                nesterov=group["nesterov"],
                rho=rho,
            )
        for storage in self._storages.values():
            storage.live.copy_(storage.state["anchor"])
            storage.state["ema"].copy_(storage.state["anchor"])
        if not bool(valid_global.all()):
            self._quarantine(valid_global)

    def _elastic_step(self) -> None:
        rho = self.rho_schedule.value
        is_coupled = rho != 0.0 and self.comm.num_replicas > 1
        if is_coupled or self._should_diagnose:
            means, valid_global = self._average("live")
            if self._should_diagnose:
                self._measure(means, "live", gamma=0.0, rho=rho if is_coupled else 0.0)
        else:
            # uncoupled replicas (SGD, rho = 0) need no mean: only who diverged, for quarantine
            means, valid_global = None, self._exchange_validity("live")
        self._elastic_update(means if is_coupled else None, rho if is_coupled else 0.0)
        if not bool(valid_global.all()):
            self._quarantine(valid_global)

    def _elastic_update(self, means: dict[_StorageKey, Tensor] | None, rho: float) -> None:
        """The no-inner-loop Nesterov step on every segment (``means`` only when coupled)."""
        for segment in self._segments:
            storage, cols = self._views(segment)
            group = self.param_groups[segment.group_index]
            F.elastic_step(
                [storage.live[:, cols]],
                [storage.grad[:, cols]],
                [storage.state["outer_momentum"][:, cols]],
                [means[segment.key][cols] if means is not None else None],
                [storage.scratch[:, cols]],
                lr=group["lr"],
                momentum=group["momentum"],
                nesterov=group["nesterov"],
                weight_decay=group["weight_decay"],
                rho=rho,
            )

    # ------------------------------------------------------------------ diagnostics
    def request_diagnostics(self) -> None:
        """Measure the couplings during the next outer step; :meth:`pop_diagnostics` reads them.

        Off by default: the measurement is a few norms over the flat buffers, cheap next to the
        ``L`` minibatches of an outer step, but a logger asks only at the steps it records. Ask on
        every process at the same step: for replicas that are not coupled (SGD) the distance
        needs a mean those steps would not otherwise take, so it adds a collective.
        """
        self._should_diagnose = True

    def pop_diagnostics(self) -> dict[str, Any] | None:
        """What the last requested outer step measured, per replica of this process, or None.

        ``distance``: ``|z - r|``, how far each replica is from the others' consensus: its
        inner-loop average ``z`` against ``r = mean_a z^a``, the mean this outer step all-reduced
        (without an inner loop ``z = x``, so this is ``|x - mean_a x^a|``, the distance to the
        reference). ``elastic_force``: ``rho_t |x - r|``, the elastic pull on the anchor.
        ``prox_force``: ``gamma_t |y - x|``, the inner loop's proximal pull on its last
        iterate. ``entropy_grad``: ``gamma_t |x - z|``, the norm of the local-entropy gradient
        estimate (``grad f_t(x) = (x - <y>) / t`` with ``t = 1 / gamma`` and ``z`` estimating
        ``<y>``). The last two are 0 without an inner loop. CPU float64 tensors of shape
        ``[replicas_per_process]``, with the ``gamma`` and ``rho`` that step used.
        """
        diagnostics, self._diagnostics = self._diagnostics, None
        return diagnostics

    def _measure(
        self, means: dict[_StorageKey, Tensor], anchor: str, *, gamma: float, rho: float
    ) -> None:
        """Norms for :meth:`pop_diagnostics`, taken before the step moves the anchors."""
        self._should_diagnose = False
        squares: dict[str, Tensor] = {}

        def add(name: str, diff: Tensor) -> None:
            # one norm over all storages (devices, dtypes): sum the squares, in float64
            square = torch.linalg.vector_norm(diff, dim=1).double().square().cpu()
            squares[name] = squares[name] + square if name in squares else square

        for key, storage in self._storages.items():
            x = self._buffer(storage, anchor)
            z = storage.state["ema"] if anchor == "anchor" else x
            add("distance", torch.sub(z, means[key], out=storage.scratch))
            add("elastic", torch.sub(x, means[key], out=storage.scratch))
            if anchor == "anchor":
                add("prox", torch.sub(storage.live, x, out=storage.scratch))
                add("entropy", torch.sub(x, storage.state["ema"], out=storage.scratch))
        distance = squares["distance"].sqrt()
        zeros = torch.zeros_like(distance)
        self._diagnostics = {
            "gamma": gamma,
            "rho": rho,
            "distance": distance,
            "elastic_force": rho * squares["elastic"].sqrt(),
            "prox_force": gamma * squares["prox"].sqrt() if "prox" in squares else zeros,
            "entropy_grad": gamma * squares["entropy"].sqrt() if "entropy" in squares else zeros,
        }

    # ------------------------------------------------------------------ the reference
    @torch.no_grad()
    def reference(self) -> list[Tensor]:
        """``xbar = mean_a x^a``, one tensor per parameter of replica 0, in order.

        A collective: every process must call it at the same point. Mid outer step the anchors
        are still the last outer step's, so the reference is well defined at any call.
        """
        means = self._mean("live" if self.num_inner_steps == 0 else "anchor")
        return [
            means[key][column : column + p.numel()].view_as(p)
            for p, key, _, column in self._replica0_slots
        ]

    @torch.no_grad()
    def anchors(self, replica: int) -> list[Tensor]:
        """Replica ``replica``'s (local index) anchor ``x``, one tensor per parameter."""
        name = "live" if self.num_inner_steps == 0 else "anchor"
        out = []
        for p, key, row, column in self._param_slots:
            if row == replica:
                buf = self._buffer(self._storages[key], name)
                out.append(buf[row, column : column + p.numel()].view_as(p))
        return out

    @property
    def num_params_per_replica(self) -> int:
        return sum(s.live.shape[1] for s in self._storages.values())

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        state["parle"] = {
            "num_steps": self.num_steps,
            "num_inner_steps": self.num_inner_steps,
            "replicas_per_process": self.comm.replicas_per_process,
            "num_replicas": self.comm.num_replicas,
            "gamma_schedule": self.gamma_schedule.state_dict(),
            "rho_schedule": self.rho_schedule.state_dict(),
            "generators": [g.get_state() for s in self._storages.values() for g in s.generators],
            "in_flight": self._settle_in_flight(),
        }
        return state

    def _settle_in_flight(self) -> list[list[Tensor]] | None:
        """The pending (overlapped) mean as tensors, for exact resumption; it stays usable."""
        if self._in_flight is None:
            return None
        means, valid_global = self._collect(self._in_flight)
        self._in_flight = {key: Done((mean, valid_global)) for key, mean in means.items()}
        return [[means[key], valid_global] for key in self._storages]

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        state_dict = dict(state_dict)
        extra = state_dict.pop("parle", None)
        if extra is None:
            raise ValueError(
                "not a Parle optimizer state (no 'parle' entry); was it saved by Parle?"
            )
        for name in ("num_inner_steps", "replicas_per_process", "num_replicas"):
            mine = {
                "num_inner_steps": self.num_inner_steps,
                "replicas_per_process": self.comm.replicas_per_process,
                "num_replicas": self.comm.num_replicas,
            }[name]
            if extra[name] != mine:
                raise ValueError(
                    f"optimizer state was saved with {name}={extra[name]} but this run has {mine}; "
                    "resume with the same settings"
                )
        super().load_state_dict(state_dict)
        with torch.no_grad():
            for p, key, row, column in self._param_slots:
                storage = self._storages[key]
                loaded = self.state[p]
                for name, buf in storage.state.items():
                    if name not in loaded or loaded[name].shape != p.shape:
                        raise ValueError(
                            "optimizer state does not match this model (a parameter's saved "
                            f"'{name}' is missing or has another shape); was it saved for another "
                            "model?"
                        )
                    buf[row, column : column + p.numel()].copy_(loaded[name].reshape(-1))
        self._link_state()
        self.num_steps = int(extra["num_steps"])
        self.gamma_schedule.load_state_dict(extra["gamma_schedule"])
        self.rho_schedule.load_state_dict(extra["rho_schedule"])
        generators = [g for s in self._storages.values() for g in s.generators]
        if len(generators) != len(extra["generators"]):
            raise ValueError(
                "optimizer state has another number of noise generators; was noise on?"
            )
        for generator, saved in zip(generators, extra["generators"]):
            generator.set_state(saved)
        saved_in_flight = extra.get("in_flight")
        self._in_flight = None
        if saved_in_flight is not None:
            self._in_flight = {
                key: Done((mean.to(s.live.device), valid.to(s.live.device)))
                for (key, s), (mean, valid) in zip(self._storages.items(), saved_in_flight)
            }


def replica_param_groups(
    replicas: Iterable[Iterable[Tensor]], **options: Any
) -> list[dict[str, Any]]:
    """Parameter groups for several replicas in one process, e.g.
    ``Parle(replica_param_groups(m.parameters() for m in models), lr=0.1)``."""
    return [{"params": list(params), "replica": a, **options} for a, params in enumerate(replicas)]
