"""Readers of the data files in their published formats: MNIST's idx files (raw or gzipped) and
CIFAR-10's and CIFAR-100's pickled python batches (SVHN, image folders and mnist5k are in
``elastic_entropy.image_readers``).

Every way a file can be unusable (missing, a folder, unreadable, empty, truncated, not the format,
the wrong structure, disagreeing with its companion file) is checked here, where the path is
known, and raised as ``DataNotFoundError`` or ``DataFileError`` naming the file, what is wrong
with it and how to fix it: the command line shows that as one line.
"""

from __future__ import annotations

import gzip
import io
import math
import pickle
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

MNIST_FIX = "re-download MNIST or fix data.root"
NUM_CLASSES = 10  # MNIST and CIFAR-10 alike
GZIP_MAGIC = b"\x1f\x8b"


class DataNotFoundError(FileNotFoundError):
    """A data set's files are not where the config says."""


class DataFileError(ValueError):
    """A data file is there but cannot be used: unreadable, malformed, or at odds with its
    companion. ``path`` is the file; the message is ``PATH PROBLEM: FIX``, on one line."""

    def __init__(self, path: Path, problem: str, fix: str) -> None:
        super().__init__(f"{path} {problem}: {fix}")
        self.path = path


class UnsafePickleError(DataFileError, pickle.UnpicklingError):
    """A pickle that would build objects other than numpy arrays (it could run code): still a
    ``pickle.UnpicklingError``, as the restricted unpickler has always raised."""


def start(raw: bytes) -> str:
    """How a file begins, for a message: 'empty' or its first bytes."""
    return "empty" if not raw else f"starts with {raw[:8]!r}"


def read_bytes(path: Path, fix: str) -> bytes:
    if path.is_dir():
        raise DataFileError(path, "is a folder, not a data file", fix)
    try:
        return path.read_bytes()
    except FileNotFoundError as error:
        raise DataNotFoundError(f"data file {path} not found: {fix}") from error
    except OSError as error:  # permissions, I/O errors: strerror is the one-line reason
        reason = error.strerror or type(error).__name__
        raise DataFileError(
            path, f"cannot be read ({reason})", f"make it readable or {fix}"
        ) from error


def _gunzip(path: Path, raw: bytes, fix: str) -> bytes:
    if raw[:4] == b"\0\0\x08\x01" or raw[:4] == b"\0\0\x08\x03":
        problem = f"is a raw idx file, not gzip data (it {start(raw)})"
        raise DataFileError(path, problem, f"rename it {path.stem} or gzip it")
    if raw[:2] != GZIP_MAGIC:
        problem = f"is not gzip data ({start(raw)}; expected the gzip magic 1f 8b)"
        raise DataFileError(path, problem, fix)
    try:
        return gzip.decompress(raw)
    # a cut-off stream ends in EOFError, a damaged one in zlib.error or BadGzipFile (an OSError)
    except EOFError as error:
        raise DataFileError(path, f"is a truncated gzip file ({error})", fix) from error
    except (OSError, zlib.error) as error:
        raise DataFileError(path, f"is a damaged gzip file ({error})", fix) from error


