"""The checkpoint files, table-driven: a manifest vouches for exactly its world size's rank
files or the checkpoint is skipped with the reason, a rank file torch.load refuses is skipped the
same way (the newest valid one is chosen), and a full disk is one line with no file left behind."""

from __future__ import annotations

import errno
import fractions
import hashlib
import io
import json
import pickle
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from elastic_entropy import checkpoint
from elastic_entropy.training.preemption import EXIT_USAGE, exit_for
from tests.tmpfs import small_filesystem

Damage = Callable[[Path], None]  # a checkpoint's directory -> damaged in place


def _state(step: int, **extra: object) -> dict[str, object]:
    return {"format": checkpoint.FORMAT, "step": step, "x": torch.arange(4.0), **extra}


def _write(run_dir: Path, step: int) -> Path:
    directory = checkpoint.step_dir(run_dir, step)
    digest = checkpoint.save_rank(_state(step), directory, 0)
    layout = {"step": step, "world_size": 1, "replicas_per_process": 2}
    checkpoint.write_manifest(directory, {**layout, "sha256": [digest]})
    return directory


def _manifest(directory: Path) -> dict[str, object]:
    return json.loads((directory / checkpoint.MANIFEST).read_text())


def _set_manifest(**changes: object) -> Damage:
    def damage(directory: Path) -> None:
        manifest = _manifest(directory) | changes
        (directory / checkpoint.MANIFEST).write_text(json.dumps(manifest))

    return damage


def _manifest_text(text: str) -> Damage:
    return lambda directory: (directory / checkpoint.MANIFEST).write_text(text)


def _rank_file(data: bytes) -> Damage:
    """rank-0.pt replaced before its checksum was taken: the manifest agrees with it."""

    def damage(directory: Path) -> None:
        (directory / "rank-0.pt").write_bytes(data)
        _set_manifest(sha256=[hashlib.sha256(data).hexdigest()])(directory)

    return damage


def _saved(obj: object) -> bytes:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


def _extra_rank(directory: Path) -> None:
    (directory / "rank-1.pt").write_bytes((directory / "rank-0.pt").read_bytes())


def _flip(directory: Path) -> None:
    path = directory / "rank-0.pt"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


CASES: list[tuple[str, Damage, str]] = [
    ("manifest is a list", _manifest_text("[]"), "MANIFEST.json holds a list, not an object"),
    (
        "manifest lacks the layout",
        _manifest_text('{"format": 1, "sha256": []}'),
        "MANIFEST.json lacks step, world_size, replicas_per_process",
    ),
    ("no checksums", _set_manifest(sha256=[]), "MANIFEST.json has no list of 1 checksums"),
    ("checksums not a list", _set_manifest(sha256="ab"), "has no list of 1 checksums"),
    ("checksum not hex", _set_manifest(sha256=["z" * 64]), "not 64 hex digits"),
    ("checksum a number", _set_manifest(sha256=[7]), "not 64 hex digits"),
    ("step a string", _set_manifest(step="20"), "MANIFEST.json has step='20', not a count"),
    ("world size a bool", _set_manifest(world_size=True), "has world_size=True, not a count"),
    ("no replicas", _set_manifest(replicas_per_process=0), "replicas_per_process=0, not a count"),
    ("another step", _set_manifest(step=10), "MANIFEST.json is for step 10"),
    ("unknown manifest format", _set_manifest(format=99), "MANIFEST.json has format 99"),
    ("manifest not JSON", _manifest_text("{"), "unreadable MANIFEST.json"),
    ("manifest not text", lambda d: (d / "MANIFEST.json").write_bytes(b"\xff"), "unreadable"),
    ("rank file not listed", _extra_rank, "rank-1.pt is not in its MANIFEST.json"),
    ("rank file missing", lambda d: (d / "rank-0.pt").unlink(), "rank-0.pt is missing"),
    ("rank file damaged", _flip, "rank-0.pt fails its checksum (truncated or damaged)"),
    (
        "rank file garbage",
        _rank_file(b"not a checkpoint"),
        "cannot read rank-0.pt (UnpicklingError): damaged or not a checkpoint",
    ),
    (
        "rank file unsafe",
        lambda d: _rank_file(_saved(_state(20, f=fractions.Fraction(1, 2))))(d),
        "cannot read rank-0.pt (UnpicklingError): it holds a fractions.Fraction",
    ),
    (
        "rank file a list",
        lambda d: _rank_file(_saved([1, 2]))(d),
        "cannot read rank-0.pt: it holds a list",
    ),
    (
        "rank file of another format",
        lambda d: _rank_file(_saved(_state(20) | {"format": 99}))(d),
        "rank-0.pt has checkpoint format 99, not one of 1, 2",
    ),
]


