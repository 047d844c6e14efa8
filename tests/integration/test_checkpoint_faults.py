"""Checkpoint faults, table-driven, through the command line: a damaged newest checkpoint is
skipped in one warning line and the run resumes from the newest valid one; with none valid the
run stops in one line; a disk that fills up stops the run in one line, exit code 2, with no
temporary file left and the last good checkpoint intact (a real tmpfs, full for real)."""

from __future__ import annotations

import fractions
import hashlib
import io
import json
import re
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from elastic_entropy import checkpoint
from tests.conftest import run_cli, run_torchrun
from tests.integration.test_bad_input import BASE, SMALL, interrupted  # noqa: F401 (fixture)
from tests.tmpfs import small_filesystem

Damage = Callable[[Path], None]  # a checkpoint's directory -> damaged in place
NEWEST, OLDER = "step-000000040", "step-000000030"  # of the interrupted run
ALL = "step-*"


def _rank_0(directory: Path) -> Path:
    return directory / "rank-0.pt"


def _flip(directory: Path) -> None:
    data = bytearray(_rank_0(directory).read_bytes())
    data[len(data) // 2 : len(data) // 2 + 64] = bytes(64)
    _rank_0(directory).write_bytes(bytes(data))


def _manifest(text: str) -> Damage:
    return lambda directory: (directory / checkpoint.MANIFEST).write_text(text)


def _edit_manifest(**changes: object) -> Damage:
    def damage(directory: Path) -> None:
        manifest = json.loads((directory / checkpoint.MANIFEST).read_text()) | changes
        (directory / checkpoint.MANIFEST).write_text(json.dumps(manifest))

    return damage


def _replace_rank_0(make: Callable[[dict], object]) -> Damage:
    """rank-0.pt rewritten (from its own state) before its checksum was taken: the manifest
    agrees with it, torch.load or the format check does not."""

    def damage(directory: Path) -> None:
        state = torch.load(_rank_0(directory), weights_only=True)
        made = make(state)
        if isinstance(made, bytes):
            data = made
        else:
            buffer = io.BytesIO()
            torch.save(made, buffer)
            data = buffer.getvalue()
        _rank_0(directory).write_bytes(data)
        _edit_manifest(sha256=[hashlib.sha256(data).hexdigest()])(directory)

    return damage


def _extra_rank_file(directory: Path) -> None:
    shutil.copy(_rank_0(directory), directory / "rank-1.pt")


_unsafe = _replace_rank_0(lambda state: state | {"extra": fractions.Fraction(1, 3)})
CHECKSUM = "rank-0.pt fails its checksum (truncated or damaged)"
UNSAFE = "cannot read rank-0.pt (UnpicklingError): it holds a fractions.Fraction"
NOT_LISTED = "rank-1.pt is not in its MANIFEST.json (world_size=1)"
# (name, damage, damaged: the newest checkpoint or all, the reason given)
FAULTS: list[tuple[str, Damage, str, str]] = [
    ("damaged", _flip, NEWEST, CHECKSUM),
    (
        "unreadable by torch.load",
        _replace_rank_0(lambda state: b"not a checkpoint"),
        NEWEST,
        "cannot read rank-0.pt (UnpicklingError): damaged or not a checkpoint",
    ),
    ("refused by weights_only", _unsafe, NEWEST, UNSAFE),
    (
        "another format",
        _replace_rank_0(lambda state: state | {"format": 99}),
        NEWEST,
        "rank-0.pt has checkpoint format 99, not one of 1, 2",
    ),
    ("manifest a list", _manifest("[]"), NEWEST, "MANIFEST.json holds a list, not an object"),
    (
        "manifest without layout",
        _manifest('{"format": 1, "sha256": []}'),
        NEWEST,
        "MANIFEST.json lacks step, world_size, replicas_per_process",
    ),
    (
        "manifest without checksums",
        _edit_manifest(sha256=[]),
        NEWEST,
        "MANIFEST.json has no list of 1 checksums",
    ),
    ("rank file not in the manifest", _extra_rank_file, NEWEST, NOT_LISTED),
    ("all refused by weights_only", _unsafe, ALL, UNSAFE),
    ("all with a rank file not listed", _extra_rank_file, ALL, NOT_LISTED),
]


def _copy(source: Path, tmp: Path) -> Path:
    run = tmp / "run"
    shutil.copytree(source, run)
    return run


def _args(run: Path, *extra: str) -> list[str]:
    return [*BASE, SMALL, f"hydra.run.dir={run}", *extra]


@pytest.mark.parametrize(
    ("name", "damage", "damaged", "reason"), FAULTS, ids=[f[0] for f in FAULTS]
)
def test_a_damaged_checkpoint_is_skipped_for_the_newest_valid_one_or_stops_the_run(
    tmp_path: Path,
    interrupted: Path,  # noqa: F811
    name: str,
    damage: Damage,
    damaged: str,
    reason: str,
) -> None:
    run = _copy(interrupted, tmp_path)
    for directory in (run / "checkpoints").glob(damaged):
        damage(directory)
    before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    done = run_cli(_args(run), tmp_path)
    assert "Traceback" not in done.stderr
    if damaged == ALL:
        lines = [line for line in done.stderr.splitlines() if line.strip()]
        assert done.returncode == 2 and len(lines) == 1, done.stderr
        assert lines[0].startswith("elastic-entropy: error: no usable checkpoint in ")
        assert f"{NEWEST}: {reason}" in lines[0] and "step-000000020: " in lines[0]
        assert {p: p.read_bytes() for p in before} == before  # nothing overwritten
        return
    assert done.returncode == 0 and not done.stderr.strip(), done.stderr[-2000:]
    warnings = [line for line in done.stdout.splitlines() if "skipped checkpoint" in line]
    assert len(warnings) == 1, done.stdout
    assert f"skipped checkpoint {NEWEST}: {reason}" in warnings[0], warnings[0]
    assert warnings[0].endswith(f"; resuming from {OLDER}"), warnings[0]
    assert f"resumed from step 30 ({run / 'checkpoints' / OLDER})" in done.stdout
    assert (run / "results.json").is_file()
    found = checkpoint.find_latest(run)  # the run wrote step 40 again, over the damaged one
    assert found is not None and found.step == 40 and not found.skipped


def test_a_full_disk_stops_in_one_line_and_the_last_checkpoint_resumes(
    tmp_path: Path,
    interrupted: Path,  # noqa: F811
) -> None:
    # room for one checkpoint of this run and its small files, not for two
    size = _rank_0(interrupted / "checkpoints" / NEWEST).stat().st_size
    with small_filesystem(tmp_path / "small", size * 3 // 2) as small:
        run = small / "run"
        every = ["checkpoint.every_outer_steps=2", "checkpoint.keep_last=1"]
        done = run_cli(_args(run, *every), tmp_path)
        lines = [line for line in done.stderr.splitlines() if line.strip()]
        assert done.returncode == 2 and len(lines) == 1, done.stderr
        assert "Traceback" not in done.stderr
        second = run / "checkpoints" / "step-000000020"
        assert lines[0].startswith(f"elastic-entropy: error: no space left in {second} ")
        needed = re.search(
            r"to write rank-0\.pt \((\d+\.\d) KiB needed, [\d.]+ KiB free; ", lines[0]
        )
        assert needed and abs(float(needed.group(1)) * 1024 - size) < 0.01 * size, lines[0]
        assert not [p for p in small.rglob("*") if ".tmp-" in p.name]
        found = checkpoint.find_latest(run)
        assert found is not None and found.step == 10  # complete and verified
        moved = tmp_path / "moved"
        shutil.copytree(run, moved)
    # moved to a disk with room, the same command resumes from it and finishes
    done = run_cli(_args(moved, *every), tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "resumed from step 10" in done.stdout
    assert (moved / "results.json").is_file()


def test_a_full_disk_under_one_rank_stops_every_rank_in_one_line(tmp_path: Path) -> None:
    """Two processes, one checkpoint file each, room for one and a half: whichever rank runs out,
    every rank stops with the same line (not the others' "lost a peer" after it exits)."""
    args = [
        SMALL,
        "progress=false",
        "cluster.replicas_per_process=1",
        "checkpoint.every_outer_steps=1",
    ]
    sized = run_torchrun(2, [*args, "max_steps=5", f"hydra.run.dir={tmp_path / 'sized'}"], tmp_path)
    assert sized.returncode == 0, sized.stderr[-2000:]
    (sized_dir,) = (tmp_path / "sized" / "checkpoints").glob("step-*")
    size = _rank_0(sized_dir).stat().st_size
    with small_filesystem(tmp_path / "small", size * 3 // 2) as small:
        run = small / "run"
        done = run_torchrun(2, [*args, "max_steps=20", f"hydra.run.dir={run}"], tmp_path)
        output = done.stdout + done.stderr
        assert done.returncode != 0 and "lost a peer" not in output, output[-3000:]
        errors = [line for line in output.splitlines() if line.startswith("elastic-entropy:")]
        assert errors and all("no space left in" in line for line in errors), errors
        assert "elastic_entropy/" not in output  # no traceback of ours (torchrun prints its own)
        assert not [p for p in small.rglob("*") if ".tmp-" in p.name]
        assert checkpoint.find_latest(run) is None  # no checkpoint claimed to be complete
