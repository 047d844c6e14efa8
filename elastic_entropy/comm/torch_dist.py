"""A communicator over ``torch.distributed`` (gloo on CPUs, NCCL on GPUs)."""

from __future__ import annotations

import time

import torch
import torch.distributed as dist

from elastic_entropy.comm.base import (
    CommStats,
    Pending,
    PendingMasked,
    check_stacked,
    pack_masked,
    unpack_masked,
)


def _timed_wait(work: dist.Work, stats: CommStats) -> None:
    started = time.perf_counter()
    work.wait()
    stats.wait_s += time.perf_counter() - started


class _AllReduce:
    """An all-reduce in flight; ``wait()`` may be called any number of times."""

    def __init__(
        self, work: dist.Work | None, total: torch.Tensor, num_replicas: int, stats: CommStats
    ) -> None:
        self._work = work
        self._total = total
        self._num_replicas = num_replicas
        self._stats = stats
        self._result: torch.Tensor | None = None

    def wait(self) -> torch.Tensor:
        if self._result is None:
            if self._work is not None:
                _timed_wait(self._work, self._stats)
                self._work = None
            self._result = self._total.div_(self._num_replicas)
        return self._result


class _MaskedAllReduce:
    """A masked all-reduce in flight; ``wait()`` may be called any number of times."""

    def __init__(
        self, work: dist.Work | None, packed: torch.Tensor, num_replicas: int, stats: CommStats
    ) -> None:
        self._work = work
        self._packed = packed
        self._num_replicas = num_replicas
        self._stats = stats
        self._result: tuple[torch.Tensor, torch.Tensor] | None = None

    def wait(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self._result is None:
            if self._work is not None:
                _timed_wait(self._work, self._stats)
                self._work = None
            self._result = unpack_masked(self._packed, self._num_replicas)
        return self._result


class DistributedCommunicator:
    """Mean over ``world_size x replicas_per_process`` replicas.

    The rows of this process are summed first, then one all-reduce (SUM) of that single flat
    buffer crosses processes, then one division: one collective per call whatever the layout.
    """

    def __init__(
        self, replicas_per_process: int = 1, group: dist.ProcessGroup | None = None
    ) -> None:
        if not dist.is_available() or not dist.is_initialized():
            raise RuntimeError(
                "DistributedCommunicator needs an initialised process group; call "
                "elastic_entropy.distributed.init_distributed() first (or use LocalCommunicator)"
            )
        if replicas_per_process < 1:
            raise ValueError(f"Invalid replicas_per_process: {replicas_per_process} (must be >= 1)")
        self.replicas_per_process = replicas_per_process
        self.group = group
        self.world_size = dist.get_world_size(group)
        self.rank = dist.get_rank(group)
        self.stats = CommStats()

    @property
    def num_replicas(self) -> int:
        return self.world_size * self.replicas_per_process

    @property
    def replica_offset(self) -> int:
        return self.rank * self.replicas_per_process

    def mean_async(self, buf: torch.Tensor) -> Pending:
        check_stacked(buf, self.replicas_per_process)
        total = buf.sum(dim=0)
        if self.num_replicas == 1:
            return _AllReduce(None, total, 1, self.stats)
        self.stats.record(buf)
        if self.world_size == 1:
            return _AllReduce(None, total, self.num_replicas, self.stats)
        work = dist.all_reduce(total, op=dist.ReduceOp.SUM, group=self.group, async_op=True)
        return _AllReduce(work, total, self.num_replicas, self.stats)

    def mean(self, buf: torch.Tensor) -> torch.Tensor:
        return self.mean_async(buf).wait()

    def masked_mean_async(self, buf: torch.Tensor, valid: torch.Tensor) -> PendingMasked:
        check_stacked(buf, self.replicas_per_process)
        packed = pack_masked(buf, valid, self.replica_offset, self.num_replicas)
        if self.num_replicas > 1:
            self.stats.record(buf, extra_elements=self.num_replicas)
        work = None
        if self.world_size > 1:
            work = dist.all_reduce(packed, op=dist.ReduceOp.SUM, group=self.group, async_op=True)
        return _MaskedAllReduce(work, packed, self.num_replicas, self.stats)

    def __repr__(self) -> str:
        return (
            f"DistributedCommunicator(world_size={self.world_size}, "
            f"replicas_per_process={self.replicas_per_process})"
        )
