"""Which communicator a job gets, from its layout: local, flat, or hierarchical across nodes."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from elastic_entropy.comm.base import Communicator, LocalCommunicator

if TYPE_CHECKING:
    from elastic_entropy.distributed import DistInfo


def make_communicator(
    info: DistInfo,
    replicas_per_process: int,
    processes_per_node: int | None = None,
    inter_node_period: int = 1,
) -> Communicator:
    """Local for one process; flat on one node; hierarchical (process, node, job) across nodes.

    ``processes_per_node`` defaults to torchrun's ``LOCAL_WORLD_SIZE`` (or SLURM's tasks per node).
    """
    if not info.is_distributed:
        return LocalCommunicator(replicas_per_process)
    # only a job of several processes loads the torch.distributed communicators
    from elastic_entropy.comm.torch_dist import DistributedCommunicator, HierarchicalCommunicator

    if processes_per_node is None:
        env = os.environ
        local = env.get("LOCAL_WORLD_SIZE") or env.get("SLURM_NTASKS_PER_NODE", "").split("(")[0]
        processes_per_node = int(local) if local else info.world_size
    if processes_per_node < info.world_size or inter_node_period != 1:
        return HierarchicalCommunicator(replicas_per_process, processes_per_node, inter_node_period)
    return DistributedCommunicator(replicas_per_process)
