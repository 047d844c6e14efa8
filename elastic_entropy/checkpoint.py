"""Atomic, verified, resumable checkpoints: one file per rank and a manifest written last.

Layout: ``RUN_DIR/checkpoints/step-000000120/rank-0.pt ... rank-{W-1}.pt MANIFEST.json``. Every
rank writes its file under a temporary name and renames it; rank 0 writes the manifest (the
SHA-256 of every rank file) once all of them are in place. A directory without a manifest, or
whose files do not match it, was cut off or damaged and is never loaded. Files are read with
``torch.load(weights_only=True)``: tensors and plain containers only, never arbitrary objects.
"""

from __future__ import annotations

import errno
import hashlib
import io
import json
import os
import random
import re
import shutil
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

CHECKPOINTS = "checkpoints"
MANIFEST = "MANIFEST.json"
FORMAT = 2
# format 1: before each component saved its own state (the checkpointer converts it)
READABLE_FORMATS = (1, 2)


class CheckpointError(ValueError):
    """A checkpoint that cannot be used for this run (the message says why and what to do)."""


class DiskFullError(OSError, ValueError):
    """No room (ENOSPC, EDQUOT) for a file of the run: the user frees space or moves the run.

    An OSError with its errno; and a ValueError, as every error that is the user's to fix, so
    that the command line ends it in one line with exit code 2 (not 75: a restart or a requeue
    would only fill the disk again)."""

    def __str__(self) -> str:
        return str(self.strerror)  # the whole line already; OSError would prefix "[Errno 28]"


# a full file system and an exhausted quota are the user's to fix, never a bug's traceback
FULL = (errno.ENOSPC, errno.EDQUOT)
_HEX_DIGEST = re.compile(r"[0-9a-f]{64}")
# how torch.load(weights_only=True) names the class it refused (other failures are damage)
_UNSAFE_GLOBAL = re.compile(r"Unsupported global: GLOBAL ([\w.]+)")
_LAYOUT_KEYS = ("step", "world_size", "replicas_per_process")


@dataclass(frozen=True)
class Found:
    path: Path
    manifest: dict[str, Any]
    skipped: list[str]  # damaged or unfinished checkpoints passed over, with the reason
    # rank 0's file, read once while choosing the checkpoint; never sent to the other ranks
    state: dict[str, Any] | None = field(default=None, repr=False, compare=False)

    @property
    def step(self) -> int:
        return int(self.manifest["step"])

    def without_state(self) -> Found:
        return replace(self, state=None)


