"""Divergence at the edges of the exchange, on real gloo processes: an overlapped (stale) mean, and
a node-only outer step of a coarser inter-node period."""

from __future__ import annotations

import multiprocessing as mp
import traceback
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from elastic_entropy.comm import Communicator
from elastic_entropy.optim import Parle, replica_param_groups
from tests.distributed.test_communicator import _init

TIMEOUT_S = 120


def _worker(fn: Callable[[int], dict], rank: int, world: int, port: int, out: str) -> None:
    from elastic_entropy.distributed import exit_worker

    try:
        _init(rank, world, port)
        torch.save(fn(rank), Path(out) / f"rank{rank}.pt")
    except BaseException:
        (Path(out) / f"rank{rank}.err").write_text(traceback.format_exc())
        exit_worker(1)
    exit_worker(0)


def run_processes(fn: Callable[[int], dict], world: int, port: int, out: Path) -> list[dict]:
    """``fn(rank)`` on ``world`` gloo processes; a hang fails the test after ``TIMEOUT_S``."""
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_worker, args=(fn, r, world, port, str(out))) for r in range(world)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(TIMEOUT_S)
    hung = [p.pid for p in procs if p.is_alive()]
    for p in procs:
        if p.is_alive():
            p.kill()
    assert not hung, f"workers {hung} still running after {TIMEOUT_S} s (a collective unpaired?)"
    errors = [f.read_text() for f in sorted(out.glob("*.err"))]
    assert not errors, "\n".join(errors)
    return [torch.load(out / f"rank{r}.pt", weights_only=True) for r in range(world)]


def _parle(comm: Communicator, num_models: int, overlap: bool) -> tuple[list[nn.Module], Parle]:

    torch.manual_seed(0)
    models = [nn.Linear(4, 3) for _ in range(num_models)]
    for m in models[1:]:
        m.load_state_dict(models[0].state_dict())
    opt = Parle(
        replica_param_groups(m.parameters() for m in models),
        lr=0.1,
        num_inner_steps=2,
        rho=0.5,
        noise=0.0,
        comm=comm,
        overlap=overlap,
    )
    return models, opt


def _train_step(models: list[nn.Module], opt: Parle, rank: int, step: int) -> None:
    for a, m in enumerate(models):
        x = torch.randn(8, 4, generator=torch.Generator().manual_seed(1000 * rank + 10 * a + step))
        nn.functional.mse_loss(m(x), x[:, :3].sin()).backward()
    opt.step()
    opt.zero_grad()


def _flat_anchor(opt: Parle, replica: int) -> torch.Tensor:
    return torch.cat([p.flatten() for p in opt.anchors(replica)]).clone()


# ---------------------------------------------------------------- overlap=True
POISON_OVERLAP = {3: (1, 0), 7: (0, 1)}  # step -> (rank, local replica): a middle and the last


def overlapped_with_divergence(rank: int) -> dict:
    from elastic_entropy.comm import DistributedCommunicator

    models, opt = _parle(DistributedCommunicator(2), 2, overlap=True)
    for step in range(8):  # outer steps at steps 2, 4, 6, 8
        if POISON_OVERLAP.get(step, (None,))[0] == rank:
            # the fault: NaN in the parameters, in the inner loop right before an outer step
            models[POISON_OVERLAP[step][1]].weight.data[0, 0] = float("nan")
        _train_step(models, opt, rank, step)
    result = {
        "events": opt.quarantine_events,
        "anchors": [_flat_anchor(opt, a) for a in range(2)],
        "reference": torch.cat([r.flatten() for r in opt.reference()]).clone(),
    }
    if rank == 1:  # a replica not yet reset: the reference leaves it out
        opt.anchors(0)[0][0, 0] = float("nan")
    result["masked_reference"] = torch.cat([r.flatten() for r in opt.reference()]).clone()
    return result


def test_overlap_resets_a_replica_at_the_step_it_diverges(tmp_path: Path, port: int) -> None:
    results = run_processes(overlapped_with_divergence, 2, port, tmp_path)
    anchors = [a for r in results for a in r["anchors"]]  # the 4 replicas of the job, in order
    for r in results:
        # replica 2 (rank 1's first) at the middle outer step, replica 1 at the last: each at the
        # step its parameters went non-finite, and once
        assert r["events"] == [{"step": 4, "replica": 2}, {"step": 8, "replica": 1}]
        assert torch.isfinite(r["reference"]).all()
        others = torch.stack([anchors[a] for a in (0, 2, 3)]).mean(0)
        torch.testing.assert_close(r["reference"], others)  # the reset one equals the others'
        torch.testing.assert_close(anchors[1], others)
        # the anchor of replica 2 made non-finite after the run: left out of the reference
        torch.testing.assert_close(
            r["masked_reference"], torch.stack([anchors[a] for a in (0, 1, 3)]).mean(0)
        )
    assert torch.equal(results[0]["masked_reference"], results[1]["masked_reference"])


# ---------------------------------------------------------------- inter_node_period > 1
def hierarchical_with_divergence(rank: int) -> dict:
    from elastic_entropy.comm import HierarchicalCommunicator

    comm = HierarchicalCommunicator(1, processes_per_node=2, inter_node_period=2)
    models, opt = _parle(comm, 1, overlap=False)
    result: dict = {}
    for step in range(10):  # outer steps at 2 (across nodes), 4 (node only), 6 (across), ...
        if rank == 0 and step == 3:
            models[0].weight.data[0, 0] = float("nan")  # on node 0, before a node-only step
        _train_step(models, opt, rank, step)
        if step == 3:
            result["anchor_after_reset"] = _flat_anchor(opt, 0)
    result.update(
        events=opt.quarantine_events,
        outer_means=comm.stats.num_outer_means,
        collectives=comm.stats.num_collectives,
        bytes=comm.stats.bytes_per_replica,
        anchor=_flat_anchor(opt, 0),
        reference=torch.cat([r.flatten() for r in opt.reference()]).clone(),
    )
    return result


def test_divergence_on_a_node_only_step_is_quarantined_by_the_whole_job(
    tmp_path: Path, port: int
) -> None:
    results = run_processes(hierarchical_with_divergence, 4, port, tmp_path)
    for r in results:
        assert r["events"] == [{"step": 4, "replica": 0}]  # on every node, none on node 1
        assert torch.isfinite(r["anchor"]).all() and torch.isfinite(r["reference"]).all()
    # every process ran the same collectives: the period keeps one phase across the job
    for key in ("outer_means", "collectives", "bytes"):
        assert len({r[key] for r in results}) == 1, key
    assert results[0]["outer_means"] == 5
    # replica 0 restarted from the reference of the three others, taken across nodes
    others = torch.stack([r["anchor_after_reset"] for r in results[1:]]).mean(0)
    torch.testing.assert_close(results[0]["anchor_after_reset"], others)