@pytest.mark.parametrize(("name", "damage", "reason"), CASES, ids=[c[0] for c in CASES])
def test_a_damaged_newest_checkpoint_is_skipped_for_the_newest_valid_one(
    tmp_path: Path, name: str, damage: Damage, reason: str
) -> None:
    _write(tmp_path, 10)
    damage(_write(tmp_path, 20))
    found = checkpoint.find_latest(tmp_path)
    assert found is not None and found.step == 10
    assert len(found.skipped) == 1 and found.skipped[0].startswith("step-000000020: ")
    assert reason in found.skipped[0], found.skipped[0]


@pytest.mark.parametrize(("name", "damage", "reason"), CASES, ids=[c[0] for c in CASES])
def test_with_no_valid_checkpoint_the_reason_is_the_error(
    tmp_path: Path, name: str, damage: Damage, reason: str
) -> None:
    damage(_write(tmp_path, 20))
    with pytest.raises(checkpoint.CheckpointError, match="no usable checkpoint in") as raised:
        checkpoint.find_latest(tmp_path)
    assert reason in str(raised.value)


def test_rank_0_is_read_once_and_not_sent_to_the_others(tmp_path: Path) -> None:
    _write(tmp_path, 10)
    found = checkpoint.find_latest(tmp_path)
    assert found is not None and found.state is not None
    assert checkpoint.load_rank(found, 0) is found.state  # the one torch.load, reused
    shared = found.without_state()
    assert shared.state is None and torch.equal(
        checkpoint.load_rank(shared, 0)["x"], found.state["x"]
    )
    assert len(pickle.dumps(shared)) < 1000  # what broadcast_object sends: no tensors


def test_a_valid_manifest_is_accepted_as_written(tmp_path: Path) -> None:
    directory = _write(tmp_path, 10)
    assert checkpoint.manifest_problem(directory, _manifest(directory)) is None


def test_a_step_written_again_drops_the_rank_files_it_does_not_list(tmp_path: Path) -> None:
    _extra_rank(_write(tmp_path, 20))
    with pytest.raises(checkpoint.CheckpointError, match=r"rank-1\.pt is not in its"):
        checkpoint.find_latest(tmp_path)
    _write(tmp_path, 20)  # the run gets there again after falling back
    found = checkpoint.find_latest(tmp_path)
    assert found is not None and found.step == 20 and not found.skipped
    assert not (found.path / "rank-1.pt").exists()


def test_prune_keeps_good_checkpoints_when_newer_ones_are_damaged(tmp_path: Path) -> None:
    """After a fallback from a damaged step-30 to step-10, saving step 20 keeps step 10 and 20."""
    for step in (10, 30):
        _write(tmp_path, step)
    _flip(checkpoint.step_dir(tmp_path, 30))
    newest = _write(tmp_path, 20)
    checkpoint.prune(tmp_path, 2, newest)
    names = sorted(d.name for d in (tmp_path / checkpoint.CHECKPOINTS).iterdir())
    assert names == ["step-000000010", "step-000000020", "step-000000030"]
    found = checkpoint.find_latest(tmp_path)
    assert found is not None and found.step == 20


def test_a_full_disk_is_one_line_and_leaves_no_file(tmp_path: Path) -> None:
    with small_filesystem(tmp_path / "small", 64 * 1024) as small:
        good = _write(small, 10)
        before = {p.name: p.read_bytes() for p in good.iterdir()}
        big = _state(20, y=torch.zeros(64 * 1024))  # 256 KiB: more than the whole disk
        with pytest.raises(checkpoint.DiskFullError) as raised:
            checkpoint.save_rank(big, checkpoint.step_dir(small, 20), 0)
        error = raised.value
        assert error.errno == errno.ENOSPC
        line = str(error)
        assert line.startswith(f"no space left in {small / 'checkpoints' / 'step-000000020'} ")
        needed = len(_saved(big)) / 1024  # the exact size of what did not fit
        assert f"to write rank-0.pt ({needed:.1f} KiB needed, " in line and "\n" not in line
        assert exit_for(error) == (EXIT_USAGE, f"error: {line}")
        assert not [p for p in small.rglob("*") if ".tmp-" in p.name]
        assert {p.name: p.read_bytes() for p in good.iterdir()} == before
        found = checkpoint.find_latest(small)
        assert found is not None and found.step == 10
