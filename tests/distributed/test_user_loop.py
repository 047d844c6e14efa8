"""A user's own loop under torchrun (issue 12): a plain exit, one start for all, one layout.

Each test writes a script to a tmp dir and runs it as a user does, ``torchrun --standalone`` (a
free port of its own), with a timeout; each rank writes what it saw to a JSON file.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import cli_env

TIMEOUT_S = 120
# CI runs the example this many times; the report was 4 aborts in 6 (30 in a row by hand)
NUM_LOOP_RUNS = int(os.environ.get("USER_LOOP_RUNS", "10"))

# the README's own-loop example, one replica per process, ending as a plain script ends
README_LOOP = """
import json, sys
import torch
import torch.distributed as dist
from torch import nn

from elastic_entropy.comm import DistributedCommunicator
from elastic_entropy.optim import Parle, replica_param_groups


def main() -> None:
    dist.init_process_group("gloo")
    torch.manual_seed(dist.get_rank())  # a different init per rank: Parle starts them from rank 0's
    models = [nn.Sequential(nn.Linear(20, 64), nn.ReLU(), nn.Linear(64, 2)) for _ in range(1)]
    opt = Parle(
        replica_param_groups(m.parameters() for m in models),
        lr=0.1,
        num_inner_steps=5,
        comm=DistributedCommunicator(1),
    )
    start = [p.detach().clone() for p in models[0].parameters()]
    for step in range(20):
        for m in models:
            x = torch.randn(32, 20)
            nn.functional.cross_entropy(m(x), (x[:, 0] > 0).long()).backward()
        opt.step()
        opt.zero_grad()
    reference = opt.reference()
    torch.save({"start": start, "reference": reference}, f"{sys.argv[1]}/rank{dist.get_rank()}.pt")
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
"""

# two processes, each with different weights or a different number of replicas
STARTS_AND_LAYOUTS = """
import json, sys
import torch
import torch.distributed as dist
from torch import nn

from elastic_entropy.comm import DistributedCommunicator
from elastic_entropy.optim import Parle, replica_param_groups

dist.init_process_group("gloo")
rank, out = dist.get_rank(), {}
for same_init in (True, False):
    torch.manual_seed(rank)
    models = [nn.Linear(4, 3) for _ in range(2)]
    comm = DistributedCommunicator(2)
    Parle(replica_param_groups(m.parameters() for m in models), lr=0.1, comm=comm,
          same_init=same_init)
    out[f"same_init={same_init}"] = [p.detach().flatten().tolist() for m in models
                                     for p in m.parameters()]
    out[f"collectives, same_init={same_init}"] = comm.stats.num_collectives
try:
    DistributedCommunicator(rank + 1)
except ValueError as error:
    out["error"] = str(error)
json.dump(out, open(f"{sys.argv[1]}/rank{rank}.json", "w"))
dist.destroy_process_group()
"""


def _torchrun(script: Path, out: Path) -> subprocess.CompletedProcess:
    env = cli_env()
    env["PYTHONPATH"] = os.pathsep.join([str(Path(__file__).parents[2]), env.get("PYTHONPATH", "")])
    command = ["--standalone", "--nproc-per-node=2", str(script), str(out)]
    return subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", *command],
        env=env,
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
    )


def test_the_readme_loop_exits_zero_every_time(tmp_path: Path) -> None:
    import torch

    script = tmp_path / "own_loop.py"
    script.write_text(README_LOOP)
    for run in range(NUM_LOOP_RUNS):
        out = tmp_path / f"run{run}"
        out.mkdir()
        done = _torchrun(script, out)
        assert done.returncode == 0, f"run {run} of {NUM_LOOP_RUNS}: {done.stderr[-3000:]}"
        ranks = [torch.load(out / f"rank{r}.pt", weights_only=True) for r in range(2)]
        for a, b in zip(ranks[0]["start"], ranks[1]["start"]):
            assert torch.equal(a, b)  # seeded apart, started together
        for a, b in zip(ranks[0]["reference"], ranks[1]["reference"]):
            assert torch.equal(a, b)


@pytest.fixture(scope="module")
def starts_and_layouts(tmp_path_factory: pytest.TempPathFactory) -> list[dict]:
    tmp_path = tmp_path_factory.mktemp("starts")
    script = tmp_path / "starts.py"
    script.write_text(STARTS_AND_LAYOUTS)
    done = _torchrun(script, tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    return [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]


def test_every_process_starts_from_the_first_ones_replicas(starts_and_layouts: list[dict]) -> None:
    first, second = starts_and_layouts
    assert first["same_init=True"] == second["same_init=True"]
    assert first["same_init=False"] == first["same_init=True"]  # rank 0 keeps its own
    assert second["same_init=False"] != first["same_init=False"]  # opted out: left apart
    # the start is not the algorithm's traffic: the counters the app reports stay at 0
    for result in starts_and_layouts:
        assert result["collectives, same_init=True"] == result["collectives, same_init=False"] == 0


def test_a_layout_that_differs_across_ranks_is_refused(starts_and_layouts: list[dict]) -> None:
    for result in starts_and_layouts:
        assert result["error"] == (
            "replicas_per_process differs across ranks (rank 0: 1, rank 1: 2); build every "
            "process's communicator with the same replicas_per_process"
        )
