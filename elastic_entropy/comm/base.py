"""The communicator protocol: the mean over all replicas of a stacked flat buffer.

A process holds ``replicas_per_process`` replicas; their flat buffers are the rows of one
``[replicas_per_process, N]`` tensor. The mean over all replicas of the job is taken first over
the rows (in the process), then across processes with one all-reduce of one ``N``-long buffer.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Protocol, runtime_checkable

import torch


@dataclass
class CommStats:
    """What a communicator has sent, counted where it happens (never estimated).

    ``bytes_per_replica`` is the payload each replica contributes to the averages: the number that
    compares with data-parallel SGD, where every worker all-reduces its whole gradient every
    minibatch. It is the same for every layout of the replicas (1x4, 2x2 or 4x1).
    """

    num_collectives: int = 0
    bytes_per_replica: int = 0
    # seconds this process blocked in wait() on a collective across processes: two clock reads
    # per collective, no synchronisation of its own (with NCCL, wait() only orders the CUDA
    # stream, so this stays near 0 there; with gloo it is the time the all-reduce took)
    wait_s: float = 0.0
    # per-outer-step means taken (the masked ones): the phase of a coarser inter-node period
    num_outer_means: int = 0

    def record(self, buf: torch.Tensor, extra_elements: int = 0) -> None:
        self.num_collectives += 1
        self.bytes_per_replica += (buf[0].numel() + extra_elements) * buf.element_size()

    def state_dict(self) -> dict[str, Any]:
        """Every field by name: what checkpoints have always kept (``asdict`` of the stats)."""
        return asdict(self)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        # num_outer_means too: a period across nodes keeps its phase on resume
        for name, value in state.items():
            setattr(self, name, value)


class Pending(Protocol):
    def wait(self) -> torch.Tensor: ...


class PendingMasked(Protocol):
    def wait(self) -> tuple[torch.Tensor, torch.Tensor]: ...


def tree_sum(rows: torch.Tensor) -> torch.Tensor:
    """The sum over the first axis, halves first: ``(a + b) + (c + d)``, the order in which an
    all-reduce across two processes of two rows each adds them, so that a job gives the same
    bits as 1 x 4 or 2 x 2 (and 1 x 2 or 2 x 1) processes x replicas. One new tensor per pair
    of rows, each added into in place: no copy of a row."""
    if rows.shape[0] == 0:  # every replica diverged: a sum of nothing
        return rows.new_zeros(rows.shape[1:])
    total = _halves(rows)
    return total.clone() if rows.shape[0] == 1 else total


def _halves(rows: torch.Tensor) -> torch.Tensor:
    """``tree_sum`` of one or more rows; a single row is returned as the view it is."""
    if rows.shape[0] == 1:
        return rows[0]
    half = (rows.shape[0] + 1) // 2
    left, right = _halves(rows[:half]), _halves(rows[half:])
    # a left half of one row is a view of the caller's buffer: a new tensor, never into it
    return left.add_(right) if half > 1 else left + right


def pack_masked(
    buf: torch.Tensor, valid: torch.Tensor, offset: int, num_replicas: int
) -> torch.Tensor:
    """``[sum of the valid rows, one flag per replica of the job]`` in one flat buffer.

    Invalid rows (non-finite parameters) are left out of the sum rather than multiplied by zero,
    since NaN * 0 is NaN. The flags tell every process which replicas of the job were kept.
    """
    total = tree_sum(buf if bool(valid.all()) else buf[valid])
    flags = torch.zeros(num_replicas, dtype=buf.dtype, device=buf.device)
    flags[offset : offset + buf.shape[0]] = valid.to(buf.dtype)
    return torch.cat([total, flags])


def unpack_masked(packed: torch.Tensor, num_replicas: int) -> tuple[torch.Tensor, torch.Tensor]:
    total, flags = packed[:-num_replicas], packed[-num_replicas:] > 0.5
    return total.div_(max(int(flags.sum()), 1)), flags


@runtime_checkable
class Communicator(Protocol):
    """Mean over every replica of the job; the only way an optimizer talks to its peers."""

    replicas_per_process: int
    stats: CommStats

    @property
    def num_replicas(self) -> int:
        """Replicas in the whole job: processes x replicas per process."""
        ...

    @property
    def replica_offset(self) -> int:
        """Global index of this process's first replica."""
        ...

    def mean_async(self, buf: torch.Tensor) -> Pending:
        """Start the mean over all replicas of ``buf`` (``[replicas_per_process, N]``)."""
        ...

    def mean(self, buf: torch.Tensor) -> torch.Tensor:
        """The mean over all replicas, an ``N``-long tensor."""
        ...

    def masked_mean_async(
        self, buf: torch.Tensor, valid: torch.Tensor, *, is_outer_mean: bool = True
    ) -> PendingMasked:
        """Mean over the replicas whose ``valid`` flag is set, and every replica's flag.

        ``is_outer_mean``: an outer step's mean, counted in ``stats.num_outer_means`` (the phase
        of a coarser inter-node period). ``False``: a mean of the reference (quarantine,
        :meth:`Parle.reference`), over the whole job and leaving that phase alone, so that a
        call only some steps make cannot shift one node's schedule against another's.
        """
        ...

    def broadcast(self, buf: torch.Tensor) -> None:
        """Overwrite ``buf`` (``[replicas_per_process, N]``) with the first process's, in place.

        For a common start, as DDP gives one: not counted in :attr:`stats`, which count what the
        algorithm sends. Rows of one process are left as they are (they are the caller's).
        """
        ...


