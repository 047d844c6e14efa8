"""Your own model and data without editing the package: YAML files with ``_target_`` in a config
folder of yours (``--config-dir``), a module that is not in the package, a run from any folder;
every mistake in them is one line and exit code 2. And the configs ship inside the wheel."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from tests.conftest import REPO, cli_env

MODULE = '''
import torch
from torch import nn


def make_net(input_shape, num_classes, width=8):
    inputs = int(torch.tensor(input_shape).prod())
    layers = [nn.Flatten(), nn.Linear(inputs, width), nn.ReLU(), nn.Linear(width, num_classes)]
    return nn.Sequential(*layers)


def seven_outputs():
    return nn.Linear(5, 7)


class Blobs(torch.utils.data.Dataset):
    """Three Gaussian blobs in 5-D: learnable in a few steps."""

    def __init__(self, n, seed, broken=False):
        g = torch.Generator().manual_seed(seed)
        self.y = torch.randint(0, 3, (n,), generator=g)
        self.x = torch.randn(n, 5, generator=g) + 2.0 * self.y[:, None].float()
        self.broken = broken

    def __len__(self):
        return len(self.y)

    def __getitem__(self, i):
        return ("not a tensor", 0) if self.broken else (self.x[i], int(self.y[i]))
'''

FILES = {
    "model/tiny.yaml": "_target_: my_components.make_net\nwidth: 16\n",
    "model/seven.yaml": "_target_: my_components.seven_outputs\n",
    "data/blobs.yaml": textwrap.dedent(
        """\
        defaults:
          - schema_custom
        name: custom
        batch_size: 16
        train: {_target_: my_components.Blobs, n: 300, seed: 0}
        test: {_target_: my_components.Blobs, n: 100, seed: 1}
        """
    ),
}


@pytest.fixture
def user_folder(tmp_path: Path) -> Path:
    """A project of the user's: its module and its config folder, outside the package."""
    (tmp_path / "my_components.py").write_text(MODULE)
    for name, text in FILES.items():
        (tmp_path / "conf" / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "conf" / name).write_text(text)
    return tmp_path


def _run(folder: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**cli_env(), "PYTHONPATH": str(folder)}
    return subprocess.run(
        ["elastic-entropy", "--config-dir", str(folder / "conf"), *args, "progress=false"],
        cwd=folder,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )


# the README's command, run as it is written, from the user's folder
README_COMMAND = "PYTHONPATH=. elastic-entropy --config-dir conf model=tiny data=blobs"
LOADER_COMMAND = (
    f"{README_COMMAND} data.pipeline=loader data.num_workers=2 data.num_classes=3"
)
TESTED = {README_COMMAND, LOADER_COMMAND}


def _as_written(command: str, folder: Path, *extra: str) -> subprocess.CompletedProcess:
    """A README command run as it is written, from the user's folder, with ``extra`` keys."""
    done = subprocess.run(
        ["bash", "-c", " ".join([command, *extra])],
        cwd=folder,
        env=cli_env(),
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def test_your_model_and_data_from_your_config_folder(user_folder: Path) -> None:
    done = _as_written(README_COMMAND, user_folder, "progress=false")
    run_dir = user_folder / done.stdout.split("run directory: ")[-1].strip()
    result = json.loads((run_dir / "results.json").read_text())
    assert result["num_replicas"] == 4 and result["reference"]["test_acc"] > 0.8
    saved = (run_dir / "config.yaml").read_text()
    assert "my_components.make_net" in saved and "my_components.Blobs" in saved


def test_your_data_set_read_through_loaders_trains_as_when_held(user_folder: Path) -> None:
    """``data.pipeline=loader``: a DataLoader per replica with its workers reads your data set;
    the minibatches, and so the reference, are those of the data held as tensors."""
    job = ["max_steps=40", "deterministic=true", "progress=false"]
    for name, command in (("held", README_COMMAND), ("loaded", LOADER_COMMAND)):
        _as_written(command, user_folder, *job, f"hydra.run.dir={name}")
    held, loaded = (
        torch.load(user_folder / name / "reference.pt", weights_only=True)
        for name in ("held", "loaded")
    )
    assert held.keys() == loaded.keys() and all(torch.equal(held[k], loaded[k]) for k in held)
    result = json.loads((user_folder / "loaded" / "results.json").read_text())
    assert result["reference"]["test_acc"] > 0.6


BAD = [
    ("target that does not import", ["model._target_=nope.make"], "cannot import it (No module"),
    (
        "factory that rejects its arguments",
        ["model._target_=my_components.Blobs"],
        "model._target_=my_components.Blobs failed with width (TypeError",
    ),
    ("output that is not the class count", ["model=seven"], "outputs (2, 7) for a batch of 2"),
    (
        "data set of the wrong types",
        ["+data.train.broken=true"],
        "data.train: sample 0 has a input of type str",
    ),
    ("custom data without a train set", ["data=custom"], "data=custom reads your data set"),
    (
        "loaders without the class count",
        ["data.pipeline=loader"],
        "data.num_classes is needed when your data set is read through loaders",
    ),
    (
        "unknown option of yours",
        ["model=tinyy"],
        "unknown model 'tinyy'; choose one of allcnn, char_lstm, cnn1d,",
    ),
]


@pytest.mark.parametrize(("name", "args", "expected"), BAD, ids=[b[0] for b in BAD])
def test_a_mistake_in_your_components_is_one_line(
    user_folder: Path, name: str, args: list[str], expected: str
) -> None:
    done = _run(user_folder, "model=tiny", "data=blobs", "max_steps=5", *args)
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert done.returncode == 2 and len(lines) == 1, done.stderr[-3000:]
    assert expected in lines[0], lines[0]


def test_the_configs_ship_in_the_wheel_and_are_found_from_any_folder(tmp_path: Path) -> None:
    """``pip install .`` (not editable) into a fresh environment: the YAML groups come with it."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", str(venv)], check=True)
    python = venv / "bin" / "python"
    installed = subprocess.run(
        [python, "-m", "pip", "install", "-q", "--no-deps", str(REPO)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert installed.returncode == 0, installed.stderr[-3000:]
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {k: v for k, v in cli_env().items() if k != "PYTHONPATH"}
    code = "import elastic_entropy, sys; print(elastic_entropy.__file__)"
    where = subprocess.run([python, "-c", code], cwd=elsewhere, env=env, capture_output=True)
    assert str(venv) in where.stdout.decode(), where  # the wheel's copy, not the checkout
    shown = subprocess.run(
        [venv / "bin" / "elastic-entropy", "--cfg", "job", "data=digits", "model=mlp"],
        cwd=elsewhere,
        env={**env, "PATH": f"{venv / 'bin'}{os.pathsep}{env['PATH']}"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert shown.returncode == 0, shown.stderr[-3000:]
    assert "name: digits" in shown.stdout and "num_inner_steps: 10" in shown.stdout
