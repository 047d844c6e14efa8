"""The exchange with the other replicas: masked means over the replicas that have not diverged."""

from __future__ import annotations

import torch
from torch import Tensor

from elastic_entropy.comm.base import Communicator, Done, LocalCommunicator, PendingMasked
from elastic_entropy.optim.flat_buffers import FlatBuffers, StorageKey

Pending = dict[StorageKey, PendingMasked]
Means = dict[StorageKey, Tensor]


class DivergedError(RuntimeError):
    """Every replica has non-finite parameters: nothing is left to average."""


def checked_communicator(comm: Communicator | None, num_replicas: int) -> Communicator:
    """``comm``, checked to hold this process's replicas (``None``: all replicas are here)."""
    comm = comm if comm is not None else LocalCommunicator(num_replicas)
    if comm.replicas_per_process != num_replicas:
        raise ValueError(
            f"the optimizer holds {num_replicas} replica(s) but the communicator expects "
            f"{comm.replicas_per_process} per process; build the communicator with "
            f"replicas_per_process={num_replicas}"
        )
    return comm


class Consensus:
    """The mean over the replicas of the job of a flat buffer, leaving out diverged replicas.

    One collective per storage of :class:`FlatBuffers` (one in the usual case). As in torchft's
    local SGD, :meth:`prepare_sync` launches the collectives and :meth:`perform_sync` waits for
    them; with ``overlap`` a mean is launched at one outer step and used at the next, so that it
    runs behind the inner loop in between (:meth:`settle_in_flight` makes it a checkpointable
    value). A replica whose buffer is not finite is left out of the mean, then reset to the
    reference of the others (:meth:`quarantine`); ``quarantine_events`` records each reset.
    """

    def __init__(self, buffers: FlatBuffers, comm: Communicator, *, overlap: bool) -> None:
        self.buffers = buffers
        self.comm = comm
        self.overlap = overlap
        # the all-reduce launched at the last outer step, collected at the next (overlap=True)
        self.in_flight: Pending | None = None
        self.quarantine_events: list[dict[str, int]] = []  # diverged replicas reset, for logs
        self._valid_local = torch.ones(comm.replicas_per_process, dtype=torch.bool)

    # ------------------------------------------------------------------ collectives
    def reference(self) -> Means:
        """The mean of the anchors over the replicas of the job where they are finite, one
        collective per storage that every process runs (:class:`DivergedError` if none is).

        Masked: a replica that diverged in the last outer step, not yet reset, would otherwise
        make the reference NaN."""
        anchor = self.buffers.anchor_name
        means, valid_global = self._reference_mean(anchor, self.buffers.finite_rows(anchor))
        if not bool(valid_global.any()):
            raise DivergedError(
                f"all {self.comm.num_replicas} replica(s) have non-finite anchors: there is no "
                "reference; lower the learning rates (lr, inner_lr) or the couplings"
            )
        return means

    def prepare_sync(self, name: str, valid: Tensor, *, is_outer_mean: bool = True) -> Pending:
        """Start the mean over the valid replicas of the job (one collective per storage)."""
        return {
            key: self.comm.masked_mean_async(buf, valid.to(buf.device), is_outer_mean=is_outer_mean)
            for key, buf in self.buffers.flat(name).items()
        }

    @staticmethod
    def perform_sync(pending: Pending) -> tuple[Means, Tensor]:
        """Wait for :meth:`prepare_sync`'s collectives: the means, and which replicas were valid."""
        results = {key: work.wait() for key, work in pending.items()}
        valid_global = next(iter(results.values()))[1].cpu()
        return {key: mean for key, (mean, _) in results.items()}, valid_global

    def masked_mean(self, name: str, valid: Tensor) -> tuple[Means, Tensor]:
        """Mean over the valid replicas of the job, and which replicas of the job were valid."""
        return self.perform_sync(self.prepare_sync(name, valid))

    def _reference_mean(self, name: str, valid: Tensor) -> tuple[Means, Tensor]:
        """A job-wide masked mean that is no outer step's: it leaves a period's phase alone."""
        return self.perform_sync(self.prepare_sync(name, valid, is_outer_mean=False))

    def _stale_masked_mean(self, name: str, valid: Tensor) -> tuple[Means, Tensor]:
        """Launch this outer step's mean and use the previous one's, so that the all-reduce runs
        behind the next inner loop (the first outer step waits for its own).

        The flags returned are this step's, not the stale mean's: a replica that diverged since
        that mean was launched must be reset now, and one reset at the last step must not be
        flagged again. Across processes they cost one small blocking collective per outer step
        (``num_replicas`` numbers); the launched mean already leaves out this step's
        non-finite rows (``valid``)."""
        launched = self.prepare_sync(name, valid)
        previous, self.in_flight = self.in_flight, launched
        means, _ = self.perform_sync(previous if previous is not None else launched)
        if self.comm.num_replicas == self.comm.replicas_per_process:
            return means, valid.cpu()  # every replica is here: nothing to ask
        return means, self._agree_validity(name, valid, is_outer_mean=False)

    def _agree_validity(self, name: str, valid: Tensor, *, is_outer_mean: bool) -> Tensor:
        """Which replicas of the job are valid, from each process's ``valid``: the flags alone,
        ``num_replicas`` numbers in one small collective."""
        empty = next(iter(self.buffers.flat(name).values()))[:, :0]
        pending = self.comm.masked_mean_async(empty, valid, is_outer_mean=is_outer_mean)
        return pending.wait()[1].cpu()

    # ------------------------------------------------------------------ the exchange of a step
    def average(self, name: str, step: int) -> tuple[Means, Tensor]:
        """The mean over replicas of ``name``, leaving out (and flagging) diverged replicas."""
        valid = self.buffers.finite_rows(name)
        if self.comm.num_replicas > 1:
            average = self._stale_masked_mean if self.overlap else self.masked_mean
            means, valid_global = average(name, valid)
        else:
            means = {key: buf[0] for key, buf in self.buffers.flat(name).items()}
            valid_global = valid.cpu()
        self._require_some_valid(valid_global, step)
        self._valid_local = valid
        return means, valid_global

    def exchange_validity(self, name: str, step: int) -> Tensor:
        """Which replicas of the job have finite ``name``: the flags alone, ``num_replicas``
        numbers in one small collective, for replicas that are not coupled this step."""
        valid = self.buffers.finite_rows(name)
        if self.comm.num_replicas > 1:
            valid_global = self._agree_validity(name, valid, is_outer_mean=True)
        else:
            valid_global = valid.cpu()
        self._require_some_valid(valid_global, step)
        self._valid_local = valid
        return valid_global

    def _require_some_valid(self, valid_global: Tensor, step: int) -> None:
        if not bool(valid_global.any()):
            raise DivergedError(
                f"all {self.comm.num_replicas} replica(s) have non-finite parameters at step "
                f"{step}; lower the learning rates (lr, inner_lr) or the couplings"
            )

    def quarantine(self, valid_global: Tensor | None, step: int) -> None:
        """Reset the replicas that :meth:`average` found diverged to the reference of the others
        (the mean of their anchors now); record one event per diverged replica of the job.

        ``valid_global`` is what :meth:`average` or :meth:`exchange_validity` returned (``None``:
        nothing was checked this step)."""
        if valid_global is None or bool(valid_global.all()):
            return
        anchor = self.buffers.anchor_name
        valid = self.buffers.finite_rows(anchor) & self._valid_local
        # every process runs it (the flags are the job's), and no outer step's phase moves
        references, _ = self._reference_mean(anchor, valid)
        self.buffers.reset_rows((~self._valid_local).nonzero().flatten().tolist(), references)
        for replica in (~valid_global).nonzero().flatten().tolist():
            self.quarantine_events.append({"step": step, "replica": replica})

    # ------------------------------------------------------------------ checkpoints
    def settle_in_flight(self) -> list[list[Tensor]] | None:
        """The pending (overlapped) mean as tensors, for exact resumption; it stays usable."""
        if self.in_flight is None:
            return None
        means, valid_global = self.perform_sync(self.in_flight)
        self.in_flight = {key: Done((mean, valid_global)) for key, mean in means.items()}
        return [[means[key], valid_global] for key in self.buffers.storages]

    def load_in_flight(self, saved: list[list[Tensor]] | None) -> None:
        """Restore what :meth:`settle_in_flight` saved (``None``: nothing was in flight)."""
        self.in_flight = None
        if saved is not None:
            self.in_flight = {
                key: Done((mean.to(s.live.device), valid.to(s.live.device)))
                for (key, s), (mean, valid) in zip(self.buffers.storages.items(), saved)
            }
