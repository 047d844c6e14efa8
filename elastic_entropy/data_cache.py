"""A disk cache for data sets that are generated rather than read (MNIST-1D).

``mnist1d``'s ``make_dataset`` draws its 5,000 series afresh on every call (seconds of numpy on
every run, the largest part of a small job's start). Its output is a function of its arguments,
so it is kept, after the first run, in ``$ELASTIC_ENTROPY_CACHE`` (default
``$XDG_CACHE_HOME/elastic_entropy``, else ``~/.cache/elastic_entropy``) under a name that hashes
every argument and the package's version: a run reads back exactly the arrays it would draw. A
cache that cannot be written or read is no error: the arrays are generated as before.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)


def cache_folder() -> Path:
    if "ELASTIC_ENTROPY_CACHE" in os.environ:
        return Path(os.environ["ELASTIC_ENTROPY_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "elastic_entropy"


def _read(path: Path) -> dict[str, np.ndarray] | None:
    try:
        with np.load(path, allow_pickle=False) as arrays:
            return {name: arrays[name] for name in arrays.files}
    except (OSError, ValueError, EOFError) as error:  # missing, or damaged: generate again
        if path.exists():
            log.debug("ignoring the cached %s: %s", path, error)
        return None


def _write(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """Atomically: a reader never sees half a file (a temporary file renamed into place)."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path.parent, suffix=".tmp", delete=False) as tmp:
            np.savez(tmp, **arrays)
        os.replace(tmp.name, path)
    except OSError as error:  # a read-only home, a full disk: the run goes on uncached
        log.debug("could not cache %s: %s", path, error)


def cached(name: str, key: str, make: Callable[[], dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """``make()``'s arrays, from the cache when an earlier call with this ``key`` stored them."""
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    path = cache_folder() / f"{name}-{digest}.npz"
    arrays = _read(path)
    if arrays is None:
        arrays = make()
        _write(path, arrays)
    return arrays
