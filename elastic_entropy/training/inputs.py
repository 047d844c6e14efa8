"""The run's data and where each replica's training minibatches come from: the data set held on
the device as tensors, or read through loaders (``data.pipeline``, see
:mod:`elastic_entropy.loaders`), and the CUDA-graph passes where the data allows them."""

from __future__ import annotations

import logging

import torch
from torch import nn

from elastic_entropy.augment import Augmentation
from elastic_entropy.config import Config
from elastic_entropy.data import DataSplits, ReplicaSampler, load_dataset
from elastic_entropy.loaders import (
    DatasetSplits,
    LoaderOptions,
    ReplicaLoaders,
    from_tensors,
    should_hold,
)
from elastic_entropy.targets import target_datasets, target_loaders, target_splits
from elastic_entropy.text import TEXT_SETS, text_splits
from elastic_entropy.training.graphs import GraphedPasses, graphed_passes
from elastic_entropy.training.passes import Source, TensorBatches

log = logging.getLogger(__name__)


def _loader_options(cfg: Config) -> LoaderOptions:
    data = cfg.data
    return LoaderOptions(
        data.num_workers, data.pin_memory, data.prefetch_factor, data.persistent_workers
    )


def build_data(cfg: Config, device: torch.device) -> DataSplits | DatasetSplits:
    """The data set named by ``data`` (or your ``data.train`` / ``val`` / ``test``), held on
    ``device`` as tensors or read through loaders, as ``data.pipeline`` says."""
    options = _loader_options(cfg)
    if cfg.data.train is not None:
        sets = target_datasets(cfg.data.train, cfg.data.val, cfg.data.test)
        if not should_hold(cfg.data.pipeline, sets.train):
            return target_loaders(sets, cfg.data.num_classes, device, options)
        splits = target_splits(sets, cfg.data.num_classes)
    elif cfg.data.name in TEXT_SETS:
        if cfg.data.validation_fraction > 0.0 or cfg.data.train_fraction < 1.0:
            log.warning(
                "data.validation_fraction and data.train_fraction do nothing for text: its "
                "splits are cut by position (90/5/5)"
            )
        splits = text_splits(cfg.data.name, cfg.data.root, cfg.data.seq_len)
    else:
        splits = load_dataset(
            cfg.data.name,
            cfg.data.root,
            cfg.data.seed,
            cfg.data.validation_fraction,
            cfg.data.train_fraction,
        )
    if cfg.data.pipeline == "loader":  # the built-in sets are in memory already: auto holds them
        return from_tensors(splits, device, options)
    if cfg.data.num_workers > 0:
        log.warning(
            "data.num_workers=%d does nothing: the data is held as tensors (data.pipeline=%s); "
            "set data.pipeline=loader to read it through loaders",
            cfg.data.num_workers,
            cfg.data.pipeline,
        )
    return splits.to(device)


def batch_source(
    cfg: Config,
    data: DataSplits | DatasetSplits,
    samplers: list[ReplicaSampler],
    offset: int,
) -> Source:
    """Where each replica's training minibatches come from."""
    if isinstance(data, DataSplits):
        return TensorBatches(data.x_train, data.y_train)
    # each replica's loader workers seeded by its global index, like its other streams
    seeds = [cfg.seed * 1_000_003 + 29 + offset + a for a in range(len(samplers))]
    return ReplicaLoaders(data.train, samplers, data.num_classes, data.device, data.options, seeds)


def graphed_for(
    cfg: Config,
    data: DataSplits | DatasetSplits,
    models: list[nn.Module],
    has_hooks: bool,
    augment: Augmentation | None,
) -> GraphedPasses | None:
    """The CUDA-graph passes, when ``cluster.cuda_graphs`` asks and the data is held as
    tensors (a graph replays fixed input buffers filled by index)."""
    if cfg.compile:
        # the compiled forward runs in the plain passes; a graph would capture the eager one
        if cfg.cluster.cuda_graphs == "on":
            raise ValueError(
                "Invalid cluster.cuda_graphs: 'on' (compile=true compiles the forward instead); "
                "choose one of compile=true or cluster.cuda_graphs=on"
            )
        return None
    if cfg.precision == "fp16":
        # the loss scale changes between steps; a graph would replay the one it was taken with
        if cfg.cluster.cuda_graphs == "on":
            raise ValueError(
                "Invalid cluster.cuda_graphs: 'on' (precision=fp16 scales the loss by a value "
                "that changes); use precision=bf16 or cluster.cuda_graphs=auto"
            )
        return None
    if isinstance(data, DataSplits):
        batch = cfg.data.batch_size
        return graphed_passes(
            cfg.cluster.cuda_graphs,
            models,
            data.x_train,
            data.y_train,
            batch,
            has_hooks=has_hooks,
            augment=augment,
        )
    if cfg.cluster.cuda_graphs == "on":
        raise ValueError(
            "Invalid cluster.cuda_graphs: 'on' (the data is read through loaders; a graph needs "
            "it held as tensors); use data.pipeline=tensors or cluster.cuda_graphs=auto"
        )
    return None
