"""Data sets read from local files in their real formats, and the per-replica samplers."""

from __future__ import annotations

import gzip
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from elastic_entropy.data import DataFileError, DataNotFoundError, ReplicaSampler, load_dataset
from elastic_entropy.readers import UnsafePickleError
from tests.fake_data import (
    DAMAGES,
    IMAGES,
    IS_ROOT,
    NUM_TEST,
    Damage,
    mnist_arrays,
    write_cifar,
    write_mnist,
)


def test_mnist1d_is_generated_locally() -> None:
    data = load_dataset("mnist1d")
    assert data.x_train.shape == (4000, 40) and data.x_test.shape == (1000, 40)
    assert data.input_shape == (40,) and data.num_classes == 10
    assert abs(data.x_train.mean().item()) < 1e-4 and abs(data.x_train.std().item() - 1) < 1e-3
    assert set(data.y_train.tolist()) == set(range(10))


def test_digits_with_validation_split() -> None:
    data = load_dataset("digits", validation_fraction=0.1)
    assert data.input_shape == (1, 8, 8)
    assert data.x_val is not None and len(data.y_val) == 144
    assert len(data.y_train) + len(data.y_val) + len(data.y_test) == 1797


def test_train_fraction_keeps_a_fixed_subset_apart_from_validation() -> None:
    full = load_dataset("digits", validation_fraction=0.1)
    small = load_dataset("digits", validation_fraction=0.1, train_fraction=0.25)
    again = load_dataset("digits", validation_fraction=0.1, train_fraction=0.25)
    assert len(small.y_train) == round(0.25 * len(full.y_train))
    assert torch.equal(small.x_train, again.x_train)  # the same subset on every run
    assert torch.equal(small.x_val, full.x_val) and torch.equal(small.x_test, full.x_test)
    rows = {tuple(row.flatten().tolist()) for row in full.x_train}
    assert all(tuple(row.flatten().tolist()) in rows for row in small.x_train)


def _write_idx(path: Path, array: np.ndarray) -> None:
    header = bytes([0, 0, 8, array.ndim]) + b"".join(d.to_bytes(4, "big") for d in array.shape)
    path.write_bytes(gzip.compress(header + array.astype(np.uint8).tobytes()))


def test_mnist_reads_idx_files_from_the_torchvision_layout(tmp_path: Path) -> None:
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    _write_idx(raw / "train-images-idx3-ubyte.gz", rng.integers(0, 256, (20, 28, 28)))
    _write_idx(raw / "train-labels-idx1-ubyte.gz", np.arange(20) % 10)
    _write_idx(raw / "t10k-images-idx3-ubyte.gz", rng.integers(0, 256, (5, 28, 28)))
    _write_idx(raw / "t10k-labels-idx1-ubyte.gz", np.arange(5))
    data = load_dataset("mnist", root=tmp_path)
    assert data.x_train.shape == (20, 1, 28, 28) and data.y_test.tolist() == [0, 1, 2, 3, 4]


def test_cifar10_reads_python_batches_and_refuses_foreign_pickles(tmp_path: Path) -> None:
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for name in [*(f"data_batch_{i}" for i in range(1, 6)), "test_batch"]:
        batch = {b"data": rng.integers(0, 256, (4, 3072), dtype=np.uint8), b"labels": [0, 1, 2, 3]}
        (folder / name).write_bytes(pickle.dumps(batch))
    data = load_dataset("cifar10", root=tmp_path)
    assert data.x_train.shape == (20, 3, 32, 32) and data.input_shape == (3, 32, 32)
    (folder / "test_batch").write_bytes(pickle.dumps({b"data": Path("x")}))
    with pytest.raises(pickle.UnpicklingError, match="refusing"):
        load_dataset("cifar10", root=tmp_path)


@pytest.mark.parametrize("name", ["mnist", "cifar10"])
def test_missing_folder_is_named_in_the_error(tmp_path: Path, name: str) -> None:
    with pytest.raises(DataNotFoundError, match=f"data folder {tmp_path / 'nowhere'}"):
        load_dataset(name, root=tmp_path / "nowhere")


def test_unknown_data_set() -> None:
    with pytest.raises(ValueError, match="Unknown data set 'imagenet'"):
        load_dataset("imagenet")


def test_full_policy_gives_every_replica_all_data_in_its_own_order() -> None:
    samplers = [ReplicaSampler(100, 10, replica=a, num_replicas=3, seed=0) for a in range(3)]
    epochs = [torch.cat([s.next() for _ in range(10)]) for s in samplers]
    for epoch in epochs:
        assert sorted(epoch.tolist()) == list(range(100))
    assert not torch.equal(epochs[0], epochs[1])


