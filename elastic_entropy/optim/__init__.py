"""Optimizers: Parle and its presets, each a ``torch.optim.Optimizer``.

- ``parle``: :class:`Parle`, the optimizer: checks, the inner, outer and elastic steps, the
  :meth:`Parle.exchange` hook, diagnostics, the reference and checkpoints.
- ``flat_buffers``: :class:`FlatBuffers`, every replica's parameters, gradients and state as
  views of one ``[replicas, N]`` tensor per device and dtype, and the noise streams.
- ``consensus``: :class:`Consensus`, the masked mean over the replicas that have not diverged
  (launched, overlapped, collected) and the quarantine of those that have.
- ``checks``: the argument checks (``ValueError`` with the value and the fix).
- ``functional``: the updates themselves, on lists of tensors.
- ``sgd``, ``elastic_sgd``, ``entropy_sgd``, ``local_sgd``, ``dp_sgd``: the presets and baselines.
"""

from elastic_entropy.optim.adam import AdamW, DataParallelAdamW
from elastic_entropy.optim.consensus import Consensus, DivergedError
from elastic_entropy.optim.diloco import DiLoCo
from elastic_entropy.optim.dp_sgd import DataParallelSGD, SGDAfterDDP
from elastic_entropy.optim.elastic_sgd import ElasticSGD
from elastic_entropy.optim.entropy_sgd import EntropySGD
from elastic_entropy.optim.flat_buffers import FlatBuffers
from elastic_entropy.optim.local_sgd import LocalSGD
from elastic_entropy.optim.parle import DIAGNOSTICS, Parle, replica_param_groups
from elastic_entropy.optim.sgd import SGD

__all__ = [
    "DIAGNOSTICS",
    "SGD",
    "AdamW",
    "Consensus",
    "DataParallelAdamW",
    "DataParallelSGD",
    "DiLoCo",
    "DivergedError",
    "ElasticSGD",
    "EntropySGD",
    "FlatBuffers",
    "LocalSGD",
    "Parle",
    "SGDAfterDDP",
    "replica_param_groups",
]