class Done:
    """A result that is already there, behind the same ``wait()`` as a collective in flight."""

    def __init__(self, value: Any) -> None:
        self._value = value

    def wait(self) -> Any:
        return self._value


def check_stacked(buf: torch.Tensor, replicas_per_process: int) -> None:
    if buf.dim() != 2 or buf.shape[0] != replicas_per_process:
        raise ValueError(
            f"expected a [{replicas_per_process}, N] buffer (one row per replica of this process), "
            f"got shape {tuple(buf.shape)}"
        )


class LocalCommunicator:
    """All replicas live in this process (one process, any number of replicas; n = 1 included).

    Nothing crosses a process boundary, but the payload is still counted per replica so that a run
    reports what the same replicas would send as separate workers.
    """

    def __init__(self, replicas_per_process: int = 1) -> None:
        if replicas_per_process < 1:
            raise ValueError(f"Invalid replicas_per_process: {replicas_per_process} (must be >= 1)")
        self.replicas_per_process = replicas_per_process
        self.stats = CommStats()

    @property
    def num_replicas(self) -> int:
        return self.replicas_per_process

    @property
    def replica_offset(self) -> int:
        return 0

    def mean_async(self, buf: torch.Tensor) -> Pending:
        return Done(self.mean(buf))

    def mean(self, buf: torch.Tensor) -> torch.Tensor:
        check_stacked(buf, self.replicas_per_process)
        if self.replicas_per_process == 1:
            # alone: nothing to average and nothing to send
            return buf[0].clone()
        self.stats.record(buf)
        # sum then divide, the same arithmetic as the all-reduce across processes
        return tree_sum(buf).div_(self.replicas_per_process)

    def masked_mean_async(
        self, buf: torch.Tensor, valid: torch.Tensor, *, is_outer_mean: bool = True
    ) -> PendingMasked:
        check_stacked(buf, self.replicas_per_process)
        self.stats.num_outer_means += int(is_outer_mean)
        if self.replicas_per_process > 1:
            self.stats.record(buf, extra_elements=self.replicas_per_process)
        packed = pack_masked(buf, valid, 0, self.replicas_per_process)
        return Done(unpack_masked(packed, self.replicas_per_process))

    def broadcast(self, buf: torch.Tensor) -> None:
        # this process is the first: its replicas start as the caller built them
        check_stacked(buf, self.replicas_per_process)

    def __repr__(self) -> str:
        return f"LocalCommunicator(replicas_per_process={self.replicas_per_process})"
