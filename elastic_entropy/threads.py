"""Torch's intra-op threads for this process: ``cluster.threads=auto|N``.

torch starts with one intra-op thread per core of the machine, whatever else runs there. Several
processes of one job on a node (srun's tasks, or processes started by hand) then run
``processes x cores`` threads on ``cores`` cores; OpenMP's threads wait for one another at every
parallel region's barrier, so a descheduled thread stalls the others and a step takes several
times as long (on 2 cores, the default job went from 5.9 s to 22 s when a second process
competed; with one thread each, 6.5 s). ``auto`` gives each process its share of the cores it may
run on, and at most ``GPU_THREADS`` when a GPU does the arithmetic.

An ``OMP_NUM_THREADS`` in the environment is the user's choice (or torchrun's: it sets 1 for each
of several processes when it is not set) and ``auto`` keeps it; an explicit ``cluster.threads=N``
is the run's own choice and wins over it.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Mapping

import torch

log = logging.getLogger(__name__)

# on a GPU the CPU thread only launches kernels and reads a few numbers back (the minibatch
# indices, the metrics' losses); one more covers the host-side copies in between. More would only
# spin at OpenMP barriers against the DataLoader's workers and the node's other ranks
GPU_THREADS = 2


def intra_op_threads(num_cores: int, num_processes: int, is_gpu: bool) -> int:
    """The policy of ``auto``: this process's share of ``num_cores`` among the ``num_processes``
    of the job on this node, at least one, and at most ``GPU_THREADS`` when a GPU does the work."""
    if num_cores < 1 or num_processes < 1:
        raise ValueError(
            f"intra_op_threads needs num_cores >= 1 and num_processes >= 1, not "
            f"{num_cores} and {num_processes}"
        )
    share = max(1, num_cores // num_processes)
    return min(share, GPU_THREADS) if is_gpu else share


def usable_cores() -> int:
    """The cores this process may run on (its affinity mask: taskset, cgroups' cpusets)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def _tasks_on_node(compressed: str, node: int) -> int | None:
    """SLURM's tasks of node ``node`` from a list such as ``2(x3),1``, or None if unreadable."""
    counts: list[int] = []
    for part in compressed.split(","):
        match = re.fullmatch(r"(\d+)(?:\(x(\d+)\))?", part.strip())
        if match is None:
            return None
        counts += [int(match.group(1))] * int(match.group(2) or 1)
    return counts[node] if 0 <= node < len(counts) else None


def processes_on_node(env: Mapping[str, str], processes_per_node: int | None = None) -> int:
    """The job's processes sharing this node's cores: ``cluster.processes_per_node`` when set,
    else torchrun's ``LOCAL_WORLD_SIZE``, else srun's tasks on this node (the same variables that
    :func:`elastic_entropy.distributed.init_distributed` reads the ranks from), else 1."""
    if processes_per_node is not None:
        return processes_per_node
    if "LOCAL_WORLD_SIZE" in env:
        return max(1, int(env["LOCAL_WORLD_SIZE"]))
    if "SLURM_PROCID" in env and int(env.get("SLURM_STEP_NUM_TASKS", "1")) > 1:
        if "SLURM_NTASKS_PER_NODE" in env:
            return max(1, int(env["SLURM_NTASKS_PER_NODE"]))
        node = int(env.get("SLURM_NODEID", "0"))
        tasks = _tasks_on_node(env.get("SLURM_STEP_TASKS_PER_NODE", ""), node)
        return max(1, tasks) if tasks is not None else 1
    return 1


def cores_and_processes(
    env: Mapping[str, str], num_cores: int, processes_per_node: int | None = None
) -> tuple[int, int]:
    """The cores to share and the processes sharing them. SLURM's ``--cpus-per-task`` bounds the
    cores of a task where its affinity does not already (``TaskPlugin=task/none`` binds nothing):
    an srun task has them to itself, a torchrun inside one task shares them among its
    ``LOCAL_WORLD_SIZE`` processes."""
    cpus_per_task = env.get("SLURM_CPUS_PER_TASK", "") if "SLURM_PROCID" in env else ""
    if not (cpus_per_task.isdigit() and int(cpus_per_task) >= 1):
        return num_cores, processes_on_node(env, processes_per_node)
    cores = min(num_cores, int(cpus_per_task))
    if "LOCAL_WORLD_SIZE" in env:
        return cores, max(1, int(env["LOCAL_WORLD_SIZE"]))
    return cores, 1


def _omp_num_threads(env: Mapping[str, str]) -> int | None:
    value = env.get("OMP_NUM_THREADS", "").strip()
    return int(value) if value.isdigit() and int(value) >= 1 else None


def choose_threads(
    threads: str, env: Mapping[str, str], device: torch.device, processes_per_node: int | None
) -> tuple[int, str]:
    """The thread count for ``cluster.threads`` and the reason, in words for the log."""
    if threads != "auto":
        return int(threads), f"cluster.threads={threads}"
    from_env = _omp_num_threads(env)
    if from_env is not None:
        return from_env, f"OMP_NUM_THREADS={from_env} in the environment"
    cores, processes = cores_and_processes(env, usable_cores(), processes_per_node)
    count = intra_op_threads(cores, processes, device.type == "cuda")
    return count, f"auto: {cores} cores, {processes} process(es) sharing them, {device.type}"


def set_intra_op_threads(
    threads: str, device: torch.device, processes_per_node: int | None, is_main: bool
) -> int:
    """Set torch's intra-op threads for ``cluster.threads`` before the first parallel op; rank 0
    logs the count torch reports afterwards. Returns that count."""
    count, why = choose_threads(threads, os.environ, device, processes_per_node)
    if count != torch.get_num_threads():
        torch.set_num_threads(count)
    if is_main:
        log.info("intra-op threads: %d (%s)", torch.get_num_threads(), why)
    return torch.get_num_threads()


def log_choice(threads: str, device: torch.device, processes_per_node: int | None) -> None:
    """The count torch runs with and why, once the run is accepted: a run refused at its start
    (a finished or busy run directory) leaves the directory's train.log as it was."""
    _, why = choose_threads(threads, os.environ, device, processes_per_node)
    log.info("intra-op threads: %d (%s)", torch.get_num_threads(), why)
