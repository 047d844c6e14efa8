"""Damaged data files through the real command line, table-driven (the table is
``tests/fake_data.py``'s): a damage of every kind of file ends in one line that names the file and
what is wrong, and exit code 2. The unit tests feed every row of the table to ``load_dataset``; the
command line maps the one error class they raise the same way for all, so it runs a row per kind
of damage here (a CLI run costs seconds: the whole table would add minutes to the suite)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import run_cli
from tests.fake_data import DAMAGES, IS_ROOT, Damage

pytestmark = pytest.mark.slow


def test_the_table_covers_every_reader_and_file_kind() -> None:
    files = {d.file for d in DAMAGES}
    assert {d.data for d in DAMAGES} == {"mnist", "cifar10"}
    for stem in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte"):
        assert {stem, f"{stem}.gz"} <= files
    assert {"t10k-labels-idx1-ubyte", "t10k-labels-idx1-ubyte.gz"} <= files
    assert {"data_batch_1", "test_batch"} <= files
    assert len({(d.data, d.name) for d in DAMAGES}) == len(DAMAGES)


# the three, and one of each other kind: .gz framing, counts, structure, safety, folders
THROUGH_THE_CLI = {
    ("mnist", "empty images"),
    ("mnist", "not gzip in .gz"),
    ("cifar10", "garbage batch"),
    ("mnist", "truncated gzip"),
    ("mnist", "counts disagree"),
    ("cifar10", "no labels"),
    ("cifar10", "foreign pickle"),
    ("cifar10", "folder as batch"),
}
CLI_DAMAGES = [d for d in DAMAGES if (d.data, d.name) in THROUGH_THE_CLI]


def test_the_cli_rows_are_in_the_table() -> None:
    assert len(CLI_DAMAGES) == len(THROUGH_THE_CLI)


@pytest.mark.parametrize("damage", CLI_DAMAGES, ids=[f"{d.data}: {d.name}" for d in CLI_DAMAGES])
def test_a_damaged_data_file_is_one_line(tmp_path: Path, damage: Damage) -> None:
    if damage.is_permissions and IS_ROOT:
        pytest.skip("root reads a chmod 000 file")
    path = damage.build(tmp_path / "data")
    args = [f"data={damage.data}", "model=lenet", f"data.root={tmp_path / 'data'}"]
    done = run_cli([*args, "progress=false", f"hydra.run.dir={tmp_path / 'run'}"], tmp_path)
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert done.returncode == 2, (done.stdout[-2000:], done.stderr[-2000:])
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith(f"elastic-entropy: error: {path} "), lines[0]
    assert damage.message in lines[0], lines[0]
    assert "Traceback" not in done.stderr
