"""Atomic, verified, resumable checkpoints: one file per rank and a manifest written last.

Layout: ``RUN_DIR/checkpoints/step-000000120/rank-0.pt ... rank-{W-1}.pt MANIFEST.json``. Every
rank writes its file under a temporary name and renames it; rank 0 writes the manifest (the
SHA-256 of every rank file) once all of them are in place. A directory without a manifest, or
whose files do not match it, was cut off or damaged and is never loaded. Files are read with
``torch.load(weights_only=True)``: tensors and plain containers only, never arbitrary objects.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
from dataclasses import dataclass
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


@dataclass(frozen=True)
class Found:
    path: Path
    manifest: dict[str, Any]
    skipped: list[str]  # damaged or unfinished checkpoints passed over, with the reason

    @property
    def step(self) -> int:
        return int(self.manifest["step"])


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


def _atomic_write(path: Path, write: Any) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with tmp.open("wb") as f:
        write(f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def save_rank(state: dict[str, Any], directory: Path, rank: int) -> str:
    """Write this rank's state; returns its SHA-256 for the manifest."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"rank-{rank}.pt"
    _atomic_write(path, lambda f: torch.save(state, f))
    return sha256(path)


def write_manifest(directory: Path, manifest: dict[str, Any]) -> None:
    """Rank 0, after every rank's file is in place: the checkpoint now exists."""
    data = json.dumps({"format": FORMAT, **manifest}, indent=2).encode()
    _atomic_write(directory / MANIFEST, lambda f: f.write(data))


def _problem(directory: Path) -> tuple[dict[str, Any] | None, str | None]:
    manifest_path = directory / MANIFEST
    if not manifest_path.is_file():
        return None, f"{directory.name}: unfinished (no {MANIFEST})"
    try:
        manifest = json.loads(manifest_path.read_text())
        hashes = manifest["sha256"]
    except (ValueError, KeyError) as error:
        return None, f"{directory.name}: unreadable manifest ({error})"
    for rank, expected in enumerate(hashes):
        path = directory / f"rank-{rank}.pt"
        if not path.is_file():
            return None, f"{directory.name}: {path.name} is missing"
        if sha256(path) != expected:
            return None, f"{directory.name}: {path.name} fails its checksum (truncated or damaged)"
    return manifest, None


def find_latest(run_dir: Path) -> Found | None:
    """The newest complete, verified checkpoint; None when the run has none at all."""
    root = run_dir / CHECKPOINTS
    candidates = sorted(root.glob("step-*"), reverse=True) if root.is_dir() else []
    skipped = []
    for directory in candidates:
        manifest, problem = _problem(directory)
        if manifest is not None:
            return Found(directory, manifest, skipped)
        skipped.append(problem)
    if any((d / MANIFEST).exists() for d in candidates):
        raise CheckpointError(
            f"no usable checkpoint in {root}: " + "; ".join(skipped) + ". Move the damaged "
            "checkpoints away to start over, or choose another hydra.run.dir"
        )
    return None


def load_rank(found: Found, rank: int) -> dict[str, Any]:
    try:
        state = torch.load(found.path / f"rank-{rank}.pt", map_location="cpu", weights_only=True)
    except Exception as error:
        # torch's message would suggest weights_only=False, which we never do
        raise CheckpointError(
            f"cannot read {found.path / f'rank-{rank}.pt'} ({type(error).__name__}): the file is "
            "damaged or not a checkpoint; move it away or choose another hydra.run.dir"
        ) from error
    if state.get("format") not in READABLE_FORMATS:
        raise CheckpointError(
            f"{found.path} has checkpoint format {state.get('format')}, not one of "
            f"{', '.join(map(str, READABLE_FORMATS))}; it was written by another version of "
            "elastic-entropy: choose another hydra.run.dir"
        )
    return state


def prune(run_dir: Path, keep: int) -> None:
    """Keep the newest ``keep`` complete checkpoints; drop older and unfinished ones."""
    root = run_dir / CHECKPOINTS
    complete = sorted(d for d in root.glob("step-*") if (d / MANIFEST).is_file())
    newest = complete[-1] if complete else None
    for directory in complete[:-keep]:
        # manifest first: a deletion cut short leaves an unfinished checkpoint, never a bad one
        (directory / MANIFEST).unlink(missing_ok=True)
        shutil.rmtree(directory, ignore_errors=True)
    for directory in root.glob("step-*"):
        if newest is not None and directory < newest and not (directory / MANIFEST).is_file():
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