def read_idx(path: Path, ndim: int) -> np.ndarray:
    """An idx file of unsigned bytes with ``ndim`` dimensions (LeCun's format: magic number
    ``0x0000 08 ndim``, ``ndim`` big-endian 32-bit sizes, the data), gunzipped if ``*.gz``."""
    raw = read_bytes(path, MNIST_FIX)
    if path.suffix == ".gz":
        raw = _gunzip(path, raw, MNIST_FIX)
    elif raw[:2] == GZIP_MAGIC:
        problem = "is gzipped, not a raw idx file (it starts with the gzip magic 1f 8b)"
        raise DataFileError(path, problem, f"rename it {path.name}.gz or gunzip it")
    expected = 0x0800 + ndim
    if len(raw) < 4 or raw[:2] != b"\0\0":
        problem = f"is not an idx file ({start(raw)}; expected a magic number 0x{expected:08x})"
        raise DataFileError(path, problem, MNIST_FIX)
    magic = int.from_bytes(raw[:4], "big")
    if magic != expected:
        raise DataFileError(
            path,
            f"has the idx magic number 0x{magic:08x}, expected 0x{expected:08x} "
            f"(unsigned bytes, {ndim} dimension{'s' if ndim > 1 else ''})",
            MNIST_FIX,
        )
    offset = 4 + 4 * ndim
    if len(raw) < offset:
        raise DataFileError(
            path, f"is truncated (its header needs {offset} bytes, it has {len(raw)})", MNIST_FIX
        )
    shape = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    size, found = math.prod(shape), len(raw) - offset  # exact: sizes up to 2**32 each
    if found != size:
        state = "is truncated" if found < size else "has trailing bytes"
        dims = "x".join(map(str, shape))
        problem = f"{state} (its header says {dims} = {size} bytes of data, it has {found})"
        raise DataFileError(path, problem, MNIST_FIX)
    return np.frombuffer(raw, dtype=np.uint8, offset=offset).reshape(shape)


def _find(folder: Path, stem: str) -> Path:
    for candidate in (folder / stem, folder / f"{stem}.gz"):
        if candidate.exists():  # a folder in its place is reported by read_bytes, not skipped
            return candidate
    raise DataNotFoundError(
        f"MNIST file {stem}[.gz] not found in {folder}; put the four MNIST idx files there "
        "(torchvision layout ROOT/MNIST/raw/) or point data.root at the folder that holds MNIST/"
    )


def check_labels(
    path: Path, labels: np.ndarray, fix: str, num_classes: int = NUM_CLASSES, first: int = 0
) -> None:
    """Labels must lie in ``first..first + num_classes - 1``; the first one outside is named."""
    last = first + num_classes - 1
    bad = np.flatnonzero((labels < first) | (labels > last))
    if len(bad):
        raise DataFileError(
            path, f"has label {labels[bad[0]]} at index {bad[0]}; labels are {first}..{last}", fix
        )


def read_mnist_split(folder: Path, prefix: str) -> tuple[np.ndarray, np.ndarray]:
    """``PREFIX-images-idx3-ubyte`` and ``PREFIX-labels-idx1-ubyte`` (``prefix`` is ``train`` or
    ``t10k``): uint8 images ``(N, 28, 28)`` and their labels ``(N,)``, checked to agree."""
    images_path = _find(folder, f"{prefix}-images-idx3-ubyte")
    images = read_idx(images_path, ndim=3)
    if images.shape[0] == 0 or images.shape[1:] != (28, 28):
        dims = "x".join(map(str, images.shape))
        raise DataFileError(
            images_path, f"holds {dims} images; MNIST holds N x 28 x 28 with N > 0", MNIST_FIX
        )
    labels_path = _find(folder, f"{prefix}-labels-idx1-ubyte")
    labels = read_idx(labels_path, ndim=1)
    if len(labels) != len(images):
        raise DataFileError(
            labels_path,
            f"holds {len(labels)} labels but {images_path.name} holds {len(images)} images",
            f"use the labels file that came with those images; {MNIST_FIX}",
        )
    check_labels(labels_path, labels, MNIST_FIX)
    return images, labels


@dataclass(frozen=True)
class CifarFormat:
    """What differs between CIFAR-10's and CIFAR-100's batches: the rest of the format is one."""

    name: str  # for messages
    labels_key: bytes
    num_classes: int
    archive: str  # the tarball the batches come from, for the fix

    @property
    def fix(self) -> str:
        return f"re-extract {self.archive} under data.root"


CIFAR10 = CifarFormat("CIFAR-10", b"labels", 10, "cifar-10-python.tar.gz")
CIFAR100 = CifarFormat("CIFAR-100", b"fine_labels", 100, "cifar-100-python.tar.gz")


class _ArrayUnpickler(pickle.Unpickler):
    """CIFAR's batches are pickles: allow numpy arrays and nothing else to be built."""

    _ALLOWED: ClassVar[set[tuple[str, str]]] = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
    }

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a data file")
        return super().find_class(module, name)