def step_dir(run_dir: Path, step: int) -> Path:
    return run_dir / CHECKPOINTS / f"step-{step:09d}"


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _size(num_bytes: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if num_bytes < 1024 or unit == "GiB":
            return f"{num_bytes:.0f} {unit}" if unit == "B" else f"{num_bytes:.1f} {unit}"
        num_bytes /= 1024
    raise AssertionError("unreachable")


def disk_full(error: OSError, path: Path, needed: int) -> DiskFullError:
    """The one line for a write of ``needed`` bytes to ``path`` that found no room."""
    try:
        stat = os.statvfs(path.parent)
        free = f", {_size(stat.f_bavail * stat.f_frsize)} free"
    except OSError:
        free = ""
    return DiskFullError(
        error.errno,
        f"no space left in {path.parent} to write {path.name} ({_size(needed)} needed{free}; "
        f"{os.strerror(error.errno or errno.ENOSPC)}): free some space there, or move the run "
        "to a larger file system (hydra.run.dir); the last complete checkpoint is intact, and "
        "rerunning the same command resumes from it",
    )


def write_bytes_atomic(path: Path, data: bytes | memoryview) -> None:
    """Write ``data`` under a temporary name, fsync, rename: ``path`` holds all of it or is
    untouched. A full disk is a :class:`DiskFullError` and leaves no temporary file."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tmp.open("wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except BaseException as error:
        tmp.unlink(missing_ok=True)
        if isinstance(error, OSError) and error.errno in FULL:
            raise disk_full(error, path, len(data)) from error
        raise


def save_rank(state: dict[str, Any], directory: Path, rank: int) -> str:
    """Write this rank's state; returns its SHA-256 for the manifest."""
    # serialised in memory first: torch.save into a full file system fails deep in its zip
    # writer with a RuntimeError and no errno; a plain write of known bytes says ENOSPC, and
    # the size needed is exact
    buffer = io.BytesIO()
    torch.save(state, buffer)
    data = buffer.getbuffer()
    write_bytes_atomic(directory / f"rank-{rank}.pt", data)
    return hashlib.sha256(data).hexdigest()


def _unlisted(directory: Path, world_size: int) -> list[Path]:
    """The rank files in ``directory`` that a manifest of ``world_size`` ranks does not list."""
    listed = {f"rank-{rank}.pt" for rank in range(world_size)}
    return [path for path in directory.glob("rank-*.pt") if path.name not in listed]


def write_manifest(directory: Path, manifest: dict[str, Any]) -> None:
    """Rank 0, after every rank's file is in place: the checkpoint now exists."""
    # a step written again after a fallback may hold rank files of the checkpoint it replaces
    # that this one does not vouch for: with them there it would never be valid
    for stale in _unlisted(directory, len(manifest["sha256"])):
        stale.unlink(missing_ok=True)
    data = json.dumps({"format": FORMAT, **manifest}, indent=2).encode()
    write_bytes_atomic(directory / MANIFEST, data)


def _is_count(value: Any, least: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= least


def manifest_problem(directory: Path, manifest: Any) -> str | None:
    """Why ``manifest`` does not vouch for exactly the rank files of ``directory``, or None."""
    if not isinstance(manifest, dict):
        return f"{MANIFEST} holds a {type(manifest).__name__}, not an object"
    missing = [key for key in ("format", *_LAYOUT_KEYS, "sha256") if key not in manifest]
    if missing:
        return f"{MANIFEST} lacks {', '.join(missing)}"
    if not _is_count(manifest["format"], 1) or manifest["format"] not in READABLE_FORMATS:
        return f"{MANIFEST} has format {manifest['format']!r}, not one of {_formats()}"
    for key in _LAYOUT_KEYS:
        if not _is_count(manifest[key], 0 if key == "step" else 1):
            return f"{MANIFEST} has {key}={manifest[key]!r}, not a count"
    if directory.name != f"step-{manifest['step']:09d}":
        return f"{MANIFEST} is for step {manifest['step']}"
    world_size, hashes = manifest["world_size"], manifest["sha256"]
    if not isinstance(hashes, list) or len(hashes) != world_size:
        return f"{MANIFEST} has no list of {world_size} checksums (world_size={world_size})"
    if not all(isinstance(h, str) and _HEX_DIGEST.fullmatch(h) for h in hashes):
        return f"{MANIFEST} has a checksum that is not 64 hex digits"
    extra = sorted(p.name for p in _unlisted(directory, world_size))
    if extra:
        return f"{', '.join(extra)} is not in its {MANIFEST} (world_size={world_size})"
    return None


def _problem(directory: Path) -> tuple[dict[str, Any] | None, str | None]:
    manifest_path = directory / MANIFEST
    if not manifest_path.is_file():
        return None, f"{directory.name}: unfinished (no {MANIFEST})"
    try:
        manifest = json.loads(manifest_path.read_bytes())
    except (OSError, ValueError) as error:  # UnicodeDecodeError is a ValueError
        return None, f"{directory.name}: unreadable {MANIFEST} ({error})"
    problem = manifest_problem(directory, manifest)
    if problem is not None:
        return None, f"{directory.name}: {problem}"
    for rank, expected in enumerate(manifest["sha256"]):
        path = directory / f"rank-{rank}.pt"
        if not path.is_file():
            return None, f"{directory.name}: {path.name} is missing"
        if sha256(path) != expected:
            return None, f"{directory.name}: {path.name} fails its checksum (truncated or damaged)"
    return manifest, None


def find_latest(run_dir: Path) -> Found | None:
    """The newest complete, verified checkpoint whose rank-0 file torch.load accepts (that
    state comes with it); None when the run has none at all. Rank 0 calls it for everyone."""
    root = run_dir / CHECKPOINTS
    candidates = sorted(root.glob("step-*"), reverse=True) if root.is_dir() else []
    skipped = []
    for directory in candidates:
        manifest, problem = _problem(directory)
        if manifest is not None:
            state, problem = _read(directory / "rank-0.pt")
            if state is not None:
                return Found(directory, manifest, skipped, state)
            problem = f"{directory.name}: {problem}"
        skipped.append(problem)
    if any((d / MANIFEST).exists() for d in candidates):
        raise CheckpointError(
            f"no usable checkpoint in {root}: " + "; ".join(skipped) + ". Move the damaged "
            "checkpoints away to start over, or choose another hydra.run.dir"
        )
    return None


def _formats() -> str:
    return ", ".join(map(str, READABLE_FORMATS))


def _read(path: Path) -> tuple[dict[str, Any] | None, str | None]:
    """A rank file's state, or None and why it cannot be used (said without the directory)."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        # torch's message would suggest weights_only=False, which we never do
        unsafe = _UNSAFE_GLOBAL.search(str(error))
        why = (
            f"it holds a {unsafe.group(1)}, which torch.load(weights_only=True) refuses to build"
            if unsafe
            else "damaged or not a checkpoint"
        )
        return None, f"cannot read {path.name} ({type(error).__name__}): {why}"
    if not isinstance(state, dict):
        return None, f"cannot read {path.name}: it holds a {type(state).__name__}, not a state"
    if state.get("format") not in READABLE_FORMATS:
        return None, (
            f"{path.name} has checkpoint format {state.get('format')}, not one of {_formats()} "
            "(written by another version of elastic-entropy)"
        )
    return state, None


def load_rank(found: Found, rank: int) -> dict[str, Any]:
    """Rank ``rank``'s state (rank 0's as read by :func:`find_latest` when it chose it)."""
    if rank == 0 and found.state is not None:
        return found.state
    state, problem = _read(found.path / f"rank-{rank}.pt")
    if state is None:
        raise CheckpointError(
            f"{found.path}: {problem}; move it away or choose another hydra.run.dir"
        )
    return state


def prune(run_dir: Path, keep: int, newest: Path | None = None) -> None:
    """Keep the newest ``keep`` complete checkpoints up to ``newest`` (the one just written);
    drop older and unfinished ones."""
    root = run_dir / CHECKPOINTS
    # after a fallback, the damaged checkpoints beyond the one resumed from are still there (the
    # run overwrites them as it gets there): counted among the newest, they would push out the
    # good ones
    complete = sorted(
        d
        for d in root.glob("step-*")
        if (d / MANIFEST).is_file() and (newest is None or d <= newest)
    )
    last = complete[-1] if complete else None
    for directory in complete[:-keep]:
        # manifest first: a deletion cut short leaves an unfinished checkpoint, never a bad one
        (directory / MANIFEST).unlink(missing_ok=True)
        shutil.rmtree(directory, ignore_errors=True)
    for directory in root.glob("step-*"):
        if last is not None and directory < last and not (directory / MANIFEST).is_file():
            shutil.rmtree(directory, ignore_errors=True)


# ---------------------------------------------------------------------------------- RNG state
def rng_state() -> dict[str, Any]:
    """Python, numpy, torch (and CUDA) generators, as tensors and plain values only."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    version, internal, python_gauss = random.getstate()
    state: dict[str, Any] = {
        "python": [version, list(internal), python_gauss],
        "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    version, internal, python_gauss = state["python"]
    random.setstate((version, tuple(internal), python_gauss))
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
