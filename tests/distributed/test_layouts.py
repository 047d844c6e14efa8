"""Four replicas as 1x4, 2x2 and 4x1 processes: the same reference (torchrun, gloo, CPU); 1x4 and
2x2 to the bit."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from tests.conftest import run_cli, run_torchrun

# dropout, Langevin noise and shards: every per-replica random stream is exercised
ARGS = [
    "max_steps=20",
    "algorithm.num_inner_steps=5",
    "algorithm.noise=0.001",
    "model.dropout=0.1",
    "data.policy=shard",
    "eval_every=100",
    "progress=false",
    "seed=3",
]


def _reference(run_dir: Path) -> dict[str, torch.Tensor]:
    return torch.load(run_dir / "reference.pt", weights_only=True)


def test_same_reference_in_every_layout(tmp_path: Path) -> None:
    runs = {}
    one = run_cli(
        [*ARGS, "cluster.replicas_per_process=4", f"hydra.run.dir={tmp_path / '1x4'}"], tmp_path
    )
    assert one.returncode == 0, one.stderr[-3000:]
    runs["1x4"] = tmp_path / "1x4"
    for nproc, per, extra in ((2, 2, []), (4, 1, []), (4, 1, ["cluster.processes_per_node=2"])):
        name = f"{nproc}x{per}" + ("-2nodes" if extra else "")
        done = run_torchrun(
            nproc,
            [
                *ARGS,
                *extra,
                f"cluster.replicas_per_process={per}",
                f"hydra.run.dir={tmp_path / name}",
            ],
            tmp_path,
        )
        assert done.returncode == 0, done.stderr[-3000:]
        runs[name] = tmp_path / name
    base = _reference(runs["1x4"])
    # one thread per process: halves are added first in both, so 2x2 is 1x4 bit for bit
    two = _reference(runs["2x2"])
    assert all(torch.equal(two[key], base[key]) for key in base)
    for name in ("2x2", "4x1", "4x1-2nodes"):  # the last: process, then node, then job
        other = _reference(runs[name])
        assert base.keys() == other.keys()
        for key in base:
            torch.testing.assert_close(
                other[key], base[key], rtol=1e-4, atol=1e-5, msg=f"{name} {key}"
            )
        result = json.loads((runs[name] / "results.json").read_text())
        assert result["num_replicas"] == 4 and result["processes"] == int(name[0])
        assert [r["replica"] for r in result["replicas"]] == [0, 1, 2, 3]
    # the replicas themselves differ (they are not four copies of one run)
    accs = {
        r["test_acc"] for r in json.loads((runs["1x4"] / "results.json").read_text())["replicas"]
    }
    assert len(accs) > 1


def test_coarser_inter_node_period_runs_and_changes_the_reference(tmp_path: Path) -> None:
    """Two simulated nodes crossing every 2nd outer step: a node-level mean in between."""
    args = [*ARGS, "cluster.replicas_per_process=1", "cluster.processes_per_node=2"]
    runs = {}
    for period in (1, 2):
        run_dir = tmp_path / f"period{period}"
        done = run_torchrun(
            4, [*args, f"cluster.inter_node_period={period}", f"hydra.run.dir={run_dir}"], tmp_path
        )
        assert done.returncode == 0, done.stderr[-3000:]
        runs[period] = _reference(run_dir)
    assert any(not torch.allclose(runs[1][k], runs[2][k]) for k in runs[1])


def test_torch_ddp_over_two_processes_is_data_parallel_sgd_in_one(tmp_path: Path) -> None:
    """algorithm=ddp (torch's DistributedDataParallel, 2 processes) takes the steps of dp_sgd
    with 2 replicas in one process: the same reference, the same bytes per replica."""
    args = [a for a in ARGS if not a.startswith(("algorithm.", "model.dropout"))]
    one = run_cli(
        [
            *args,
            "algorithm=dp_sgd",
            "cluster.replicas_per_process=2",
            f"hydra.run.dir={tmp_path}/dp",
        ],
        tmp_path,
    )
    assert one.returncode == 0, one.stderr[-3000:]
    two = run_torchrun(2, [*args, "algorithm=ddp", f"hydra.run.dir={tmp_path}/ddp"], tmp_path)
    assert two.returncode == 0, two.stderr[-3000:]
    dp, ddp = _reference(tmp_path / "dp"), _reference(tmp_path / "ddp")
    for key in dp:
        torch.testing.assert_close(ddp[key], dp[key], rtol=1e-4, atol=1e-5, msg=key)
    sent = [
        [json.loads(line) for line in (tmp_path / name / "metrics.jsonl").read_text().splitlines()]
        for name in ("dp", "ddp")
    ]
    # DDP's buckets hold every gradient once per step, as dp_sgd's one flat buffer does
    trained = [
        [(r["step"], r["bytes_per_replica"]) for r in run if "train_loss" in r] for run in sent
    ]
    assert trained[0] == trained[1] and trained[0][-1][1] > 0
