"""The train, test and optional validation splits of a data set held as tensors (the tensors
input path; :mod:`elastic_entropy.loaders` has the loader path, which answers the same
questions)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass
class DataSplits:
    x_train: Tensor
    y_train: Tensor
    x_test: Tensor
    y_test: Tensor
    num_classes: int
    input_shape: tuple[int, ...]  # one sample, e.g. (40,) or (1, 28, 28)
    x_val: Tensor | None = None
    y_val: Tensor | None = None

    def to(self, device: torch.device) -> DataSplits:
        moved = {
            name: (value.to(device) if isinstance(value, Tensor) else value)
            for name, value in vars(self).items()
        }
        return DataSplits(**moved)

    # the questions evaluation asks of either input path (see elastic_entropy.loaders)
    @property
    def num_train(self) -> int:
        return len(self.y_train)

    @property
    def label_shape(self) -> tuple[int, ...]:
        """``()`` for a class per sample; ``(T,)`` for a next token per position (text)."""
        return tuple(self.y_train.shape[1:])

    @property
    def has_val(self) -> bool:
        return self.x_val is not None and self.y_val is not None

    def _split(self, split: str) -> tuple[Tensor, Tensor]:
        x, y = {
            "train": (self.x_train, self.y_train),
            "val": (self.x_val, self.y_val),
            "test": (self.x_test, self.y_test),
        }[split]
        if x is None or y is None:
            raise ValueError(f"this data has no {split} split")
        return x, y

    def size(self, split: str) -> int:
        return len(self._split(split)[1])

    def head(self, count: int) -> Tensor:
        """The first ``count`` training inputs."""
        return self.x_train[:count]

    def batches(
        self, split: str, batch_size: int, limit: int | None = None
    ) -> Iterator[tuple[Tensor, Tensor]]:
        """``split`` in order (its first ``limit`` samples), in minibatches (views)."""
        x, y = self._split(split)
        count = len(y) if limit is None else min(limit, len(y))
        for start in range(0, count, batch_size):
            end = min(start + batch_size, count)
            yield x[start:end], y[start:end]

    def close(self) -> None:
        """Nothing to stop: the tensors path has no workers."""
