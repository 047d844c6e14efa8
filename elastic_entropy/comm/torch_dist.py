"""The communicators over ``torch.distributed`` (gloo on CPUs, NCCL on GPUs): flat and
hierarchical."""

from __future__ import annotations

import atexit
import gc
import time
from collections.abc import Callable
from typing import Generic, TypeVar

import torch
import torch.distributed as dist

from elastic_entropy.comm.base import (
    CommStats,
    Pending,
    PendingMasked,
    check_stacked,
    pack_masked,
    tree_sum,
    unpack_masked,
)

R = TypeVar("R")


def _collect_before_finalisation() -> None:
    # gloo objects (work handles, the pairs of a destroyed group) that only reference cycles
    # reach are otherwise freed during interpreter finalisation, where gloo's destructors abort
    # the process ("terminate called without an active exception"); atexit runs before it
    gc.collect()


def _timed_wait(work: dist.Work, stats: CommStats) -> None:
    started = time.perf_counter()
    work.wait()
    stats.wait_s += time.perf_counter() - started


class _InFlight(Generic[R]):
    """One or two all-reduces of ``buf`` in flight, finished on the first ``wait()``; a later
    ``wait()`` returns the same result.

    ``work`` is the all-reduce already started (None: nothing to wait for). ``across``, when set,
    is the group of a second, blocking all-reduce run in ``wait()`` once ``work`` is done: it sums
    what the first produced (node sums across nodes). ``finish`` makes the result of the summed
    ``buf`` (divided, or unpacked). Both waits count in ``stats.wait_s``.
    """

    def __init__(
        self,
        work: dist.Work | None,
        buf: torch.Tensor,
        finish: Callable[[torch.Tensor], R],
        stats: CommStats,
        across: dist.ProcessGroup | None = None,
    ) -> None:
        self._work, self._buf, self._across = work, buf, across
        self._finish, self._stats = finish, stats
        self._result: R | None = None

    def wait(self) -> R:
        if self._result is None:
            if self._work is not None:
                _timed_wait(self._work, self._stats)
                self._work = None
            if self._across is not None:
                started = time.perf_counter()
                dist.all_reduce(self._buf, op=dist.ReduceOp.SUM, group=self._across)
                self._stats.wait_s += time.perf_counter() - started
                self._across = None
            self._result = self._finish(self._buf)
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
        self._check_same_layout()
        atexit.unregister(_collect_before_finalisation)  # once per process, however many comms
        atexit.register(_collect_before_finalisation)

    def _small_tensor(self, values: list[int]) -> torch.Tensor:
        """A tensor for a small collective of the run's own, where the backend can send it."""
        is_nccl = dist.get_backend(self.group) == "nccl"
        device = torch.device("cuda", torch.cuda.current_device()) if is_nccl else None
        return torch.tensor(values, dtype=torch.int64, device=device)

    def _check_same_layout(self) -> None:
        """Every rank holds as many replicas: the means divide by ``world_size x`` this count and
        the flags sit at ``rank x`` this count, so one rank that differs corrupts every mean. One
        small all-gather at construction, not counted in :attr:`stats` (not the algorithm's)."""
        if self.world_size == 1:
            return
        mine = self._small_tensor([self.replicas_per_process])
        counts = [torch.empty_like(mine) for _ in range(self.world_size)]
        dist.all_gather(counts, mine, group=self.group)
        per_rank = [int(c.item()) for c in counts]
        if len(set(per_rank)) > 1:
            named = ", ".join(f"rank {r}: {n}" for r, n in enumerate(per_rank))
            raise ValueError(
                f"replicas_per_process differs across ranks ({named}); build every process's "
                "communicator with the same replicas_per_process"
            )

    def broadcast(self, buf: torch.Tensor) -> None:
        check_stacked(buf, self.replicas_per_process)
        if self.world_size > 1:
            # the group's rank 0, in global numbering as broadcast wants it
            source = 0 if self.group is None else dist.get_global_rank(self.group, 0)
            dist.broadcast(buf, src=source, group=self.group)

    @property
    def num_replicas(self) -> int:
        return self.world_size * self.replicas_per_process

    @property
    def replica_offset(self) -> int:
        return self.rank * self.replicas_per_process

    def _divide(self, total: torch.Tensor) -> torch.Tensor:
        return total.div_(self.num_replicas)

    def _unpack(self, packed: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return unpack_masked(packed, self.num_replicas)

    def mean_async(self, buf: torch.Tensor) -> Pending:
        check_stacked(buf, self.replicas_per_process)
        total = tree_sum(buf)
        work = None
        if self.num_replicas > 1:
            self.stats.record(buf)
            if self.world_size > 1:
                work = dist.all_reduce(total, op=dist.ReduceOp.SUM, group=self.group, async_op=True)
        return _InFlight(work, total, self._divide, self.stats)

    def mean(self, buf: torch.Tensor) -> torch.Tensor:
        return self.mean_async(buf).wait()

    def masked_mean_async(
        self, buf: torch.Tensor, valid: torch.Tensor, *, is_outer_mean: bool = True
    ) -> PendingMasked:
        check_stacked(buf, self.replicas_per_process)
        packed = pack_masked(buf, valid, self.replica_offset, self.num_replicas)
        self.stats.num_outer_means += int(is_outer_mean)
        if self.num_replicas > 1:
            self.stats.record(buf, extra_elements=self.num_replicas)
        work = None
        if self.world_size > 1:
            work = dist.all_reduce(packed, op=dist.ReduceOp.SUM, group=self.group, async_op=True)
        return _InFlight(work, packed, self._unpack, self.stats)

    def __repr__(self) -> str:
        return (
            f"DistributedCommunicator(world_size={self.world_size}, "
            f"replicas_per_process={self.replicas_per_process})"
        )


class HierarchicalCommunicator(DistributedCommunicator):
    """The mean in three levels: the replicas of a process, the processes of a node, the nodes.

    Ranks are taken node-major (``processes_per_node`` consecutive ranks share a node, as torchrun
    and SLURM's block distribution number them). Within a node the all-reduce runs over the fast
    links; across nodes one process per node-local rank exchanges the node sums. With
    ``inter_node_period = k > 1`` the per-outer-step mean crosses nodes only every ``k``-th call:
    in between, each node averages its own replicas (a node-level reference, a change of the
    algorithm that trades coupling for traffic). :meth:`mean` (the reference) always spans the job.
    """

    def __init__(
        self, replicas_per_process: int, processes_per_node: int, inter_node_period: int = 1
    ) -> None:
        super().__init__(replicas_per_process)
        if processes_per_node < 1 or self.world_size % processes_per_node:
            raise ValueError(
                f"cluster.processes_per_node={processes_per_node} does not divide the "
                f"{self.world_size} processes; set it to the processes each node runs"
            )
        if inter_node_period < 1:
            raise ValueError(
                f"Invalid cluster.inter_node_period: {inter_node_period} (must be >= 1)"
            )
        self.processes_per_node = processes_per_node
        self.inter_node_period = inter_node_period
        self.num_nodes = self.world_size // processes_per_node
        nodes = [
            list(range(n * processes_per_node, (n + 1) * processes_per_node))
            for n in range(self.num_nodes)
        ]
        peers = [
            list(range(j, self.world_size, processes_per_node)) for j in range(processes_per_node)
        ]
        # every rank creates every group, in the same order
        self.node_group, _ = dist.new_subgroups_by_enumeration(nodes)
        self.peer_group, _ = dist.new_subgroups_by_enumeration(peers)
        self.node = self.rank // processes_per_node

    def _start(
        self, packed: torch.Tensor, across: bool, finish: Callable[[torch.Tensor], R]
    ) -> _InFlight[R]:
        """Reduce within the node, then (when ``across``) across nodes on the first wait."""
        first = None
        if self.processes_per_node > 1:
            first = dist.all_reduce(
                packed, op=dist.ReduceOp.SUM, group=self.node_group, async_op=True
            )
        peer = self.peer_group if across and self.num_nodes > 1 else None
        return _InFlight(first, packed, finish, self.stats, across=peer)

    def mean_async(self, buf: torch.Tensor) -> Pending:
        check_stacked(buf, self.replicas_per_process)
        self.stats.record(buf)
        return self._start(tree_sum(buf), True, self._divide)

    def masked_mean_async(
        self, buf: torch.Tensor, valid: torch.Tensor, *, is_outer_mean: bool = True
    ) -> PendingMasked:
        check_stacked(buf, self.replicas_per_process)
        packed = pack_masked(buf, valid, self.replica_offset, self.num_replicas)
        self.stats.record(buf, extra_elements=self.num_replicas)
        if not is_outer_mean:
            # a reference's mean spans the job, as mean() does, and leaves the period's phase
            return self._start(packed, True, self._unpack)
        # counted in the stats, which checkpoints restore: the period keeps its phase on resume
        across = self.stats.num_outer_means % self.inter_node_period == 0
        self.stats.num_outer_means += 1
        if across or self.num_nodes == 1:
            return self._start(packed, True, self._unpack)
        return self._start(packed, False, self._node_only)

    def _node_only(self, packed: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The node's mean, with the flags of every node: each process must know whether any
        replica of the job diverged, since the quarantine that follows is a collective of the
        whole job. The flags alone cross nodes (``num_replicas`` numbers, one more collective);
        the other nodes' slots hold zeros after the node's all-reduce, so their sum is exact."""
        mean, _ = self._unpack(packed)
        flags = packed[-self.num_replicas :].clone()
        self.stats.record(flags[None])
        started = time.perf_counter()
        dist.all_reduce(flags, op=dist.ReduceOp.SUM, group=self.peer_group)
        self.stats.wait_s += time.perf_counter() - started
        return mean, flags > 0.5

    def __repr__(self) -> str:
        return (
            f"HierarchicalCommunicator(nodes={self.num_nodes}, processes_per_node="
            f"{self.processes_per_node}, replicas_per_process={self.replicas_per_process}, "
            f"inter_node_period={self.inter_node_period})"
        )
