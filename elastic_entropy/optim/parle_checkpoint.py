"""Parle's checkpoint: the optimizer's state with its counters, schedules, noise generators and
in-flight mean, and the settings a checkpoint must have been saved with to resume."""

from __future__ import annotations

from typing import Any

from elastic_entropy.comm.base import Communicator
from elastic_entropy.optim import checks
from elastic_entropy.optim.consensus import Consensus
from elastic_entropy.optim.flat_buffers import FlatBuffers
from elastic_entropy.scoping import Schedule


class ParleCheckpoint:
    """``state_dict`` / ``load_state_dict`` of :class:`~elastic_entropy.optim.Parle` (a mixin:
    the attributes are Parle's)."""

    num_steps: int
    num_inner_steps: int
    gamma_schedule: Schedule
    rho_schedule: Schedule
    buffers: FlatBuffers
    consensus: Consensus
    comm: Communicator
    state: Any
    _couplings: dict[str, float] | None

    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()  # type: ignore[misc]
        state["parle"] = {
            "num_steps": self.num_steps,
            **self._settings(),
            "gamma_schedule": self.gamma_schedule.state_dict(),
            "rho_schedule": self.rho_schedule.state_dict(),
            "generators": self.buffers.generator_states(),
            "in_flight": self.consensus.settle_in_flight(),
        }
        return state

    def _settings(self) -> dict[str, int]:
        """What a checkpoint must have been saved with to resume here."""
        return {
            "num_inner_steps": self.num_inner_steps,
            "replicas_per_process": self.comm.replicas_per_process,
            "num_replicas": self.comm.num_replicas,
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        state_dict = dict(state_dict)
        extra = checks.check_resumable(state_dict.pop("parle", None), self._settings())
        super().load_state_dict(state_dict)  # type: ignore[misc]
        self.buffers.load_state(self.state)
        self.num_steps = int(extra["num_steps"])
        self.gamma_schedule.load_state_dict(extra["gamma_schedule"])
        self.rho_schedule.load_state_dict(extra["rho_schedule"])
        self.buffers.load_generator_states(extra["generators"])
        self.consensus.load_in_flight(extra.get("in_flight"))
        self._couplings = None
