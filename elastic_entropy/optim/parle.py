"""Parle: replicas running Entropy-SGD, elastically coupled to their average."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor
from torch.optim import Optimizer

from elastic_entropy.comm.base import Communicator
from elastic_entropy.defaults import NUM_INNER_STEPS
from elastic_entropy.optim import checks
from elastic_entropy.optim import segment_steps as steps
from elastic_entropy.optim.adamw import ADAM_STATE, adamw_inner_step
from elastic_entropy.optim.consensus import Consensus, DivergedError, Means, checked_communicator
from elastic_entropy.optim.diagnostics import DIAGNOSTICS, measure
from elastic_entropy.optim.flat_buffers import FlatBuffers, group_replicas, replica_param_groups
from elastic_entropy.optim.fused import fused_steps
from elastic_entropy.optim.inner_lr import follow_lr
from elastic_entropy.optim.parle_checkpoint import ParleCheckpoint
from elastic_entropy.scoping import Schedule

__all__ = ["DIAGNOSTICS", "DivergedError", "Parle", "replica_param_groups"]

# each replica's state, without and with an inner loop (of SGD, or of AdamW: Entropy-Adam)
_STATE_NAMES = {
    False: ("outer_momentum",),
    True: ("anchor", "ema", "inner_momentum", "outer_momentum"),
}
INNER_OPTIMIZERS = ("sgd", "adamw")


class Parle(ParleCheckpoint, Optimizer):
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
    and gradients become views of flat ``[replicas, N]`` buffers, one per device and dtype
    (``self.buffers``), so an outer step all-reduces one buffer (``self.consensus``);
    :meth:`zero_grad` zeroes that buffer in place. Variants without an inner loop (local SGD,
    data-parallel SGD) override one hook, :meth:`exchange`.

    ``same_init=True`` (the default) makes every process start from the first process's replicas,
    as DDP does (one broadcast when the optimizer is built, collective on every process); the
    replicas of one process are left as given: load one ``state_dict`` into them. ``False`` lets
    the processes' replicas start where each was built (each its own initialisation, as the
    authors started theirs); either way the anchors, their averages and the reference start at
    the replicas' parameters, ``xbar = mean_a x^a``. An explicit ``inner_lr`` follows ``lr``:
    when an LR scheduler moves ``lr``, the next :meth:`step` scales ``group["inner_lr"]`` by as
    much (see :mod:`~elastic_entropy.optim.inner_lr`); ``inner_lr_follows_lr=False`` leaves it
    where it is (the authors' ``llr`` stayed at 0.1 while their lr dropped).

    Example::

        opt = Parle(model.parameters(), lr=0.1, num_inner_steps=10, gamma=0.03, rho=1.0)
        loss_fn(model(x), y).backward(); opt.step(); opt.zero_grad()
        torch.nn.utils.vector_to_parameters(torch.cat([t.flatten() for t in opt.reference()]), ...)
    """

    # the Entropy-SGD authors' variant of the inner and outer steps (see EntropySGD)
    _couple_after_momentum = False  # the coupling joins after the inner momentum
    _resets_inner_momentum = False  # the inner momentum restarts from 0 every outer step
    _outer_weight_decay = False  # the outer step adds wd x too

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]],
        lr: float,
        *,
        inner_lr: float | None = None,
        momentum: float = 0.9,
        nesterov: bool = True,
        num_inner_steps: int = NUM_INNER_STEPS,
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
        same_init: bool = True,
        inner_lr_follows_lr: bool = True,
        inner_optimizer: str = "sgd",
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        fused: bool | None = None,
    ) -> None:
        checks.check_steps_and_couplings(num_inner_steps, gamma, rho)
        if inner_optimizer not in INNER_OPTIMIZERS:
            raise ValueError(
                f"Invalid inner_optimizer value: {inner_optimizer!r} (choose sgd or adamw)"
            )
        self.inner_optimizer = inner_optimizer
        defaults = {
            "lr": lr,
            "inner_lr": inner_lr,
            "momentum": momentum,
            "nesterov": nesterov,
            "alpha": alpha,
            "noise": noise,
            "weight_decay": weight_decay,
            "replica": 0,
            "betas": tuple(betas),  # the AdamW inner step's (inner_optimizer=adamw)
            "eps": eps,
        }
        super().__init__(params, defaults)
        follow_lr(self.param_groups)  # remember each explicit inner_lr against its lr
        self.inner_lr_follows_lr = inner_lr_follows_lr
        self.num_inner_steps = num_inner_steps
        is_noisy = any(g["noise"] > 0.0 for g in self.param_groups)
        checks.check_noise(num_inner_steps, is_noisy)
        self.gamma_schedule = gamma_schedule if gamma_schedule is not None else Schedule(gamma)
        self.rho_schedule = rho_schedule if rho_schedule is not None else Schedule(rho)
        replicas = group_replicas(self.param_groups, checks.SHARED_HYPER)
        self.comm: Communicator = checked_communicator(comm, len(replicas))
        self.num_steps = 0
        # coupling diagnostics: measured during one outer step, only when asked for, so that
        # training without a logger pays nothing (see request_diagnostics)
        self._should_diagnose = False
        self._diagnostics: dict[str, Any] | None = None
        self._couplings: dict[str, float] | None = None  # those of the last step() (couplings)
        self.buffers = FlatBuffers(self.param_groups, replicas, self._state_names(num_inner_steps))
        if same_init:
            self.buffers.broadcast_live(self.comm)
        self.buffers.link_state(self.state)
        if is_noisy:
            self.buffers.add_generators(seed, self.comm.replica_offset)
        self.consensus = Consensus(self.buffers, self.comm, overlap=overlap)
        # one compiled pass per update (see optim.fused); None: the eager reference steps
        self._fused = fused_steps(fused, [key[0] for key in self.buffers.storages])
        is_elastic = num_inner_steps > 0 or self.comm.num_replicas > 1  # alone with L = 0: x = r
        checks.check_stability(self.param_groups, self.rho_schedule.upper_bound, is_elastic)
        self._built = True

    # ------------------------------------------------------------------ construction
    def add_param_group(self, param_group: dict[str, Any]) -> None:
        if getattr(self, "_built", False):
            raise ValueError(
                "Parle lays its parameters out in flat buffers when it is built; pass every "
                "parameter group to the constructor instead of add_param_group()"
            )
        super().add_param_group(param_group)
        checks.check_group(self.param_groups[-1])

    # ------------------------------------------------------------------ where the run is
    def _state_names(self, num_inner_steps: int) -> tuple[str, ...]:
        if self.inner_optimizer == "adamw" and num_inner_steps > 0:
            return ("anchor", "ema", *ADAM_STATE, "outer_momentum")
        return _STATE_NAMES[num_inner_steps > 0]

    @property
    def num_replicas(self) -> int:
        """Replicas in the whole job."""
        return self.comm.num_replicas

    @property
    def num_params_per_replica(self) -> int:
        return self.buffers.num_params_per_replica

    @property
    def is_fused(self) -> bool:
        """Whether the steps run fused (``fused``; False once a compile failed)."""
        return self._fused is not None and self._fused.is_active

    @property
    def overlap(self) -> bool:
        return self.consensus.overlap

    @property
    def steps_per_exchange(self) -> int:
        """Minibatches per outer step, i.e. per exchange with the other replicas (``L``, or 1)."""
        return max(1, self.num_inner_steps)

    @property
    def is_outer_step_done(self) -> bool:
        """True between outer steps, when the live parameters hold the anchors."""
        return self.num_steps % self.steps_per_exchange == 0

    @property
    def couplings(self) -> dict[str, float]:
        """``{"gamma": gamma_t, "rho": rho_t}`` as the last :meth:`step` read them, before the
        schedules moved on (before any step here, the schedules' current values)."""
        if self._couplings is None:
            return {"gamma": self.gamma_schedule.value, "rho": self.rho_schedule.value}
        return dict(self._couplings)

    @property
    def quarantine_events(self) -> list[dict[str, int]]:
        """``{"step", "replica"}`` per diverged replica reset to the others' reference."""
        return self.consensus.quarantine_events

    def pop_quarantine_events(self) -> list[dict[str, int]]:
        """The quarantine events since the last call (``quarantine_events`` is emptied)."""
        events = list(self.quarantine_events)
        self.quarantine_events.clear()
        return events

    # ------------------------------------------------------------------ stepping
    def zero_grad(self, set_to_none: bool = True) -> None:
        """Zero the flat gradient buffers in place (``set_to_none`` is ignored: gradients stay
        views of the buffer so that backward accumulates straight into it)."""
        self.buffers.zero_grad()

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:  # type: ignore[override]
        self._couplings = {"gamma": self.gamma_schedule.value, "rho": self.rho_schedule.value}
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        if self.inner_lr_follows_lr:
            follow_lr(self.param_groups)  # an LR scheduler may have moved lr since the last step
        self.buffers.gather_grads()
        if self.num_inner_steps == 0:
            self.consensus.quarantine(self.exchange(), self.num_steps + 1)
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

    def _inner_step(self) -> None:
        gamma = self.gamma_schedule.value
        self.buffers.draw_noise()
        for segment, storage in self.buffers.segment_storages():
            group, cols = self.param_groups[segment.group_index], segment.cols
            inner_lr = group["inner_lr"] if group["inner_lr"] is not None else group["lr"]
            if self.inner_optimizer == "adamw":
                # Entropy-Adam: the moments persist across outer steps, as Adam's
                adamw_inner_step(storage, group, cols, self.num_steps + 1, inner_lr, gamma)
                steps.noise_and_average(storage, group, cols, inner_lr)
            else:
                couple_after = self._couple_after_momentum
                steps.sgd_inner(
                    self._fused, storage, group, cols, inner_lr=inner_lr, gamma=gamma,
                    couple_after_momentum=couple_after,
                )  # fmt: skip

    def _outer_step(self) -> None:
        rho = self.rho_schedule.value
        means, valid_global = self.average("ema", rho=rho, gamma=self.gamma_schedule.value)
        steps.outer(
            self._fused,
            self.buffers,
            self.param_groups,
            means,
            rho=rho,
            outer_weight_decay=self._outer_weight_decay,
            resets_inner_momentum=self._resets_inner_momentum,
        )
        self.consensus.quarantine(valid_global, self.num_steps + 1)

    # ------------------------------------------------------------------ the exchange hook
    def exchange(self) -> Tensor | None:
        """One step without an inner loop: exchange with the other replicas and update.

        The one hook a variant overrides (local SGD, data-parallel SGD); :meth:`average` and
        :meth:`elastic_update` are its parts, called in the order the algorithm needs. Returns
        which replicas of the job had finite parameters (the flags of :meth:`average`), so that
        :meth:`step` then resets the diverged ones to the others' reference; ``None`` where this
        step checked none.

        Here: ``d = grad f_B(x) + wd x + rho_t (x - mean_a x^a)``. Replicas that are not coupled
        (``rho = 0``, or alone) take no mean unless diagnostics ask for one, only the flags.
        """
        rho = self.rho_schedule.value
        if rho != 0.0 and self.comm.num_replicas > 1:
            means, valid_global = self.average("live", rho=rho)
            self.elastic_update(means, rho)
            return valid_global
        if self._should_diagnose:
            _, valid_global = self.average("live", rho=0.0)
        else:
            valid_global = self.consensus.exchange_validity("live", self.num_steps + 1)
        self.elastic_update()
        return valid_global

    def average(self, name: str, *, rho: float, gamma: float = 0.0) -> tuple[Means, Tensor]:
        """``mean_a`` of the buffer ``name`` over the replicas where it is finite, and which those
        were (:class:`DivergedError` if none); requested diagnostics are measured against it."""
        means, valid_global = self.consensus.average(name, self.num_steps + 1)
        if self._should_diagnose:
            self._should_diagnose = False
            self._diagnostics = measure(self.buffers, means, gamma=gamma, rho=rho)
        return means, valid_global

    def elastic_update(self, means: Means | None = None, rho: float = 0.0) -> None:
        """The no-inner-loop Nesterov step on the live parameters of every replica, on the
        gradient plus ``rho (x - means)`` (``means`` only when coupled)."""
        steps.elastic(self._fused, self.buffers, self.param_groups, means, rho)

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
        """What the last requested outer step measured, per replica of this process, or None
        (:data:`DIAGNOSTICS`, explained in :mod:`~elastic_entropy.optim.diagnostics`)."""
        diagnostics, self._diagnostics = self._diagnostics, None
        return diagnostics

    # ------------------------------------------------------------------ the reference
    @torch.no_grad()
    def reference(self) -> list[Tensor]:
        """``xbar = mean_a x^a`` over the finite anchors, one tensor per parameter of replica 0.

        A collective: every process must call it at the same point. Mid outer step the anchors
        are still the last outer step's, so the reference is well defined at any call.
        """
        return self.buffers.unflatten(self.consensus.reference())

    @torch.no_grad()
    def anchors(self, replica: int) -> list[Tensor]:
        """Replica ``replica``'s (local index) anchor ``x``, one tensor per parameter."""
        return self.buffers.anchors(replica)
