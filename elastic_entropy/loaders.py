"""The second input path: data sets read through ``torch.utils.data.DataLoader``.

Two paths bring minibatches to the replicas (``data.pipeline``):

- ``tensors``: the data set is held on the device as two tensors and a minibatch is gathered by
  index (:class:`elastic_entropy.data.DataSplits`): the fast path for data that fits, and the
  one CUDA graphs need;
- ``loader``: any map-style ``Dataset`` is read sample by sample, by one ``DataLoader`` per
  replica with its own workers, pinned memory and prefetch (:class:`DatasetSplits`,
  :class:`ReplicaLoaders`): for data sets too large to hold, or costly to decode.
- ``auto`` (the default) holds the built-in data sets as tensors, and yours too when its inputs
  fit in :data:`HOLD_BYTES`; larger ones are read through loaders.

Both paths draw the same indices from the same :class:`~elastic_entropy.data.ReplicaSampler`, and
the crops and flips of ``data.crop_padding`` / ``data.flip`` are done on the device after either,
so the two give the same minibatches, bit for bit. A loader reads ahead of training (its
workers, its prefetch): it draws its indices from a *copy* of the replica's sampler, while the
sampler itself advances only as minibatches are taken. The checkpoint holds the sampler, so a
resumed run reads from where the interrupted one had trained, not from where its workers had
read; the first minibatch after a resume is read at once and the loader restarts behind it.
Random transforms inside your own data set run in the workers, seeded per replica and loader
start: they are not repeated exactly by a resumed run (the app's own augmentation is).
"""

from __future__ import annotations

import copy
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Subset, TensorDataset

from elastic_entropy.data import DataSplits, ReplicaSampler

# ``auto`` holds your data set as tensors up to this size of its inputs in float32 (CIFAR-10's
# training set is 0.6 GB), and reads larger ones through loaders
HOLD_BYTES = 2 * 1024**3


@dataclass(frozen=True)
class LoaderOptions:
    """What ``DataLoader`` is given: ``data.num_workers`` etc."""

    num_workers: int = 0
    pin_memory: bool = True  # on a CUDA device only: page-locked batches copied without waiting
    prefetch_factor: int = 2  # minibatches each worker reads ahead
    persistent_workers: bool = True  # evaluation loaders keep their workers between evaluations

    def loader_kwargs(self, device: torch.device) -> dict[str, Any]:
        kwargs: dict[str, Any] = {
            "num_workers": self.num_workers,
            "pin_memory": self.pin_memory and device.type == "cuda",
        }
        if self.num_workers > 0:
            kwargs["prefetch_factor"] = self.prefetch_factor
        return kwargs


def sample_tensors(sample: Any, split: str, index: int) -> tuple[Tensor, Tensor]:
    """One ``(input, label)`` sample as a float32 input and an int64 label, or a one-line
    ValueError that names the split, the sample and what is wrong."""
    if not (isinstance(sample, (tuple, list)) and len(sample) == 2):
        raise ValueError(
            f"data.{split}: sample {index} is a {type(sample).__name__}, not an (input, label) pair"
        )
    x = _as_tensor(sample[0], split, index, "input")
    label = _as_tensor(sample[1], split, index, "label")
    # a window of token ids labelled with the next token of each position (a language model's
    # sample): the ids stay integers
    is_sequence = label.ndim == 1 and label.numel() > 1 and label.shape == x.shape
    is_sequence = is_sequence and not x.is_floating_point()
    if label.is_floating_point() or not (label.numel() == 1 or is_sequence):
        raise ValueError(
            f"data.{split}: sample {index} has the label {label.tolist()}; labels must be one "
            "integer class index each, or one next-token id per input token id"
        )
    if is_sequence:
        return x.long(), label.long()
    return x.float(), label.reshape(()).long()


def _as_tensor(value: Any, split: str, index: int, part: str) -> Tensor:
    if isinstance(value, Tensor):
        return value
    if isinstance(value, (int, float)) or hasattr(value, "__array__"):
        return torch.as_tensor(value)
    raise ValueError(
        f"data.{split}: sample {index} has a {part} of type {type(value).__name__}; a data set "
        "must give (input, label) pairs of tensors, arrays or numbers"
    )


