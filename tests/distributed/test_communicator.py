"""Real processes, gloo, a free port, a timeout: the distributed communicator, and Parle on it."""

from __future__ import annotations

import multiprocessing as mp
import os
import traceback
from pathlib import Path

import pytest
import torch
from torch import nn

TIMEOUT_S = 120


def _init(rank: int, world: int, port: int) -> None:
    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world)
    )
    torch.set_num_threads(1)
    from elastic_entropy.distributed import init_distributed

    init_distributed(backend="gloo", device="cpu", timeout_s=60)


def _worker(fn_name: str, rank: int, world: int, port: int, out: str) -> None:
    from elastic_entropy.distributed import exit_worker

    try:
        _init(rank, world, port)
        result = globals()[fn_name](rank, world)
        torch.save(result, Path(out) / f"rank{rank}.pt")
    except BaseException:
        (Path(out) / f"rank{rank}.err").write_text(traceback.format_exc())
        exit_worker(1)
    exit_worker(0)


def _assert_all_close(per_rank: list[list[torch.Tensor]], local: list[torch.Tensor]) -> None:
    """Every process ended where the same replicas in one process end."""
    for tensors in per_rank:
        for got, want in zip(tensors, local):
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


def spawn(fn_name: str, world: int, port: int, tmp_path: Path) -> list:
    ctx = mp.get_context("spawn")
    procs = [
        ctx.Process(target=_worker, args=(fn_name, r, world, port, str(tmp_path)))
        for r in range(world)
    ]
    for p in procs:
        p.start()
    for p in procs:
        p.join(TIMEOUT_S)
    for p in procs:
        if p.is_alive():
            p.kill()
            pytest.fail(f"worker {p.pid} still running after {TIMEOUT_S} s")
    errors = [f.read_text() for f in sorted(tmp_path.glob("*.err"))]
    assert not errors, "\n".join(errors)
    assert all(p.exitcode == 0 for p in procs)
    return [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(world)]


# ---------------------------------------------------------------- workers (run in the children)
def mean_of_stacked_rows(rank: int, world: int) -> dict:
    from elastic_entropy.comm import DistributedCommunicator

    comm = DistributedCommunicator(replicas_per_process=2)
    buf = torch.arange(6, dtype=torch.float32).reshape(2, 3) + 10 * rank
    mean = comm.mean(buf)
    return {
        "mean": mean,
        "replicas": comm.num_replicas,
        "offset": comm.replica_offset,
        "bytes": comm.stats.bytes_per_replica,
        "collectives": comm.stats.num_collectives,
    }


def _parle_run(comm, replicas_here: list[int], overlap: bool = False) -> list[torch.Tensor]:
    from elastic_entropy.optim import Parle, replica_param_groups
    from elastic_entropy.scoping import Schedule

    torch.manual_seed(0)
    init = nn.Linear(4, 3)
    models = [nn.Linear(4, 3) for _ in replicas_here]
    for m in models:
        m.load_state_dict(init.state_dict())
    opt = Parle(
        replica_param_groups(m.parameters() for m in models),
        lr=0.1,
        num_inner_steps=3,
        noise=1e-2,
        rho_schedule=Schedule(0.5, 0.2, 5.0),
        comm=comm,
        seed=11,
        overlap=overlap,
    )
    for step in range(12):
        for m, replica in zip(models, replicas_here):
            g = torch.Generator().manual_seed(1000 * replica + step)
            x = torch.randn(8, 4, generator=g)
            nn.functional.mse_loss(m(x), x[:, :3].sin()).backward()
        opt.step()
        opt.zero_grad()
    return opt.reference()


def parle_two_processes(rank: int, world: int) -> list[torch.Tensor]:
    from elastic_entropy.comm import DistributedCommunicator

    return _parle_run(DistributedCommunicator(1), [rank])


# ---------------------------------------------------------------- tests
def parle_two_processes_overlapped(rank: int, world: int) -> list[torch.Tensor]:
    from elastic_entropy.comm import DistributedCommunicator

    return _parle_run(DistributedCommunicator(1), [rank], overlap=True)


