"""cluster.threads: the policy (cores, processes, device -> threads) and what it reads."""

from __future__ import annotations

import os

import pytest
import torch

from elastic_entropy.config.cluster import ClusterConfig
from elastic_entropy.threads import (
    GPU_THREADS,
    choose_threads,
    cores_and_processes,
    intra_op_threads,
    processes_on_node,
    set_intra_op_threads,
    usable_cores,
)

CPU, CUDA = torch.device("cpu"), torch.device("cuda", 0)


@pytest.mark.parametrize(
    ("cores", "processes", "is_gpu", "expected"),
    [
        (2, 1, False, 2),
        (16, 4, False, 4),
        (16, 3, False, 5),  # the share, rounded down: no process oversubscribes its cores
        (2, 4, False, 1),  # more processes than cores: one each, never zero
        (1, 1, False, 1),
        (64, 8, True, GPU_THREADS),  # the GPU computes; the CPU launches kernels
        (64, 64, True, 1),
        (1, 1, True, 1),
    ],
)
def test_the_policy(cores: int, processes: int, is_gpu: bool, expected: int) -> None:
    assert intra_op_threads(cores, processes, is_gpu) == expected


def test_the_policy_refuses_no_cores_or_processes() -> None:
    with pytest.raises(ValueError, match="num_cores >= 1"):
        intra_op_threads(0, 1, False)
    with pytest.raises(ValueError, match="num_processes >= 1"):
        intra_op_threads(4, 0, False)


def test_the_cores_are_this_process_s_affinity() -> None:
    assert usable_cores() == len(os.sched_getaffinity(0))


@pytest.mark.parametrize(
    ("env", "processes_per_node", "expected"),
    [
        ({}, None, 1),
        ({}, 3, 3),  # cluster.processes_per_node, when set
        ({"LOCAL_WORLD_SIZE": "4", "RANK": "1", "WORLD_SIZE": "8"}, None, 4),  # torchrun
        ({"SLURM_PROCID": "0", "SLURM_STEP_NUM_TASKS": "4", "SLURM_NTASKS_PER_NODE": "2"}, None, 2),
        # srun's compressed list, indexed by this node
        (
            {"SLURM_PROCID": "3", "SLURM_STEP_NUM_TASKS": "7", "SLURM_NODEID": "1",
             "SLURM_STEP_TASKS_PER_NODE": "2(x3),1"},
            None,
            2,
        ),
        (
            {"SLURM_PROCID": "6", "SLURM_STEP_NUM_TASKS": "7", "SLURM_NODEID": "3",
             "SLURM_STEP_TASKS_PER_NODE": "2(x3),1"},
            None,
            1,
        ),
        # a batch script's one process, with the job's task count around it, is one process
        ({"SLURM_PROCID": "0", "SLURM_STEP_NUM_TASKS": "1", "SLURM_NTASKS_PER_NODE": "4"}, None, 1),
    ],
)
def test_processes_on_the_node(
    env: dict[str, str], processes_per_node: int | None, expected: int
) -> None:
    assert processes_on_node(env, processes_per_node) == expected


def test_slurm_cpus_per_task_bound_the_cores() -> None:
    srun = {"SLURM_PROCID": "1", "SLURM_STEP_NUM_TASKS": "4", "SLURM_CPUS_PER_TASK": "4"}
    assert cores_and_processes(srun, 32) == (4, 1)  # the task's own cores
    assert cores_and_processes(srun, 2) == (2, 1)  # no more than its affinity
    inside = {"SLURM_PROCID": "0", "SLURM_CPUS_PER_TASK": "8", "LOCAL_WORLD_SIZE": "4"}
    assert cores_and_processes(inside, 32) == (8, 4)  # torchrun's processes share the task's
    assert cores_and_processes({"SLURM_CPUS_PER_TASK": "4"}, 32) == (32, 1)  # not a SLURM task


def test_an_explicit_count_wins_over_omp_num_threads() -> None:
    assert choose_threads("3", {"OMP_NUM_THREADS": "1"}, CPU, None)[0] == 3


def test_auto_keeps_omp_num_threads_and_says_so() -> None:
    count, why = choose_threads("auto", {"OMP_NUM_THREADS": "5"}, CPU, None)
    assert (count, why) == (5, "OMP_NUM_THREADS=5 in the environment")


def test_auto_ignores_an_omp_num_threads_that_is_no_count() -> None:
    for value in ("", "0", "four"):
        count, why = choose_threads("auto", {"OMP_NUM_THREADS": value}, CPU, None)
        assert count == usable_cores() and why.startswith("auto: ")


def test_auto_shares_this_machine_s_cores() -> None:
    cores = usable_cores()
    assert choose_threads("auto", {}, CPU, None)[0] == cores
    assert choose_threads("auto", {"LOCAL_WORLD_SIZE": "2"}, CPU, None)[0] == max(1, cores // 2)
    assert choose_threads("auto", {}, CUDA, None)[0] == min(cores, GPU_THREADS)


def test_torch_runs_with_the_count_set() -> None:
    before = torch.get_num_threads()
    try:
        assert set_intra_op_threads("1", CPU, None, is_main=False) == 1
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize("bad", ["0", "abc", "-2", "1.5", "4097", ""])
def test_the_config_refuses_a_bad_count(bad: str) -> None:
    with pytest.raises(ValueError, match=r"^Invalid cluster.threads: .* \(choose auto or a number"):
        ClusterConfig(threads=bad)


def test_the_config_takes_auto_and_counts() -> None:
    assert ClusterConfig().threads == "auto"
    assert ClusterConfig(threads="8").threads == "8"
