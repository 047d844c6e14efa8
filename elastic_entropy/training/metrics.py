"""What a metrics record holds, measured where it is cheap: where the run is, its couplings and
traffic (every record), the replicas' losses and the optimizer's diagnostics (every
``logger.every_outer_steps`` outer steps). The reference's evaluation is in :mod:`.evaluation`.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import torch
from torch import Tensor

from elastic_entropy.distributed import gather_objects
from elastic_entropy.optim import DIAGNOSTICS
from elastic_entropy.training.run import Run

log = logging.getLogger(__name__)

# record keys on the progress bar, by their label there
SHOWN = {
    "train_loss": "loss",
    "reference/test_acc": "ref_acc",
    "distance": "dist",
    "gamma": "gamma",
    "rho": "rho",
}


def per_replica(name: str, values: list[float]) -> dict[str, float]:
    """``name`` (the mean over replicas) and ``name/replica_a`` for each replica of the job."""
    return {
        name: sum(values) / len(values),
        **{f"{name}/replica_{a}": v for a, v in enumerate(values)},
    }


def dp_bytes(run: Run, steps: int) -> int:
    """What data-parallel SGD sends per worker: the whole gradient every minibatch."""
    return steps * run.plan.gradient_bytes


def base_metrics(run: Run, wall_s: float, since: tuple[int, float]) -> dict[str, Any]:
    """What every record holds: where the run is, its couplings, rates and traffic so far.

    ``since`` is the (step, wall time) of the previous record: samples/s is over that interval.
    """
    opt, plan, step = run.optimizer, run.plan, run.counters.step
    group = opt.param_groups[0]
    samples = (step - since[0]) * run.cfg.data.batch_size * opt.num_replicas
    record = {
        "step": step,
        "epoch": step / plan.steps_per_epoch,
        "outer_step": step // plan.steps_per_exchange,
        # the couplings the last minibatch was stepped with: the ones its forces were scaled by
        **opt.couplings,
        "lr": group["lr"],
    }
    if opt.num_inner_steps > 0:
        record["inner_lr"] = group["inner_lr"] if group["inner_lr"] is not None else group["lr"]
    stats = run.comm.stats
    record |= {
        "bytes_per_replica": stats.bytes_per_replica,
        "dp_bytes_per_replica": dp_bytes(run, step),
        "collectives": stats.num_collectives,
        "elapsed_s": wall_s,
        "samples_per_s": samples / max(wall_s - since[1], 1e-9),
    }
    if run.loss_scale is not None:  # precision=fp16: the scale now, and the steps it skipped
        record |= run.loss_scale.metrics()
    return record


def _loss_and_acc(entry: Tensor) -> Tensor:
    # a checkpoint written before accuracies were kept holds losses only
    return entry if entry.dim() == 2 else torch.stack([entry, torch.full_like(entry, math.nan)])


def train_metrics(run: Run) -> dict[str, Any]:
    """Replica losses and accuracies over the minibatches since the last record (the counters'
    window, emptied here) and the diagnostics the optimizer measured in the outer step just
    done, gathered to rank 0."""
    window = run.counters.window
    stats = torch.stack([_loss_and_acc(t) for t in window]).mean(dim=0).cpu()
    window.clear()
    diagnostics = run.optimizer.pop_diagnostics()
    if diagnostics is None:  # asked for before the outer step; absent only if it never ran
        diagnostics = {name: torch.full((stats.shape[1],), math.nan) for name in DIAGNOSTICS}
    measured = torch.stack([diagnostics[name].double() for name in DIAGNOSTICS])
    parts = gather_objects((stats, measured, run.comm.stats.wait_s), run.info)
    if not run.info.is_main:
        return {}
    stats = torch.cat([p[0] for p in parts], dim=1).tolist()
    measured = torch.cat([p[1] for p in parts], dim=1).tolist()
    record = {**per_replica("train_loss", stats[0]), **per_replica("train_acc", stats[1])}
    for name, values in zip(DIAGNOSTICS, measured):
        record |= per_replica(name, values)
    record["comm_wait_s"] = sum(p[2] for p in parts) / len(parts)  # mean over processes
    return record


def log_quarantine(run: Run) -> None:
    """The optimizer's quarantine events since the last call: a record and a warning each."""
    for event in run.optimizer.pop_quarantine_events():
        run.metrics.log({"event": "quarantine", **event})
        if run.info.is_main:
            log.warning(
                "replica %d diverged (non-finite parameters) at step %d: left out of the mean "
                "and reset to the reference",
                event["replica"],
                event["step"],
            )
