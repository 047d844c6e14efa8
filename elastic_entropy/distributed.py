"""The job's processes: the one place a process group is made, and what a run does with it.

``init_distributed`` reads the ranks (torchrun: ``RANK``/``WORLD_SIZE``/``LOCAL_RANK``; ``srun``
without torchrun: ``SLURM_PROCID``/``SLURM_STEP_NUM_TASKS``/``SLURM_LOCALID``), picks the device
(``cuda:LOCAL_RANK`` when CUDA is there) and the backend (NCCL for CUDA, gloo for CPU), and sets an
explicit timeout so that a dead peer ends the job instead of hanging it.

Besides: the run's own collectives on Python objects and flags (``broadcast_object``,
``gather_objects``, ``any_rank``, ``barrier``), a failed collective told as a lost peer
(``as_peer_lost``), leaving the group (``teardown``, ``exit_worker``) and ``seed_everything``.
The averages between replicas are not here: the communicators, the choice among them
(``make_communicator``) and DDP with its traffic counted (``wrap_data_parallel``) live in
:mod:`elastic_entropy.comm`. This module and that package are the only ones that call
``torch.distributed``.
"""

from __future__ import annotations

import datetime
import gc
import os
import random
import re
import sys
from dataclasses import dataclass
from typing import Any, NoReturn, TypeVar

import numpy as np
import torch
import torch.distributed as dist

T = TypeVar("T")


@dataclass(frozen=True)
class DistInfo:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    backend: str | None  # None when there is a single process and no process group

    @property
    def is_distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _first_host(nodelist: str) -> str:
    """First host of a SLURM node list such as ``node[01-04,07],gpu1`` (no scontrol needed)."""
    match = re.match(r"([^,\[]+)(?:\[([^\]]+)\])?", nodelist)
    if match is None:
        raise ValueError(f"cannot read SLURM_NODELIST={nodelist!r}")
    prefix, ranges = match.group(1), match.group(2)
    if ranges is None:
        return prefix
    return prefix + ranges.split(",")[0].split("-")[0]


def _ranks_from_env() -> tuple[int, int, int]:
    env = os.environ
    if "RANK" in env and "WORLD_SIZE" in env:
        return int(env["RANK"]), int(env["WORLD_SIZE"]), int(env.get("LOCAL_RANK", "0"))
    slurm_tasks = int(env.get("SLURM_STEP_NUM_TASKS", "1"))
    if "SLURM_PROCID" in env and slurm_tasks > 1:
        # srun started one task per process; rendezvous on the first node of the step
        env.setdefault(
            "MASTER_ADDR", _first_host(env.get("SLURM_STEP_NODELIST", env["SLURM_NODELIST"]))
        )
        env.setdefault("MASTER_PORT", str(20000 + int(env.get("SLURM_JOB_ID", "0")) % 20000))
        return int(env["SLURM_PROCID"]), slurm_tasks, int(env.get("SLURM_LOCALID", "0"))
    return 0, 1, 0


def _pick_device(device: str, local_rank: int) -> torch.device:
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(
                "cluster.device=cuda but CUDA is not available; use cluster.device=cpu"
            )
        torch.cuda.set_device(local_rank % torch.cuda.device_count())
        return torch.device("cuda", local_rank % torch.cuda.device_count())
    if device == "cpu":
        return torch.device("cpu")
    raise ValueError(f"Invalid cluster.device: {device!r} (choose auto, cpu or cuda)")


def _pick_backend(backend: str, device: torch.device) -> str:
    if backend == "auto":
        return "nccl" if device.type == "cuda" else "gloo"
    if backend not in ("gloo", "nccl"):
        raise ValueError(f"Invalid cluster.backend: {backend!r} (choose auto, gloo or nccl)")
    if backend == "nccl" and device.type != "cuda":
        raise ValueError("cluster.backend=nccl needs CUDA devices; use gloo on CPUs")
    return backend


def _attempt_store(world_size: int, timeout: datetime.timedelta) -> dist.Store | None:
    """Under a one-node torchrun, its store seen through a prefix of this restart attempt.

    torchrun keeps one TCPStore for the whole job, across worker restarts (TCPStore sharing), and
    torch adds no prefix per attempt. The keys a killed attempt left there (gloo's listening
    addresses) are then read by the restarted workers, which connect to dead ports ("Connection
    refused") and fail again, restart after restart, until one happens to write its key first.
    One agent numbers its attempts consistently for all its workers; agents of several nodes do
    not (one restarted by a peer's failure keeps its count), so there None is returned and the
    launch scripts, which use the c10d rendezvous, turn the sharing off
    (TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1): rank 0 then hosts a fresh store on every attempt. A
    multi-node torchrun with the static rendezvous (``--master-addr``) always shares its store and
    keeps torch's behaviour.
    """
    attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT")
    if (
        attempt is None
        or os.environ.get("TORCHELASTIC_USE_AGENT_STORE") != "True"
        or os.environ.get("GROUP_WORLD_SIZE") != "1"
    ):
        return None
    store = dist.TCPStore(
        os.environ["MASTER_ADDR"],
        int(os.environ["MASTER_PORT"]),
        world_size,
        is_master=False,  # the agent hosts it
        timeout=timeout,
    )
    return dist.PrefixStore(f"elastic_entropy/attempt-{attempt}", store)