def _unpickle(path: Path, fmt: CifarFormat) -> Any:
    fix, batch = fmt.fix, f"a {fmt.name} python batch"
    raw = read_bytes(path, fix)
    if raw[:2] == GZIP_MAGIC:
        problem = f"is gzipped, not {batch} (it starts with 1f 8b)"
        raise DataFileError(path, problem, f"gunzip it or {fix}")
    try:
        return _ArrayUnpickler(io.BytesIO(raw), encoding="bytes").load()
    except pickle.UnpicklingError as error:
        if str(error).startswith("refusing"):
            problem = f"is not a {fmt.name} batch ({error}: a pickle can run code)"
            raise UnsafePickleError(path, problem, fix) from error
        what = "truncated" if "truncated" in str(error) else f"not a pickle; it {start(raw)}"
        raise DataFileError(path, f"is not {batch} ({what})", fix) from error
    except EOFError as error:  # the stream ended before the pickle's STOP
        what = "empty" if not raw else "truncated"
        raise DataFileError(path, f"is not {batch} ({what})", fix) from error
    # garbage drives the pickle machine into any error at all (int('arbage\n') for b"garbage",
    # a bad opcode's KeyError, a short frame's struct.error...): all mean "not a pickle", and
    # the unpickler's words for it would only confuse; the cause stays chained for debugging
    except Exception as error:
        problem = f"is not {batch} (not a pickle; it {start(raw)})"
        raise DataFileError(path, problem, fix) from error


def read_cifar_batch(path: Path, fmt: CifarFormat = CIFAR10) -> tuple[np.ndarray, np.ndarray]:
    """One pickled CIFAR batch: a dict with ``b"data"`` (N x 3072 bytes, the planes R, G, B of
    32 x 32 images) and the labels (``b"labels"`` in 0..9 for CIFAR-10, ``b"fine_labels"`` in
    0..99 for CIFAR-100); uint8 ``(N, 3, 32, 32)`` and int64."""
    if not path.exists():
        raise DataNotFoundError(
            f"{fmt.name} file {path} not found; extract {fmt.archive} under data.root"
        )
    batch = _unpickle(path, fmt)
    key = fmt.labels_key
    if not isinstance(batch, dict) or b"data" not in batch or key not in batch:
        if isinstance(batch, dict):
            found = f"a dict with keys {', '.join(sorted(map(repr, batch))) or 'none'}"
        else:
            found = f"a pickled {type(batch).__name__}"
        expected = f"expected a dict with b'data' and {key!r}"
        raise DataFileError(path, f"is not a {fmt.name} batch ({found}; {expected})", fmt.fix)
    data, labels = np.asarray(batch[b"data"]), np.asarray(batch[key])
    _check_cifar_data(path, data, fmt)
    if labels.ndim != 1 or labels.dtype.kind not in "iu" or len(labels) != len(data):
        dims = "x".join(map(str, labels.shape)) or "a scalar"
        problem = f"has {key!r} of shape {dims} and type {labels.dtype} for {len(data)} images"
        raise DataFileError(path, f"{problem}; expected {len(data)} ints", fmt.fix)
    check_labels(path, labels, fmt.fix, fmt.num_classes)
    return data.astype(np.uint8, copy=False).reshape(-1, 3, 32, 32), labels.astype(np.int64)


def _check_cifar_data(path: Path, data: np.ndarray, fmt: CifarFormat) -> None:
    if data.ndim != 2 or data.shape[0] == 0 or data.shape[1] != 3 * 32 * 32:
        dims = "x".join(map(str, data.shape)) or "a scalar"
        problem = f"has b'data' of shape {dims}; {fmt.name} batches hold N x 3072 with N > 0"
        raise DataFileError(path, problem, fmt.fix)
    # the real batches are uint8; other integer arrays are accepted if they hold bytes' values
    is_bytes = data.dtype == np.uint8 or (
        data.dtype.kind in "iu" and data.min() >= 0 and data.max() <= 255
    )
    if not is_bytes:
        problem = f"has b'data' of {data.dtype}, not bytes 0..255 ({fmt.name}'s pixels)"
        raise DataFileError(path, problem, fmt.fix)
