"""Small MNIST and CIFAR-10 folders in the real formats, and a table of ways to damage one file.

The unit tests feed every damage to ``load_dataset``; the integration tests feed them to the
command line. Each ``Damage`` names the file it breaks, so both can check that the error does.
"""

from __future__ import annotations

import gzip
import os
import pickle
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

NUM_TRAIN, NUM_TEST = 20, 5
IMAGES, LABELS = "train-images-idx3-ubyte", "train-labels-idx1-ubyte"
TEST_IMAGES, TEST_LABELS = "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"
CIFAR_BATCHES = [*(f"data_batch_{i}" for i in range(1, 6)), "test_batch"]


def idx_bytes(array: np.ndarray, type_code: int = 0x08) -> bytes:
    """LeCun's idx format: magic ``0x0000 TYPE NDIM``, big-endian 32-bit sizes, the bytes."""
    header = bytes([0, 0, type_code, array.ndim])
    return header + b"".join(d.to_bytes(4, "big") for d in array.shape) + array.tobytes()


def mnist_arrays(prefix: str) -> dict[str, np.ndarray]:
    count = NUM_TRAIN if prefix == "train" else NUM_TEST
    images = np.random.default_rng(count).integers(0, 256, (count, 28, 28), dtype=np.uint8)
    labels = (np.arange(count) % 10).astype(np.uint8)
    return {f"{prefix}-images-idx3-ubyte": images, f"{prefix}-labels-idx1-ubyte": labels}


def write_mnist(root: Path, gz: bool) -> Path:
    """``ROOT/MNIST/raw/`` with the four idx files (``*.gz`` if ``gz``); returns the folder."""
    folder = root / "MNIST" / "raw"
    folder.mkdir(parents=True)
    for name, array in {**mnist_arrays("train"), **mnist_arrays("t10k")}.items():
        raw = idx_bytes(array)
        (folder / (f"{name}.gz" if gz else name)).write_bytes(gzip.compress(raw) if gz else raw)
    return folder


def cifar_batch(num_images: int = 4, seed: int = 0) -> dict[bytes, object]:
    data = np.random.default_rng(seed).integers(0, 256, (num_images, 3072), dtype=np.uint8)
    return {b"data": data, b"labels": [i % 10 for i in range(num_images)]}


def write_cifar(root: Path) -> Path:
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    for seed, name in enumerate(CIFAR_BATCHES):
        (folder / name).write_bytes(pickle.dumps(cifar_batch(seed=seed)))
    return folder


@dataclass(frozen=True)
class Damage:
    name: str
    data: str  # "mnist" or "cifar10"
    file: str  # the file broken, in the data set's folder; a ".gz" name makes a gzipped folder
    damage: Callable[[Path], None]  # rewrites that file of an intact folder
    message: str  # what the one line says besides the file's path
    is_permissions: bool = False  # root reads a chmod 000 file: skipped as root

    def build(self, root: Path) -> Path:
        """An intact folder under ``root`` with this damage done; returns the damaged file."""
        if self.data == "mnist":
            folder = write_mnist(root, gz=self.file.endswith(".gz"))
        else:
            folder = write_cifar(root)
        self.damage(folder / self.file)
        return folder / self.file


def _write(content: bytes) -> Callable[[Path], None]:
    return lambda path: path.write_bytes(content)


def _keep(fraction: float) -> Callable[[Path], None]:
    """Cut a file to ``fraction`` of its bytes, as an interrupted download leaves it."""
    return lambda path: path.write_bytes(path.read_bytes()[: int(fraction * path.stat().st_size)])


def _idx(array: np.ndarray, type_code: int = 0x08, gz: bool = False) -> Callable[[Path], None]:
    raw = idx_bytes(array, type_code)
    return _write(gzip.compress(raw) if gz else raw)


def _with_raw(edit: Callable[[bytes], bytes]) -> Callable[[Path], None]:
    """Edit the idx bytes inside a ``.gz`` file and gzip them again."""
    return lambda path: path.write_bytes(gzip.compress(edit(gzip.decompress(path.read_bytes()))))


def _folder(path: Path) -> None:
    path.unlink()
    path.mkdir()


def _unreadable(path: Path) -> None:
    path.chmod(0)