def dataset_size(dataset: Any, split: str) -> int:
    """``len(dataset)``, at least 1, or a one-line ValueError."""
    try:
        size = len(dataset)
    except TypeError:
        raise ValueError(
            f"data.{split} is a {type(dataset).__name__} without len(); give a map-style "
            "torch.utils.data.Dataset (__len__ and __getitem__)"
        ) from None
    if size < 1:
        raise ValueError(f"data.{split} is empty; give it at least one sample")
    return size


def should_hold(pipeline: str, dataset: Any, budget: int = HOLD_BYTES) -> bool:
    """Whether ``data.pipeline`` (``auto``: by the size of the inputs) holds ``dataset`` as
    tensors."""
    if pipeline != "auto":
        return pipeline == "tensors"
    x, _ = sample_tensors(dataset[0], "train", 0)
    return dataset_size(dataset, "train") * x.numel() * 4 <= budget


class _Indexed(Dataset):
    """``dataset``'s samples with their index: a loader's minibatch says which it is."""

    def __init__(self, dataset: Any, split: str) -> None:
        self.dataset = dataset
        self.split = split

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> tuple[int, Tensor, Tensor]:
        return (index, *sample_tensors(self.dataset[index], self.split, index))


def _collate(samples: Sequence[tuple[int, Tensor, Tensor]]) -> tuple[Tensor, Tensor, Tensor]:
    indices = torch.tensor([index for index, _, _ in samples], dtype=torch.long)
    try:
        x = torch.stack([x for _, x, _ in samples])
    except RuntimeError:
        shapes = sorted({tuple(x.shape) for _, x, _ in samples})
        raise ValueError(
            f"data: samples of several shapes {shapes[:3]} in one minibatch; every input must "
            "have the same shape (resize or pad them in the data set)"
        ) from None
    return indices, x, torch.stack([y for _, _, y in samples])


def _check_labels(y: Tensor, num_classes: int, split: str) -> None:
    low, high = int(y.min()), int(y.max())  # y is still on the CPU: no wait on the device
    if low < 0 or high >= num_classes:
        raise ValueError(
            f"data.{split}: labels from {low} to {high}, outside 0..{num_classes - 1}; set "
            "data.num_classes or fix the labels"
        )


class _Ahead:
    """A batch sampler that deals a replica's minibatches from a copy of its sampler, so that
    the loader's reading ahead leaves the replica's own sampler (the checkpointed one) where
    training is. Endless: the loop decides when the run ends."""

    def __init__(self, sampler: ReplicaSampler) -> None:
        self.sampler = copy.deepcopy(sampler)

    def __iter__(self) -> Iterator[list[int]]:
        while True:
            yield self.sampler.next().tolist()


class ReplicaLoaders:
    """The training minibatches of each replica of this process, read by its own
    ``DataLoader`` (``__call__(index, replica)``: the samples ``index`` as ``(x, y)`` on the
    device).

    ``index`` is what the replica's sampler has just dealt; the loader has dealt the same from
    its copy of the sampler, and the two are checked to agree. They do not after the sampler's
    state was loaded (a resume): then this minibatch is read here, and the loader starts again
    from the sampler's new state.
    """

    def __init__(
        self,
        dataset: Any,
        samplers: list[ReplicaSampler],
        num_classes: int,
        device: torch.device,
        options: LoaderOptions,
        seeds: list[int],
    ) -> None:
        self.indexed = _Indexed(dataset, "train")
        self.samplers = samplers
        self.num_classes = num_classes
        self.device = device
        self.options = options
        self.seeds = seeds  # each replica's workers' base seed (their own random transforms)
        self.iterators: list[Iterator[tuple[Tensor, Tensor, Tensor]] | None] = [None] * len(
            samplers
        )

    def __call__(self, index: Tensor, replica: int) -> tuple[Tensor, Tensor]:
        batch = self._next(replica)
        if batch is None or not torch.equal(batch[0], index.cpu()):
            batch = _collate([self.indexed[i] for i in index.tolist()])
            self.iterators[replica] = iter(self._loader(replica))
        _, x, y = batch
        _check_labels(y, self.num_classes, "train")
        is_pinned = self.options.pin_memory and self.device.type == "cuda"
        return x.to(self.device, non_blocking=is_pinned), y.to(self.device, non_blocking=is_pinned)

    def _next(self, replica: int) -> tuple[Tensor, Tensor, Tensor] | None:
        iterator = self.iterators[replica]
        return None if iterator is None else next(iterator)

    def _loader(self, replica: int) -> DataLoader:
        return DataLoader(
            self.indexed,
            batch_sampler=_Ahead(self.samplers[replica]),
            collate_fn=_collate,
            generator=torch.Generator().manual_seed(self.seeds[replica]),
            **self.options.loader_kwargs(self.device),
        )

    def close(self) -> None:
        """Stop the workers (an endless loader's end is never reached)."""
        self.iterators = [None] * len(self.iterators)


