"""Communicators: the mean over all replicas of the job, and what builds and counts them.

- :mod:`~elastic_entropy.comm.base`: the :class:`Communicator` protocol, :class:`CommStats` (what
  was sent, kept in checkpoints) and :class:`LocalCommunicator` (every replica in this process).
- :mod:`~elastic_entropy.comm.torch_dist`: :class:`DistributedCommunicator` (one all-reduce across
  processes) and :class:`HierarchicalCommunicator` (process, node, job).
- :mod:`~elastic_entropy.comm.factory`: :func:`make_communicator`, the one a job's layout asks for.
- :mod:`~elastic_entropy.comm.ddp`: :func:`wrap_data_parallel`, torch's DDP with its all-reduces
  counted in a :class:`CommStats`.

With :mod:`elastic_entropy.distributed` (the process group), the only code that calls
``torch.distributed``; ``torch_dist`` and ``ddp`` are imported only when one of their names is
asked for.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from elastic_entropy.comm.base import CommStats, Communicator, LocalCommunicator, Pending
from elastic_entropy.comm.factory import make_communicator

if TYPE_CHECKING:
    from elastic_entropy.comm.ddp import wrap_data_parallel
    from elastic_entropy.comm.torch_dist import DistributedCommunicator, HierarchicalCommunicator

__all__ = [
    "CommStats",
    "Communicator",
    "DistributedCommunicator",
    "HierarchicalCommunicator",
    "LocalCommunicator",
    "Pending",
    "make_communicator",
    "wrap_data_parallel",
]

# the names that need torch.distributed, and the module of each
_LAZY = {
    "DistributedCommunicator": "torch_dist",
    "HierarchicalCommunicator": "torch_dist",
    "wrap_data_parallel": "ddp",
}


def __getattr__(name: str) -> object:
    if name in _LAZY:
        module = importlib.import_module(f"elastic_entropy.comm.{_LAZY[name]}")
        return getattr(module, name)
    raise AttributeError(name)
