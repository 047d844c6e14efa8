"""Communicators: the mean over all replicas (the only package that imports torch.distributed)."""

from elastic_entropy.comm.base import CommStats, Communicator, LocalCommunicator, Pending

__all__ = ["CommStats", "Communicator", "DistributedCommunicator", "LocalCommunicator", "Pending"]


def __getattr__(name: str) -> object:
    # torch.distributed is imported only when a distributed communicator is asked for
    if name == "DistributedCommunicator":
        from elastic_entropy.comm.torch_dist import DistributedCommunicator

        return DistributedCommunicator
    raise AttributeError(name)