def test_shard_policy_is_disjoint_and_covering() -> None:
    samplers = [
        ReplicaSampler(103, 5, replica=a, num_replicas=4, policy="shard", seed=3) for a in range(4)
    ]
    shards = [set(s.indices.tolist()) for s in samplers]
    assert sum(len(s) for s in shards) == 103 and set().union(*shards) == set(range(103))
    for s, shard in zip(samplers, shards):
        seen = {i for _ in range(50) for i in s.next().tolist()}
        assert seen <= shard


def test_sampler_state_round_trip_and_too_small_shards() -> None:
    s = ReplicaSampler(50, 8, replica=1, num_replicas=2, seed=1)
    for _ in range(9):
        s.next()
    t = ReplicaSampler(50, 8, replica=1, num_replicas=2, seed=1)
    t.load_state_dict(s.state_dict())
    assert all(torch.equal(s.next(), t.next()) for _ in range(20))
    with pytest.raises(ValueError, match=r"fewer than data\.batch_size=64"):
        ReplicaSampler(100, 64, replica=0, num_replicas=4, policy="shard")


@pytest.mark.parametrize("damage", DAMAGES, ids=[f"{d.data}: {d.name}" for d in DAMAGES])
def test_a_damaged_file_is_named_with_what_is_wrong(tmp_path: Path, damage: Damage) -> None:
    if damage.is_permissions and IS_ROOT:
        pytest.skip("root reads a chmod 000 file")
    path = damage.build(tmp_path)
    with pytest.raises(DataFileError) as caught:
        load_dataset(damage.data, root=tmp_path)
    message = str(caught.value)
    assert caught.value.path == path and message.startswith(f"{path} "), message
    assert damage.message in message and "\n" not in message, message
    fixes = ("re-download MNIST", "re-extract cifar-10-python.tar.gz", "rename it", "gunzip it")
    assert any(fix in message for fix in fixes), message  # and how to fix it


@pytest.mark.parametrize("gz", [False, True])
def test_mnist_raw_and_gzipped_folders_read_the_same(tmp_path: Path, gz: bool) -> None:
    write_mnist(tmp_path, gz=gz)
    data = load_dataset("mnist", root=tmp_path)
    images = mnist_arrays("train")[IMAGES]
    pixels = images.astype(np.float64) / 255.0  # standardised on the training split
    expected = (pixels - pixels.mean()) / pixels.std()
    assert torch.allclose(data.x_train[:, 0].double(), torch.from_numpy(expected), atol=1e-5)
    assert data.y_train.dtype == torch.long and len(data.y_test) == NUM_TEST


def test_a_foreign_pickle_is_a_data_file_error_and_still_an_unpickling_error(
    tmp_path: Path,
) -> None:
    folder = write_cifar(tmp_path)
    (folder / "data_batch_2").write_bytes(pickle.dumps({b"data": Path("x")}))
    with pytest.raises(UnsafePickleError) as caught:
        load_dataset("cifar10", root=tmp_path)
    # the CLI's one line (a ValueError) and the unpickler's old contract, both
    assert isinstance(caught.value, ValueError) and isinstance(caught.value, DataFileError)
    assert isinstance(caught.value, pickle.UnpicklingError)
    assert caught.value.path == folder / "data_batch_2"


def test_image_sets_are_standardised_per_channel_on_the_train_split_after_the_hold_out(
    tmp_path: Path,
) -> None:
    write_cifar(tmp_path)
    data = load_dataset("cifar10", root=tmp_path, validation_fraction=0.25)
    std, mean = torch.std_mean(data.x_train.double(), dim=(0, 2, 3), correction=0)
    assert torch.allclose(mean, torch.zeros(3, dtype=torch.float64), atol=1e-6)
    assert torch.allclose(std, torch.ones(3, dtype=torch.float64), atol=1e-5)
    # a train_fraction cut leaves val and test as they were: one scaling for every fraction
    small = load_dataset("cifar10", root=tmp_path, validation_fraction=0.25, train_fraction=0.5)
    assert torch.equal(small.x_val, data.x_val) and torch.equal(small.x_test, data.x_test)


def test_the_new_image_sets_are_registered() -> None:
    from elastic_entropy.data import DATASETS, PER_CHANNEL

    assert {"cifar100", "svhn", "mnist5k", "imagefolder"} <= set(DATASETS)
    assert PER_CHANNEL == set(DATASETS) - {"mnist1d", "digits"}
