"""The loader path (``data.pipeline=loader``): the minibatches the tensors path gathers, read by a
DataLoader per replica with workers and prefetch, and the same again after a resume."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import Dataset

from elastic_entropy.data import DataSplits, ReplicaSampler
from elastic_entropy.loaders import (
    DatasetSplits,
    LoaderOptions,
    ReplicaLoaders,
    from_tensors,
    num_classes_of,
    should_hold,
)
from elastic_entropy.training.passes import TensorBatches

CPU = torch.device("cpu")
NUM_SAMPLES, BATCH = 37, 5  # 7 minibatches per pass: the order is reshuffled within a test


def _splits() -> DataSplits:
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(NUM_SAMPLES, 1, 4, 4, generator=generator)
    y = torch.randint(0, 3, (NUM_SAMPLES,), generator=generator)
    return DataSplits(x, y, x[:11], y[:11], 3, (1, 4, 4), x_val=x[:6], y_val=y[:6])


def _samplers(count: int = 2) -> list[ReplicaSampler]:
    return [
        ReplicaSampler(NUM_SAMPLES, BATCH, replica=a, num_replicas=count, seed=3)
        for a in range(count)
    ]


def _loaders(
    splits: DataSplits, samplers: list[ReplicaSampler], workers: int
) -> ReplicaLoaders:
    data = from_tensors(splits, CPU, LoaderOptions(num_workers=workers))
    return ReplicaLoaders(data.train, samplers, 3, CPU, data.options, [11, 12])


def _draw(
    source: TensorBatches | ReplicaLoaders, samplers: list[ReplicaSampler], steps: int
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [source(s.next(), a) for _ in range(steps) for a, s in enumerate(samplers)]


def _same(a: list[tuple[torch.Tensor, ...]], b: list[tuple[torch.Tensor, ...]]) -> bool:
    return len(a) == len(b) and all(
        torch.equal(x, u) and torch.equal(y, v) for (x, y), (u, v) in zip(a, b)
    )


@pytest.mark.parametrize("workers", [0, 2])
def test_loaders_deal_the_minibatches_of_the_tensors_path(workers: int) -> None:
    splits = _splits()
    expected = _draw(TensorBatches(splits.x_train, splits.y_train), _samplers(), 20)
    samplers = _samplers()
    loaders = _loaders(splits, samplers, workers)
    got = _draw(loaders, samplers, 20)  # 20 steps: across two reshuffles of the order
    loaders.close()
    assert _same(got, expected)


def test_a_loaded_sampler_state_is_followed_not_what_the_workers_had_read() -> None:
    """As after a resume: the workers had read ahead of the sampler's saved state; the loader
    goes on from the state, and the minibatches are those of an uninterrupted run."""
    splits = _splits()
    expected = _draw(TensorBatches(splits.x_train, splits.y_train), _samplers(), 12)
    samplers = _samplers()
    loaders = _loaders(splits, samplers, 2)
    first = _draw(loaders, samplers, 4)
    saved = [s.state_dict() for s in samplers]
    _draw(loaders, samplers, 3)  # the run goes on past its checkpoint, then is cut
    for sampler, state in zip(samplers, saved):
        sampler.load_state_dict(state)
    rest = _draw(loaders, samplers, 8)
    loaders.close()
    assert _same(first + rest, expected)


def test_a_fresh_loader_on_a_resumed_sampler_goes_on_exactly() -> None:
    splits = _splits()
    expected = _draw(TensorBatches(splits.x_train, splits.y_train), _samplers(), 10)
    samplers = _samplers()
    first = _draw(_loaders(splits, samplers, 1), samplers, 4)
    resumed = _samplers()
    for sampler, old in zip(resumed, samplers):
        sampler.load_state_dict(old.state_dict())
    rest = _draw(_loaders(splits, resumed, 1), resumed, 6)
    assert _same(first + rest, expected)


def test_evaluation_batches_are_the_same_on_both_paths() -> None:
    splits = _splits()
    loaded = from_tensors(splits, CPU, LoaderOptions(num_workers=1))
    for split, limit in (("train", None), ("train", 9), ("test", None), ("val", None)):
        assert _same(
            list(loaded.batches(split, 4, limit)), list(splits.batches(split, 4, limit))
        ), split
        assert loaded.size(split) == splits.size(split)
    assert torch.equal(loaded.head(2), splits.head(2))
    assert loaded.num_train == splits.num_train and loaded.has_val and splits.has_val


class _Pairs(Dataset):
    def __init__(self, labels: list[object], inputs: list[object] | None = None) -> None:
        self.labels = labels
        self.inputs = inputs or [torch.zeros(2) for _ in labels]

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[object, object]:
        return self.inputs[index], self.labels[index]


def test_what_auto_holds_is_decided_by_the_size_of_the_inputs() -> None:
    dataset = _Pairs([0, 1, 2, 1])  # 4 samples of 2 floats: 32 bytes
    assert should_hold("auto", dataset, budget=32)
    assert not should_hold("auto", dataset, budget=31)
    assert should_hold("tensors", dataset, budget=0)
    assert not should_hold("loader", dataset, budget=10**12)


def test_the_class_count_is_given_or_told_by_the_data_set() -> None:
    assert num_classes_of(_Pairs([0]), 5) == 5
    told = _Pairs([0])
    told.targets = [0, 4, 2]  # type: ignore[attr-defined]
    assert num_classes_of(told, None) == 5
    with pytest.raises(ValueError, match=r"data\.num_classes is needed"):
        num_classes_of(_Pairs([0, 1]), None)


@pytest.mark.parametrize(
    ("labels", "inputs", "message"),
    [
        ([0, 7], None, "labels from 0 to 7, outside 0..2"),
        ([0, 1.5], None, "labels must be one integer class index each"),
        ([0, 1], [torch.zeros(2), torch.zeros(3)], "samples of several shapes"),
        ([0, 1], [torch.zeros(2), "text"], "has a input of type str"),
    ],
)
def test_a_bad_minibatch_is_one_line(
    labels: list[object], inputs: list[object] | None, message: str
) -> None:
    data = DatasetSplits(_Pairs(labels, inputs), _Pairs(labels, inputs), 3, (2,), CPU)
    sampler = ReplicaSampler(2, 2, replica=0, num_replicas=1, seed=0)
    loaders = ReplicaLoaders(data.train, [sampler], 3, CPU, data.options, [0])
    with pytest.raises(ValueError, match=message):
        loaders(sampler.next(), 0)
    with pytest.raises(ValueError, match=message):
        list(data.batches("test", 2))