def _pickle(obj: object) -> Callable[[Path], None]:
    return _write(pickle.dumps(obj))


def _flip_crc(path: Path) -> None:
    raw = bytearray(path.read_bytes())
    raw[-8] ^= 0xFF  # gzip's trailer: CRC-32, then the size
    path.write_bytes(bytes(raw))


_IMAGES = mnist_arrays("train")[IMAGES]
_BATCH = cifar_batch()
_HEADER = "its header says"
GZ = ".gz"
MNIST: list[Damage] = [
    Damage(
        "empty images",
        "mnist",
        IMAGES,
        _write(b""),
        "is not an idx file (empty; expected a magic number 0x00000803)",
    ),
    Damage(
        "empty labels",
        "mnist",
        TEST_LABELS,
        _write(b""),
        "is not an idx file (empty; expected a magic number 0x00000801)",
    ),
    Damage("empty .gz", "mnist", LABELS + GZ, _write(b""), "is not gzip data (empty"),
    Damage(
        "gzip of nothing",
        "mnist",
        TEST_IMAGES + GZ,
        _write(gzip.compress(b"")),
        "is not an idx file (empty",
    ),
    Damage("truncated images", "mnist", IMAGES, _keep(0.5), f"is truncated ({_HEADER} 20x28x28"),
    Damage(
        "truncated labels in .gz",
        "mnist",
        LABELS + GZ,
        _with_raw(lambda raw: raw[:-3]),
        f"is truncated ({_HEADER} 20 = 20 bytes of data, it has 17)",
    ),
    Damage(
        "truncated header",
        "mnist",
        TEST_IMAGES,
        _write(idx_bytes(_IMAGES)[:10]),
        "is truncated (its header needs 16 bytes",
    ),
    Damage(
        "trailing bytes",
        "mnist",
        TEST_LABELS + GZ,
        _with_raw(lambda raw: raw + b"\0"),
        "has trailing bytes",
    ),
    Damage(
        "labels file as images",
        "mnist",
        IMAGES,
        _idx(np.zeros(20, np.uint8)),
        "has the idx magic number 0x00000801, expected 0x00000803",
    ),
    Damage(
        "float32 type code",
        "mnist",
        IMAGES + GZ,
        _idx(_IMAGES, 0x0D, gz=True),
        "has the idx magic number 0x00000d03, expected 0x00000803",
    ),
    Damage(
        "garbage images",
        "mnist",
        IMAGES,
        _write(b"garbage\n"),
        "is not an idx file (starts with b'garbage\\n'; expected a magic number 0x00000803)",
    ),
    Damage(
        "gzip without .gz",
        "mnist",
        TEST_IMAGES,
        _idx(_IMAGES, gz=True),
        "is gzipped, not a raw idx file (it starts with the gzip magic 1f 8b): "
        "rename it t10k-images-idx3-ubyte.gz or gunzip it",
    ),
    Damage(
        "not gzip in .gz",
        "mnist",
        IMAGES + GZ,
        _write(b"garbage\n"),
        "is not gzip data (starts with b'garbage\\n'; expected the gzip magic 1f 8b)",
    ),
    Damage(
        "raw idx in .gz",
        "mnist",
        TEST_LABELS + GZ,
        _idx(np.zeros(5, np.uint8)),
        "is a raw idx file, not gzip data (it starts with "
        "b'\\x00\\x00\\x08\\x01\\x00\\x00\\x00\\x05'): rename it t10k-labels-idx1-ubyte or gzip it",
    ),
    Damage("truncated gzip", "mnist", IMAGES + GZ, _keep(0.5), "is a truncated gzip file"),
    Damage("damaged gzip", "mnist", LABELS + GZ, _flip_crc, "is a damaged gzip file"),
    Damage(
        "32x32 images",
        "mnist",
        IMAGES,
        _idx(np.zeros((20, 32, 32), np.uint8)),
        "holds 20x32x32 images; MNIST holds N x 28 x 28 with N > 0",
    ),
    Damage(
        "no images",
        "mnist",
        TEST_IMAGES + GZ,
        _idx(np.zeros((0, 28, 28), np.uint8), gz=True),
        "holds 0x28x28 images",
    ),
    Damage(
        "label out of range",
        "mnist",
        TEST_LABELS,
        _idx(np.array([0, 1, 10, 2, 3], np.uint8)),
        "has label 10 at index 2; labels are 0..9",
    ),
    Damage(
        "counts disagree",
        "mnist",
        LABELS + GZ,
        _idx(np.zeros(19, np.uint8), gz=True),
        "holds 19 labels but train-images-idx3-ubyte.gz holds 20 images",
    ),
    Damage("folder as images", "mnist", TEST_IMAGES, _folder, "is a folder, not a data file"),
    Damage(
        "unreadable labels",
        "mnist",
        LABELS,
        _unreadable,
        "cannot be read (Permission denied): make it readable",
        is_permissions=True,
    ),
]
CIFAR: list[Damage] = [
    Damage(
        "empty batch",
        "cifar10",
        "data_batch_3",
        _write(b""),
        "is not a CIFAR-10 python batch (empty)",
    ),
    Damage(
        "truncated test_batch",
        "cifar10",
        "test_batch",
        _keep(0.5),
        "is not a CIFAR-10 python batch (truncated)",
    ),
    Damage(
        "garbage batch",
        "cifar10",
        "data_batch_1",
        _write(b"garbage\n"),
        "is not a CIFAR-10 python batch (not a pickle; it starts with b'garbage\\n')",
    ),
    Damage(
        "gzipped batch",
        "cifar10",
        "data_batch_2",
        _write(gzip.compress(pickle.dumps(_BATCH))),
        "is gzipped, not a CIFAR-10 python batch (it starts with 1f 8b): gunzip it",
    ),
    Damage(
        "pickled list",
        "cifar10",
        "test_batch",
        _pickle([1, 2]),
        "(a pickled list; expected a dict with b'data' and b'labels')",
    ),
    Damage(
        "str keys",
        "cifar10",
        "data_batch_5",
        _pickle({"data": 1, "labels": 2}),
        "(a dict with keys 'data', 'labels'; expected a dict with b'data' and b'labels')",
    ),
    Damage(
        "no labels",
        "cifar10",
        "data_batch_4",
        _pickle({b"data": _BATCH[b"data"]}),
        "(a dict with keys b'data'; expected",
    ),
    Damage(
        "wrong data shape",
        "cifar10",
        "test_batch",
        _pickle({**_BATCH, b"data": np.zeros((4, 1024), np.uint8)}),
        "has b'data' of shape 4x1024; CIFAR-10 batches hold N x 3072 with N > 0",
    ),
    Damage(
        "float pixels",
        "cifar10",
        "data_batch_1",
        _pickle({**_BATCH, b"data": np.full((4, 3072), 0.5)}),
        "has b'data' of float64, not bytes 0..255",
    ),
    Damage(
        "label out of range",
        "cifar10",
        "data_batch_2",
        _pickle({**_BATCH, b"labels": [0, 1, 10, 3]}),
        "has label 10 at index 2",
    ),
    Damage(
        "counts disagree",
        "cifar10",
        "test_batch",
        _pickle({**_BATCH, b"labels": [0, 1, 2]}),
        "has b'labels' of shape 3 and type int64 for 4 images; expected 4 ints",
    ),
    Damage("folder as batch", "cifar10", "data_batch_3", _folder, "is a folder, not a data file"),
    Damage(
        "foreign pickle",
        "cifar10",
        "test_batch",
        _pickle({b"data": Path("x")}),
        "is not a CIFAR-10 batch (refusing to load pathlib.",
    ),
    Damage(
        "unreadable batch",
        "cifar10",
        "test_batch",
        _unreadable,
        "cannot be read (Permission denied)",
        is_permissions=True,
    ),
]
DAMAGES = MNIST + CIFAR
IS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0


