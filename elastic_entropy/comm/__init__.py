"""Communicators: the mean over all replicas (the only package that imports torch.distributed)."""

from elastic_entropy.comm.base import CommStats, Communicator, LocalCommunicator, Pending

__all__ = [
    "CommStats",
    "Communicator",
    "DistributedCommunicator",
    "HierarchicalCommunicator",
    "LocalCommunicator",
    "Pending",
]


def __getattr__(name: str) -> object:
    # torch.distributed is imported only when a distributed communicator is asked for
    if name in ("DistributedCommunicator", "HierarchicalCommunicator"):
        from elastic_entropy.comm import torch_dist

        return getattr(torch_dist, name)
    raise AttributeError(name)
