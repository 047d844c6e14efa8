"""Readers of the data files in their published formats: MNIST's idx files (raw or gzipped) and
CIFAR-10's pickled python batches.

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
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

MNIST_FIX = "re-download MNIST or fix data.root"
CIFAR_FIX = "re-extract cifar-10-python.tar.gz under data.root"
NUM_CLASSES = 10  # MNIST and CIFAR-10 alike
_GZIP_MAGIC = b"\x1f\x8b"


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


def _start(raw: bytes) -> str:
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
        problem = f"is a raw idx file, not gzip data (it {_start(raw)})"
        raise DataFileError(path, problem, f"rename it {path.stem} or gzip it")
    if raw[:2] != _GZIP_MAGIC:
        problem = f"is not gzip data ({_start(raw)}; expected the gzip magic 1f 8b)"
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
    elif raw[:2] == _GZIP_MAGIC:
        problem = "is gzipped, not a raw idx file (it starts with the gzip magic 1f 8b)"
        raise DataFileError(path, problem, f"rename it {path.name}.gz or gunzip it")
    expected = 0x0800 + ndim
    if len(raw) < 4 or raw[:2] != b"\0\0":
        problem = f"is not an idx file ({_start(raw)}; expected a magic number 0x{expected:08x})"
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


def _check_labels(path: Path, labels: np.ndarray, fix: str) -> None:
    bad = np.flatnonzero((labels < 0) | (labels >= NUM_CLASSES))
    if len(bad):
        raise DataFileError(
            path,
            f"has label {labels[bad[0]]} at index {bad[0]}; labels are 0..{NUM_CLASSES - 1}",
            fix,
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
    _check_labels(labels_path, labels, MNIST_FIX)
    return images, labels


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


def _unpickle(path: Path) -> Any:
    raw = read_bytes(path, CIFAR_FIX)
    if raw[:2] == _GZIP_MAGIC:
        problem = "is gzipped, not a CIFAR-10 python batch (it starts with 1f 8b)"
        raise DataFileError(path, problem, f"gunzip it or {CIFAR_FIX}")
    try:
        return _ArrayUnpickler(io.BytesIO(raw), encoding="bytes").load()
    except pickle.UnpicklingError as error:
        if str(error).startswith("refusing"):
            problem = f"is not a CIFAR-10 batch ({error}: a pickle can run code)"
            raise UnsafePickleError(path, problem, CIFAR_FIX) from error
        what = "truncated" if "truncated" in str(error) else f"not a pickle; it {_start(raw)}"
        raise DataFileError(path, f"is not a CIFAR-10 python batch ({what})", CIFAR_FIX) from error
    except EOFError as error:  # the stream ended before the pickle's STOP
        what = "empty" if not raw else "truncated"
        raise DataFileError(path, f"is not a CIFAR-10 python batch ({what})", CIFAR_FIX) from error
    # garbage drives the pickle machine into any error at all (int('arbage\n') for b"garbage",
    # a bad opcode's KeyError, a short frame's struct.error...): all mean "not a pickle", and
    # the unpickler's words for it would only confuse; the cause stays chained for debugging
    except Exception as error:
        problem = f"is not a CIFAR-10 python batch (not a pickle; it {_start(raw)})"
        raise DataFileError(path, problem, CIFAR_FIX) from error


def read_cifar_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """One pickled CIFAR-10 batch: a dict with ``b"data"`` (N x 3072 bytes, the planes R, G, B
    of 32 x 32 images) and ``b"labels"`` (N ints in 0..9); uint8 ``(N, 3, 32, 32)`` and int64."""
    if not path.exists():
        raise DataNotFoundError(
            f"CIFAR-10 file {path} not found; extract cifar-10-python.tar.gz under data.root"
        )
    batch = _unpickle(path)
    if not isinstance(batch, dict) or b"data" not in batch or b"labels" not in batch:
        if isinstance(batch, dict):
            found = f"a dict with keys {', '.join(sorted(map(repr, batch))) or 'none'}"
        else:
            found = f"a pickled {type(batch).__name__}"
        problem = f"is not a CIFAR-10 batch ({found}; expected a dict with b'data' and b'labels')"
        raise DataFileError(path, problem, CIFAR_FIX)
    data, labels = np.asarray(batch[b"data"]), np.asarray(batch[b"labels"])
    if data.ndim != 2 or data.shape[0] == 0 or data.shape[1] != 3 * 32 * 32:
        dims = "x".join(map(str, data.shape)) or "a scalar"
        problem = f"has b'data' of shape {dims}; CIFAR-10 batches hold N x 3072 with N > 0"
        raise DataFileError(path, problem, CIFAR_FIX)
    # the real batches are uint8; other integer arrays are accepted if they hold bytes' values
    is_bytes = data.dtype == np.uint8 or (
        data.dtype.kind in "iu" and data.min() >= 0 and data.max() <= 255
    )
    if not is_bytes:
        problem = f"has b'data' of {data.dtype}, not bytes 0..255 (CIFAR-10's pixels)"
        raise DataFileError(path, problem, CIFAR_FIX)
    if labels.ndim != 1 or labels.dtype.kind not in "iu" or len(labels) != len(data):
        dims = "x".join(map(str, labels.shape)) or "a scalar"
        problem = f"has b'labels' of shape {dims} and type {labels.dtype} for {len(data)} images"
        raise DataFileError(path, f"{problem}; expected {len(data)} ints", CIFAR_FIX)
    _check_labels(path, labels, CIFAR_FIX)
    return data.astype(np.uint8, copy=False).reshape(-1, 3, 32, 32), labels.astype(np.int64)
