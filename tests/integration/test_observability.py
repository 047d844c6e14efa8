"""Seeing a run, as a user does: every field in metrics.jsonl, TensorBoard's and wandb's files read
back, plots, a preempted run that continues its metrics and its wandb run, torchrun's ranks
gathered into one wandb run, the report command, and the README section's commands."""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import struct
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
import torch

from tests.conftest import REPO, cli_env, newest_checkpoint, run_cli, run_torchrun

# a short Parle job: 2 replicas, L = 5, outer steps at 5, 10, ..., evaluations every 14 steps
JOB = [
    "cluster.replicas_per_process=2",
    "algorithm.num_inner_steps=5",
    "model.channels=8",
    "data.validation_fraction=0.1",
    "eval_every=0.25",  # 3600 training samples / 64 = 56 minibatches per epoch: every 14
    "checkpoint.every_outer_steps=2",
    "progress=false",
]
NUM_STEPS = 200
EVAL_STEPS = [*range(14, NUM_STEPS, 14), NUM_STEPS]

EVERY_RECORD = [
    "step", "epoch", "outer_step", "gamma", "rho", "lr", "inner_lr", "bytes_per_replica",
    "dp_bytes_per_replica", "collectives", "elapsed_s", "samples_per_s",
]  # fmt: skip
PER_REPLICA = ["train_loss", "train_acc", "distance", "elastic_force", "prox_force", "entropy_grad"]
EVAL = [f"reference/{s}_{m}" for s in ("test", "train", "val") for m in ("loss", "acc")]
EVAL_PER_REPLICA = ["reference_distance", "val_loss", "val_acc"]


def _per_replica(names: list[str], replicas: int) -> list[str]:
    return [k for n in names for k in (n, *(f"{n}/replica_{a}" for a in range(replicas)))]


def _records(run_dir: Path) -> list[dict[str, Any]]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines]


def _wandb_history(path: Path) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """(the run record, the history rows) of a ``.wandb`` file: LevelDB-style log blocks of
    protobuf ``Record``s, the format ``wandb sync`` uploads."""
    from wandb.proto import wandb_internal_pb2 as pb

    data = path.read_bytes()
    assert data[:4] == b":W&B", data[:7]
    pos, block, pending, run, rows = 7, 32768, b"", {}, []
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a block's tail too short for a header is padding
            pos += block - pos % block
            continue
        _, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        chunk, pos = data[pos + 7 : pos + 7 + length], pos + 7 + length
        pending = chunk if kind in (1, 2) else pending + chunk
        if kind not in (1, 4):  # FULL or LAST completes a record
            continue
        record = pb.Record()
        record.ParseFromString(pending)
        kind_name = record.WhichOneof("record_type")
        if kind_name == "run":
            run = {"id": record.run.run_id, "group": record.run.run_group}
        elif kind_name == "exit":
            run["exit_code"] = record.exit.exit_code
        elif kind_name == "history":
            rows.append(
                {
                    i.key or "/".join(i.nested_key): json.loads(i.value_json)
                    for i in record.history.item
                }
            )
    return run, rows


def _offline_runs(run_dir: Path) -> list[Path]:
    return sorted((run_dir / "wandb").glob("offline-run-*/run-*.wandb"))


def _is_png(path: Path) -> bool:
    from matplotlib.image import imread

    return path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and imread(str(path)).shape[0] > 100