@dataclass
class DatasetSplits:
    """Train, test and optional validation sets read through ``DataLoader`` (the ``loader``
    path); the same questions answered as :class:`~elastic_entropy.data.DataSplits`."""

    train: Any
    test: Any
    num_classes: int
    input_shape: tuple[int, ...]
    device: torch.device
    options: LoaderOptions = field(default_factory=LoaderOptions)
    val: Any = None
    _loaders: dict[tuple[str, int, int], DataLoader] = field(default_factory=dict, repr=False)

    @property
    def num_train(self) -> int:
        return len(self.train)

    @property
    def label_shape(self) -> tuple[int, ...]:
        return tuple(sample_tensors(self.train[0], "train", 0)[1].shape)

    @property
    def has_val(self) -> bool:
        return self.val is not None

    def size(self, split: str) -> int:
        return len(self._split(split))

    def _split(self, split: str) -> Any:
        found = {"train": self.train, "val": self.val, "test": self.test}[split]
        if found is None:
            raise ValueError(f"this data has no {split} split")
        return found

    def head(self, count: int) -> Tensor:
        """The first ``count`` training inputs, on the device."""
        samples = [_Indexed(self.train, "train")[i] for i in range(min(count, self.num_train))]
        return _collate(samples)[1].to(self.device)

    def batches(
        self, split: str, batch_size: int, limit: int | None = None
    ) -> Iterator[tuple[Tensor, Tensor]]:
        """``split`` in order (its first ``limit`` samples), in minibatches on the device."""
        dataset = self._split(split)
        count = len(dataset) if limit is None else min(limit, len(dataset))
        key = (split, batch_size, count)
        if key not in self._loaders:  # kept: persistent workers serve the next evaluation
            part = dataset if count == len(dataset) else Subset(dataset, range(count))
            self._loaders[key] = DataLoader(
                _Indexed(part, split),
                batch_size=batch_size,
                collate_fn=_collate,
                persistent_workers=self.options.persistent_workers and self.options.num_workers > 0,
                **self.options.loader_kwargs(self.device),
            )
        for _, x, y in self._loaders[key]:
            _check_labels(y, self.num_classes, split)
            yield x.to(self.device), y.to(self.device)

    def close(self) -> None:
        self._loaders.clear()


def from_tensors(splits: DataSplits, device: torch.device, options: LoaderOptions) -> DatasetSplits:
    """A data set held as tensors (a built-in one) read through loaders instead: what
    ``data.pipeline=loader`` does with it."""
    val = None
    if splits.x_val is not None and splits.y_val is not None:
        val = TensorDataset(splits.x_val, splits.y_val)
    return DatasetSplits(
        train=TensorDataset(splits.x_train, splits.y_train),
        test=TensorDataset(splits.x_test, splits.y_test),
        num_classes=splits.num_classes,
        input_shape=splits.input_shape,
        device=device,
        options=options,
        val=val,
    )


def num_classes_of(dataset: Any, given: int | None) -> int:
    """``data.num_classes``, else what the data set says of itself (``classes`` or ``targets``,
    torchvision's names): a loader does not read every label ahead to find the largest."""
    if given is not None:
        return given
    classes = getattr(dataset, "classes", None)
    if classes is not None:
        return len(classes)
    targets = getattr(dataset, "targets", None)
    if targets is not None and len(targets) > 0:
        return int(max(int(t) for t in targets)) + 1
    raise ValueError(
        "data.num_classes is needed when your data set is read through loaders "
        "(data.pipeline=loader, or too large to hold): set data.num_classes=K"
    )