# ---- CIFAR-100, SVHN and image folders, in their real formats, and their damages -------------
# (a table apart from DAMAGES: the command-line tests hold that one to MNIST and CIFAR-10)
CIFAR100_TRAIN, CIFAR100_TEST = 6, 3
SVHN_TRAIN, SVHN_TEST = 6, 4
CLASSES = ("cat", "dog", "frog")
IMAGE_SIZE = (12, 10)  # width, height (Pillow's order)


def cifar100_batch(num_images: int, seed: int = 0) -> dict[bytes, object]:
    """The keys of the real ``train`` and ``test`` pickles (python 2's, read as bytes)."""
    data = np.random.default_rng(seed).integers(0, 256, (num_images, 3072), dtype=np.uint8)
    return {
        b"filenames": [f"image_{i}.png".encode() for i in range(num_images)],
        b"batch_label": b"training batch 1 of 1",
        b"fine_labels": [(37 * i + 99) % 100 for i in range(num_images)],
        b"coarse_labels": [i % 20 for i in range(num_images)],
        b"data": data,
    }


def write_cifar100(root: Path) -> Path:
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    for seed, (name, count) in enumerate([("train", CIFAR100_TRAIN), ("test", CIFAR100_TEST)]):
        (folder / name).write_bytes(pickle.dumps(cifar100_batch(count, seed)))
    (folder / "meta").write_bytes(pickle.dumps({b"fine_label_names": [b"apple"] * 100}))
    return folder