def test_overlapped_all_reduce_equals_the_local_stale_form(tmp_path: Path, port: int) -> None:
    from elastic_entropy.comm import LocalCommunicator

    results = spawn("parle_two_processes_overlapped", 2, port, tmp_path)
    local = _parle_run(LocalCommunicator(2), [0, 1], overlap=True)
    synchronous = _parle_run(LocalCommunicator(2), [0, 1])
    for reference in results:
        for got, want in zip(reference, local):
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    assert not all(torch.allclose(a, b) for a, b in zip(local, synchronous))


def test_mean_over_two_processes_of_two_replicas(tmp_path: Path, port: int) -> None:
    results = spawn("mean_of_stacked_rows", 2, port, tmp_path)
    expected = (torch.arange(6.0).reshape(2, 3) + torch.arange(6.0).reshape(2, 3) + 10).sum(0) / 4
    for rank, result in enumerate(results):
        torch.testing.assert_close(result["mean"], expected)
        assert result["replicas"] == 4 and result["offset"] == 2 * rank
        assert result["bytes"] == 3 * 4 and result["collectives"] == 1


def test_parle_over_processes_equals_parle_in_one_process(tmp_path: Path, port: int) -> None:
    from elastic_entropy.comm import LocalCommunicator

    _assert_all_close(
        spawn("parle_two_processes", 2, port, tmp_path), _parle_run(LocalCommunicator(2), [0, 1])
    )


def parle_with_poisoned_replica(rank: int, world: int) -> dict:
    from elastic_entropy.comm import DistributedCommunicator
    from elastic_entropy.optim import Parle, replica_param_groups

    torch.manual_seed(0)
    models = [nn.Linear(4, 3) for _ in range(2)]
    models[1].load_state_dict(models[0].state_dict())
    opt = Parle(
        replica_param_groups(m.parameters() for m in models),
        lr=0.1,
        num_inner_steps=2,
        comm=DistributedCommunicator(2),
    )
    for step in range(6):
        for a, m in enumerate(models):
            m(torch.randn(5, 4)).square().mean().backward()
            if rank == 1 and a == 0 and step == 2:
                m.bias.grad[1] = float("inf")
        opt.step()
        opt.zero_grad()
    return {"events": opt.quarantine_events, "reference": opt.reference()}


def test_quarantine_across_processes(tmp_path: Path, port: int) -> None:
    results = spawn("parle_with_poisoned_replica", 2, port, tmp_path)
    for result in results:
        assert result["events"] == [{"step": 4, "replica": 2}]  # rank 1's first replica
        assert all(torch.isfinite(r).all() for r in result["reference"])
    for a, b in zip(results[0]["reference"], results[1]["reference"]):
        assert torch.equal(a, b)


def _dp_run(comm, replicas_here: list[int]) -> list[torch.Tensor]:
    from elastic_entropy.optim import DataParallelSGD, replica_param_groups

    torch.manual_seed(0)
    init = nn.Linear(4, 3)
    models = [nn.Linear(4, 3) for _ in replicas_here]
    for m in models:
        m.load_state_dict(init.state_dict())
    opt = DataParallelSGD(replica_param_groups(m.parameters() for m in models), lr=0.1, comm=comm)
    for step in range(6):
        for m, replica in zip(models, replicas_here):
            x = torch.randn(8, 4, generator=torch.Generator().manual_seed(1000 * replica + step))
            nn.functional.mse_loss(m(x), x[:, :3].cos()).backward()
        opt.step()
        opt.zero_grad()
    return [p.detach().clone() for p in models[0].parameters()]


def dp_sgd_two_processes(rank: int, world: int) -> list[torch.Tensor]:
    from elastic_entropy.comm import DistributedCommunicator

    return _dp_run(DistributedCommunicator(1), [rank])


def test_data_parallel_baseline_across_processes(tmp_path: Path, port: int) -> None:
    from elastic_entropy.comm import LocalCommunicator

    _assert_all_close(
        spawn("dp_sgd_two_processes", 2, port, tmp_path), _dp_run(LocalCommunicator(2), [0, 1])
    )