def init_distributed(
    backend: str = "auto", device: str = "auto", timeout_s: float = 600.0
) -> DistInfo:
    """Join the job's process group (or stay alone when there is one process)."""
    rank, world_size, local_rank = _ranks_from_env()
    torch_device = _pick_device(device, local_rank)
    if world_size == 1:
        return DistInfo(0, 1, 0, torch_device, None)
    chosen = _pick_backend(backend, torch_device)
    if not dist.is_initialized():
        timeout = datetime.timedelta(seconds=timeout_s)
        kwargs: dict[str, Any] = {}
        if chosen == "nccl":
            kwargs["device_id"] = torch_device
        store = _attempt_store(world_size, timeout)
        if store is None:
            kwargs["init_method"] = "env://"
        else:
            kwargs["store"] = store
        dist.init_process_group(
            backend=chosen, rank=rank, world_size=world_size, timeout=timeout, **kwargs
        )
    return DistInfo(rank, world_size, local_rank, torch_device, chosen)


def broadcast_object(obj: T, info: DistInfo) -> T:
    """Rank 0's ``obj`` on every rank."""
    if not info.is_distributed:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def gather_objects(obj: T, info: DistInfo) -> list[T]:
    """Every rank's ``obj``, in rank order, on every rank."""
    if not info.is_distributed:
        return [obj]
    out: list[Any] = [None] * info.world_size
    dist.all_gather_object(out, obj)
    return out


def any_rank(flag: torch.Tensor, info: DistInfo) -> bool:
    """True when ``flag`` is non-zero on any rank (a one-element all-reduce)."""
    if info.is_distributed:
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    return bool(flag.item())


class PeerLostError(RuntimeError):
    """A peer process died or stopped answering within the process group's timeout."""


_COMM_FAILURE_MARKERS = (
    "Timed out",
    "timed out",
    "Connection closed",
    "Connection reset",
    "Broken pipe",
    "gloo",
    "NCCL",
    "ProcessGroup",
)


def as_peer_lost(error: BaseException, info: DistInfo, timeout_s: float) -> PeerLostError | None:
    """The user-facing form of a collective that failed because of a peer, or None."""
    if not info.is_distributed or not isinstance(error, RuntimeError):
        return None
    text = str(error)
    is_comm = isinstance(error, (dist.DistBackendError, dist.DistNetworkError)) or any(
        marker in text for marker in _COMM_FAILURE_MARKERS
    )
    if not is_comm:
        return None
    detail = text.strip().splitlines()[-1] if text.strip() else type(error).__name__
    return PeerLostError(
        f"rank {info.rank} lost a peer (dead, or silent for cluster.timeout_s={timeout_s:g} s): "
        f"{detail}; a restart (torchrun --max-restarts, SLURM requeue) resumes from the last "
        "checkpoint"
    )


def barrier(info: DistInfo) -> None:
    if info.is_distributed:
        dist.barrier()


def teardown(info: DistInfo, *, is_clean: bool = True) -> None:
    if info.is_distributed and dist.is_initialized():
        if is_clean:
            # gloo aborts a process whose peer closes its sockets while it still tears down:
            # leave together, then destroy (after an error a peer may never arrive: skip it)
            dist.barrier()
        dist.destroy_process_group()
        # free a group held in reference cycles now, not during interpreter finalisation, where
        # gloo's destructor can abort the process
        gc.collect()


def exit_worker(code: int = 0) -> NoReturn:
    """End a spawned worker process whose results are already written, skipping gloo's teardown.

    gloo's destructors can abort a process ("terminate called without an active exception") when a
    peer closes its sockets at the same moment, or when the group is freed during interpreter
    finalisation; a worker that has done its work must not turn into a failure that way. On success
    the ranks meet at a barrier first, so that no peer still waits on this one's last message.
    """
    if code == 0 and dist.is_available() and dist.is_initialized():
        dist.barrier()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def seed_everything(seed: int) -> None:
    """The same seed on every rank: replicas start from one initialisation."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