def svhn_arrays(count: int, seed: int = 0) -> dict[str, np.ndarray]:
    """SVHN's ``X`` ``[32, 32, 3, N]`` uint8 and ``y`` ``[N, 1]`` uint8 in 1..10 (10: digit 0)."""
    images = np.random.default_rng(seed).integers(0, 256, (32, 32, 3, count), dtype=np.uint8)
    labels = (np.arange(count) + 9) % 10 + 1  # 10, 1, 2, ...: the digit 0 first
    return {"X": images, "y": labels.astype(np.uint8)[:, None]}


def mat_bytes(variables: dict[str, np.ndarray]) -> bytes:
    """A MATLAB v5 file, as SVHN's are."""
    import io

    from scipy.io import savemat

    buffer = io.BytesIO()
    savemat(buffer, variables)
    return buffer.getvalue()


def write_svhn(root: Path) -> Path:
    folder = root / "svhn"
    folder.mkdir(parents=True)
    for seed, (name, count) in enumerate([("train", SVHN_TRAIN), ("test", SVHN_TEST)]):
        (folder / f"{name}_32x32.mat").write_bytes(mat_bytes(svhn_arrays(count, seed)))
    return folder


def image_bytes(size: tuple[int, int] = IMAGE_SIZE, seed: int = 0, fmt: str = "PNG") -> bytes:
    import io

    from PIL import Image

    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels, "RGB").save(buffer, fmt)
    return buffer.getvalue()


def write_image_folder(root: Path, name: str = "imagefolder") -> Path:
    """``ROOT/NAME/{train,test}/<class>/``: 3, 2, 1 training images (PNG) per class, one test
    image each (the frog's a JPEG)."""
    folder = root / name
    for split, counts in (("train", (3, 2, 1)), ("test", (1, 1, 1))):
        for label, (cls, count) in enumerate(zip(CLASSES, counts)):
            (folder / split / cls).mkdir(parents=True)
            for i in range(count):
                fmt = "JPEG" if (split, cls) == ("test", "frog") else "PNG"
                path = folder / split / cls / f"{i}.{'jpg' if fmt == 'JPEG' else 'png'}"
                path.write_bytes(image_bytes(seed=10 * label + i, fmt=fmt))
    return folder


MORE_WRITERS: dict[str, Callable[[Path], Path]] = {
    "cifar100": write_cifar100,
    "svhn": write_svhn,
    "imagefolder": write_image_folder,
}


@dataclass(frozen=True)
class MoreDamage(Damage):
    """A damage to a CIFAR-100, SVHN or image-folder file (``file`` relative to its folder)."""

    def build(self, root: Path) -> Path:
        folder = MORE_WRITERS[self.data](root)
        self.damage(folder / self.file)
        return folder / self.file


def _mkdir_empty(path: Path) -> None:
    path.mkdir(parents=True)


def _written(make: Callable[[], bytes]) -> Callable[[Path], None]:
    """Write what ``make`` makes when the damage is done: importing this table needs neither
    scipy nor Pillow."""
    return lambda path: path.write_bytes(make())


def _add_class(path: Path) -> None:
    path.mkdir()
    (path / "0.png").write_bytes(image_bytes())