# ---------------------------------------------------------------------------------- one run
@pytest.fixture(scope="module")
def resumed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``logger=all``, preempted by SIGTERM after its first checkpoint, then rerun to the end."""
    cwd = tmp_path_factory.mktemp("observability")
    run_dir = cwd / "run"
    args = [
        "elastic-entropy",
        *JOB,
        "logger=all",
        f"max_steps={NUM_STEPS}",
        f"hydra.run.dir={run_dir}",
    ]
    env = cli_env()
    first = subprocess.Popen(
        args, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    deadline = time.time() + 120
    while newest_checkpoint(run_dir) == 0 and first.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    first.send_signal(signal.SIGTERM)
    _, err = first.communicate(timeout=120)
    assert first.returncode == 75, err[-3000:]
    done = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "resumed from step" in done.stdout
    return run_dir


def test_metrics_hold_every_field_for_every_outer_step(resumed: Path) -> None:
    records = _records(resumed)
    events = [r for r in records if "event" in r]
    metrics = [r for r in records if "event" not in r]
    assert [e["event"] for e in events] == ["resume"]
    steps = [r["step"] for r in metrics]
    assert steps == sorted(set(steps)) and steps[-1] == NUM_STEPS  # one run, no step twice
    outer = {r["step"]: r for r in metrics if "train_loss" in r}
    assert sorted(outer) == list(range(5, NUM_STEPS + 1, 5))  # every outer step, once
    expected = EVERY_RECORD + _per_replica(PER_REPLICA, 2) + ["comm_wait_s"]
    for step, record in outer.items():
        missing = [k for k in expected if k not in record]
        assert not missing, (step, missing)
        assert record["outer_step"] == step // 5
        assert record["entropy_grad"] > 0 and record["prox_force"] > 0 and record["distance"] > 0
        assert record["train_loss"] == pytest.approx(
            (record["train_loss/replica_0"] + record["train_loss/replica_1"]) / 2
        )
    evals = {r["step"]: r for r in metrics if "reference/test_acc" in r}
    assert sorted(evals) == EVAL_STEPS
    for step, record in evals.items():
        missing = [
            k for k in EVERY_RECORD + EVAL + _per_replica(EVAL_PER_REPLICA, 2) if k not in record
        ]
        assert not missing, (step, missing)
    last = outer[NUM_STEPS]
    assert last["rho"] > outer[5]["rho"] and last["gamma"] > outer[5]["gamma"]  # scoping, logged
    assert last["bytes_per_replica"] < last["dp_bytes_per_replica"]
    assert last["reference/test_acc"] > 0.2


def test_tensorboard_event_files_hold_the_same_numbers(resumed: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(resumed / "tensorboard"))
    events.Reload()
    jsonl = {r["step"]: r for r in _records(resumed) if "train_loss" in r}
    scalars = events.Scalars("train_loss")  # the first attempt's steps past its checkpoint purged
    assert [s.step for s in scalars] == sorted(jsonl)
    assert [s.value for s in scalars] == pytest.approx(
        [jsonl[s.step]["train_loss"] for s in scalars], rel=1e-6
    )
    assert [s.step for s in events.Scalars("reference/test_acc")] == EVAL_STEPS
    assert "elastic_force/replica_1" in events.Tags()["scalars"]


def test_wandb_offline_runs_hold_the_history_and_share_one_run_id(resumed: Path) -> None:
    files = _offline_runs(resumed)
    assert len(files) == 2  # the preempted attempt and its continuation
    runs_and_rows = [_wandb_history(f) for f in files]
    (run_id,) = {run["id"] for run, _ in runs_and_rows}
    assert all(f.name == f"run-{run_id}.wandb" for f in files)
    assert [run["exit_code"] for run, _ in runs_and_rows] == [75, 0]  # preempted, then done
    saved = torch.load(
        sorted((resumed / "checkpoints").glob("step-*/rank-0.pt"))[-1], weights_only=False
    )
    assert files[0].name == f"run-{saved['logger']['wandb_run_id']}.wandb"  # kept in the checkpoint
    records = _records(resumed)
    resumed_at = next(r["step"] for r in records if r.get("event") == "resume")
    before, after = (history for _, history in runs_and_rows)
    # what the preempted attempt logged up to its checkpoint, then the rerun: the JSONL's steps
    kept = [row for row in before if row["step"] <= resumed_at] + after
    jsonl = {r["step"]: r for r in records if "event" not in r}
    assert [row["step"] for row in kept] == list(jsonl)
    for row in kept:
        for key in ("train_loss", "distance/replica_1", "reference/test_acc"):
            if key in jsonl[row["step"]]:
                assert row[key] == pytest.approx(jsonl[row["step"]][key]), (row["step"], key)


def test_plots_are_drawn_at_the_end(resumed: Path) -> None:
    for name in ("curves.png", "couplings.png", "communication.png"):
        assert _is_png(resumed / "plots" / name), name


# ---------------------------------------------------------------------------------- torchrun
def test_torchrun_ranks_gather_into_one_wandb_run(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    done = run_torchrun(
        2,
        [*JOB, "logger=wandb", "max_steps=20", "eval_every=100", f"hydra.run.dir={run_dir}"],
        tmp_path,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    (offline,) = _offline_runs(run_dir)  # rank 0's, and only rank 0's
    _, rows = _wandb_history(offline)
    assert [row["step"] for row in rows] == [5, 10, 15, 20]
    for row in rows:  # four replicas: two per process, gathered
        assert {f"distance/replica_{a}" for a in range(4)} <= set(row)
    records = [r for r in _records(run_dir) if "train_loss" in r]
    assert records[-1]["comm_wait_s"] > 0  # gloo's all-reduces, timed


# ---------------------------------------------------------------------------------- the CLI
def test_online_without_credentials_fails_in_one_line(tmp_path: Path) -> None:
    env = {**cli_env(), "HOME": str(tmp_path), "NETRC": str(tmp_path / "none")}
    env.pop("WANDB_API_KEY", None)
    done = subprocess.run(
        ["elastic-entropy", "logger=wandb", "logger.wandb.mode=online"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1, done.stderr
    assert "logger.wandb.mode=online needs wandb credentials" in done.stderr
    assert not (tmp_path / "outputs").exists()


def test_report_command_refuses_what_is_not_a_run(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    for args, message in (
        (["report"], "the following arguments are required: RUN_DIR"),
        (["report", "missing"], "no such run directory: missing"),
        (["report", "empty"], "empty holds no metrics.jsonl"),
    ):
        done = run_cli(args, tmp_path)
        assert done.returncode == 2, done.stderr
        assert done.stderr.count("\n") == 1 and message in done.stderr, done.stderr


def _section() -> str:
    readme = (REPO / "README.md").read_text()
    return readme[readme.index("## Observability") :]


def test_the_readme_section_commands_run_as_written(tmp_path: Path) -> None:
    """The ```shell lines of the Observability section, training ones with a short budget."""
    budget = ["max_steps=20", "model.channels=8", "eval_every=0.2", "progress=false"]
    commands = [
        line.strip()
        for block in re.findall(r"```shell\n(.*?)```", _section(), flags=re.S)
        for line in block.splitlines()
        if line.strip()
    ]
    assert any(c.startswith("elastic-entropy report ") for c in commands), commands
    outputs = {}
    for command in commands:
        argv = shlex.split(command)
        assert argv[0] == "elastic-entropy", command
        is_report = argv[1] == "report"
        done = run_cli(argv[1:] + ([] if is_report else budget), tmp_path, timeout=240)
        assert done.returncode == 0, (command, done.stderr[-3000:])
        outputs[command] = done.stdout
    runs = tmp_path / "runs"
    parle, sweep = runs / "parle", runs / "rho"
    assert (parle / "tensorboard").is_dir() and _offline_runs(parle)
    jobs = [sweep / "0", sweep / "1"]
    groups = {_wandb_history(_offline_runs(job)[0])[0]["group"] for job in jobs}
    assert groups == {"runs/rho"}  # a sweep's runs, grouped in wandb
    table = (runs / "report.md").read_text()
    rows = [line for line in table.splitlines() if line.startswith("| logger=")]
    assert [row.split(" | ")[0] for row in rows] == [
        "| logger=all",
        "| logger=wandb algorithm.rho=0.5",
        "| logger=wandb algorithm.rho=2",
    ]  # each run named by the overrides that set it apart
    assert _is_png(runs / "report.png")
    assert all(_is_png(job / "plots" / "curves.png") for job in [parle, *jobs])
    assert "3 run(s); report:" in "".join(outputs.values())
    assert os.path.commonpath([parle, *jobs]) == str(runs)
