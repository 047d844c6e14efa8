"""Minibatches per second of the data paths, on CIFAR-shaped data, side by side in one run.

    python -m benchmarks.data_pipeline              # 10,000 images, batch 128
    python -m benchmarks.data_pipeline --quick      # 1,000 images, a few batches

Path (a), the app's: the training set held as one tensor on the device, a replica's minibatch
gathered by index (``torch.index_select``), then, with augmentation on, the papers' crops (4
pixels of padding) and flips drawn on the device from the replica's own stream
(``elastic_entropy.augment``).
Beside it, path (b), the app's ``data.pipeline=loader``: the same samples read one by one from a
map-style data set by a ``DataLoader`` with 0, 1 and 2 worker processes, its indices dealt by the
replica's sampler (``elastic_entropy.loaders.ReplicaLoaders``, pinned memory on CUDA): what a
loader-fed path costs per minibatch. The paths take turns, ``--rounds`` times (a gather takes a
fraction of a millisecond, so one pass of each is at the mercy of the machine), and each path's
median rate counts. Ratio line last: each path's minibatches per second over the plain gather's.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path

import torch

from benchmarks.common import write_results
from elastic_entropy.augment import Augmentation, augmentation_seeds
from elastic_entropy.data import DataSplits, ReplicaSampler
from elastic_entropy.loaders import LoaderOptions, ReplicaLoaders, from_tensors


def _rate(batches: Iterator[object], count: int, device: torch.device) -> float:
    """Minibatches per second over ``count`` of them, after two to warm up."""
    for _ in range(2):
        next(batches)
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(count):
        batch = next(batches)
    if device.type == "cuda":
        torch.cuda.synchronize()
    del batch
    return count / (time.perf_counter() - start)


def _gathered(x: torch.Tensor, y: torch.Tensor, batch: int, augment: bool) -> Iterator[object]:
    sampler = ReplicaSampler(len(y), batch, replica=0, num_replicas=1, seed=0)
    augmentation = Augmentation(augmentation_seeds(0, [0]), x.device, crop_padding=4, flip=True)
    while True:
        index = sampler.next().to(x.device)
        images = torch.index_select(x, 0, index)  # as the app's passes gather
        yield (augmentation(images, 0) if augment else images), torch.index_select(y, 0, index)


def _loaded(x: torch.Tensor, y: torch.Tensor, batch: int, workers: int) -> Iterator[object]:
    """The app's loader path: a replica's ``ReplicaLoaders`` over the data set (here the same
    tensors, on the CPU), its indices dealt by the replica's sampler."""
    device = torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
    sampler = ReplicaSampler(len(y), batch, replica=0, num_replicas=1, seed=0)
    options = LoaderOptions(num_workers=workers)
    data = from_tensors(DataSplits(x, y, x[:1], y[:1], 10, tuple(x.shape[1:])), device, options)
    loaders = ReplicaLoaders(data.train, [sampler], 10, device, options, [0])
    while True:
        yield loaders(sampler.next(), 0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="1,000 images, a few batches")
    parser.add_argument("--batches", type=int, default=None, help="minibatches timed per path")
    parser.add_argument("--rounds", type=int, default=None, help="turns of every path (median)")
    parser.add_argument("--out", type=Path, default=None, help="results folder")
    args = parser.parse_args()
    rounds = args.rounds or (1 if args.quick else 5)
    num, count = (1000, 5) if args.quick else (10_000, 200)
    count = args.batches or count
    device = torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
    generator = torch.Generator().manual_seed(0)
    x_cpu = torch.randn(num, 3, 32, 32, generator=generator)
    y_cpu = torch.randint(0, 10, (num,), generator=generator)
    x, y = x_cpu.to(device), y_cpu.to(device)
    batch = 128
    paths: dict[str, Callable[[], Iterator[object]]] = {
        "gather": lambda: _gathered(x, y, batch, augment=False),
        "gather_augment": lambda: _gathered(x, y, batch, augment=True),
    }
    for workers in (0, 1, 2):
        paths[f"loader_{workers}"] = partial(_loaded, x_cpu, y_cpu, batch, workers)
    turns: dict[str, list[float]] = {name: [] for name in paths}
    for _ in range(rounds):
        for name, make in paths.items():
            turns[name].append(_rate(make(), count, device))
    rates = {name: statistics.median(values) for name, values in turns.items()}
    lines = [
        f"{'path':<16} minibatches/s  (batch {batch}, {num} images 3x32x32, {device}; median of "
        f"{rounds} turns)"
    ]
    lines += [f"{name:<16} {rate:>12.1f}" for name, rate in rates.items()]
    ratios = {f"{name}/gather": rates[name] / rates["gather"] for name in rates if name != "gather"}
    table = "\n".join(lines)
    print(table)
    write_results(
        "data_pipeline",
        {"rates": rates, "turns": turns, "ratios": ratios, "batches": count},
        table,
        args.out,
    )
    print("ratios: " + " ".join(f"{k}={v:.3f}" for k, v in ratios.items()), flush=True)


if __name__ == "__main__":
    main()