_SVHN = svhn_arrays(SVHN_TEST)
MORE_DAMAGES: list[Damage] = [
    MoreDamage(
        "empty train", "cifar100", "train", _write(b""), "is not a CIFAR-100 python batch (empty)"
    ),
    MoreDamage(
        "CIFAR-10 batch as test",
        "cifar100",
        "test",
        _pickle(cifar_batch()),
        "(a dict with keys b'data', b'labels'; expected a dict with b'data' and b'fine_labels')",
    ),
    MoreDamage(
        "label out of range",
        "cifar100",
        "train",
        _pickle({**cifar100_batch(3), b"fine_labels": [0, 100, 5]}),
        "has label 100 at index 1; labels are 0..99",
    ),
    MoreDamage(
        "foreign pickle",
        "cifar100",
        "test",
        _pickle({b"data": Path("x")}),
        "is not a CIFAR-100 batch (refusing to load pathlib.",
    ),
    MoreDamage(
        "empty .mat",
        "svhn",
        "train_32x32.mat",
        _write(b""),
        "is not a MATLAB .mat file (empty)",
    ),
    MoreDamage(
        "not a .mat",
        "svhn",
        "test_32x32.mat",
        _write(b"garbage\n"),
        "is not a MATLAB .mat file (starts with b'garbage\\n')",
    ),
    MoreDamage(
        "truncated .mat", "svhn", "train_32x32.mat", _keep(0.5), "is a truncated or damaged .mat"
    ),
    MoreDamage(
        "v7.3 .mat",
        "svhn",
        "test_32x32.mat",
        _write(b"MATLAB 7.3 MAT-file, Platform: GLNXA64, HDF5 schema 1.00 ." + bytes(500)),
        "is a MATLAB v7.3 (HDF5) file; SVHN's are MATLAB v5",
    ),
    MoreDamage(
        "wrong image shape",
        "svhn",
        "train_32x32.mat",
        _written(lambda: mat_bytes({**_SVHN, "X": np.zeros((28, 28, 1, 4), np.uint8)})),
        "has X of shape 28x28x1x4; SVHN's X is 32 x 32 x 3 x N with N > 0",
    ),
    MoreDamage(
        "no labels",
        "svhn",
        "test_32x32.mat",
        _written(lambda: mat_bytes({"X": _SVHN["X"]})),
        "has no variable y (it holds X)",
    ),
    MoreDamage(
        "counts disagree",
        "svhn",
        "test_32x32.mat",
        _written(lambda: mat_bytes({**_SVHN, "y": _SVHN["y"][:3]})),
        "has y of shape 3x1 and type uint8 for 4 images; expected 4 x 1 labels",
    ),
    MoreDamage(
        "label 0",
        "svhn",
        "train_32x32.mat",
        _written(lambda: mat_bytes({**_SVHN, "y": np.array([[3], [0], [10], [1]], np.uint8)})),
        "has label 0 at index 1; labels are 1..10",
    ),
    MoreDamage(
        "not an image",
        "imagefolder",
        "train/dog/1.png",
        _write(b"garbage\n"),
        "is not a readable image (UnidentifiedImageError",
    ),
    MoreDamage(
        "truncated png",
        "imagefolder",
        "train/cat/0.png",
        _keep(0.5),
        "is not a readable image (OSError",
    ),
    MoreDamage(
        "another size",
        "imagefolder",
        "train/frog/0.png",
        _written(lambda: image_bytes((8, 8))),
        f"train/cat/0.png ({IMAGE_SIZE[0]}x{IMAGE_SIZE[1]} RGB): resize the images to one size",
    ),
    MoreDamage(
        "test image of another size",
        "imagefolder",
        "test/dog/0.png",
        _written(lambda: image_bytes((8, 8))),
        "is 8x8 RGB, unlike the training images (12x10 RGB): resize the images to one size",
    ),
    MoreDamage(
        "class with no image",
        "imagefolder",
        "train/newt",
        _mkdir_empty,
        "holds no .png or .jpg image",
    ),
    MoreDamage(
        "test class not in train",
        "imagefolder",
        "test/newt",
        _add_class,
        "is a class that the training split does not have",
    ),
]
