"""Optimizers: Parle and its presets, each a ``torch.optim.Optimizer``."""

from elastic_entropy.optim.dp_sgd import DataParallelSGD, SGDAfterDDP
from elastic_entropy.optim.elastic_sgd import ElasticSGD
from elastic_entropy.optim.entropy_sgd import EntropySGD
from elastic_entropy.optim.local_sgd import LocalSGD
from elastic_entropy.optim.parle import DivergedError, Parle, replica_param_groups
from elastic_entropy.optim.sgd import SGD

__all__ = [
    "SGD",
    "DataParallelSGD",
    "DivergedError",
    "ElasticSGD",
    "EntropySGD",
    "LocalSGD",
    "Parle",
    "SGDAfterDDP",
    "replica_param_groups",
]
