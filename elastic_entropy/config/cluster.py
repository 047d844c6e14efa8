"""The ``cluster/`` group (processes, devices, CUDA graphs) and ``checkpoint``."""

from __future__ import annotations

from dataclasses import dataclass

from elastic_entropy.config._checks import _positive, _require

# replicas live in one process one after another: past this many, the buffers outgrow most
# machines long before the first step, and torchrun spreads them better over processes
MAX_REPLICAS_PER_PROCESS = 1024
MAX_THREADS = 4096  # more intra-op threads than any machine's cores: a typo


@dataclass
class ClusterConfig:
    name: str = "local"
    replicas_per_process: int | None = None  # None: the algorithm's default (Parle: 4)
    backend: str = "auto"  # auto: nccl on GPUs, gloo on CPUs
    device: str = "auto"  # auto: cuda:LOCAL_RANK when CUDA is there, else cpu
    timeout_s: float = 600.0  # a silent peer ends the job after this long
    # the mean goes process -> node -> job; None: torchrun's LOCAL_WORLD_SIZE (one node otherwise)
    processes_per_node: int | None = None
    inter_node_period: int = 1  # cross nodes every k-th outer step (k > 1 changes the algorithm)
    # the replicas' forward+backward in one CUDA graph: auto = on CUDA devices where it can be
    # (not with algorithm=ddp or dropout), on = insist, off = never
    cuda_graphs: str = "auto"
    # torch's intra-op threads: auto = this process's share of its cores (at most 2 on a GPU),
    # keeping an OMP_NUM_THREADS from the environment; N = exactly N (elastic_entropy/threads.py)
    threads: str = "auto"

    def __post_init__(self) -> None:
        if self.replicas_per_process is not None:
            _require(
                1 <= self.replicas_per_process <= MAX_REPLICAS_PER_PROCESS,
                "cluster.replicas_per_process",
                self.replicas_per_process,
                f"must be in [1, {MAX_REPLICAS_PER_PROCESS}]; for more replicas start more "
                "processes with torchrun --nproc-per-node",
            )
        _require(
            self.backend in ("auto", "gloo", "nccl"),
            "cluster.backend",
            self.backend,
            "choose auto, gloo or nccl",
        )
        _require(
            self.device in ("auto", "cpu", "cuda"),
            "cluster.device",
            self.device,
            "choose auto, cpu or cuda",
        )
        # finite: torch's process groups take a timedelta, which inf overflows
        _positive("cluster.timeout_s", self.timeout_s, "must be a finite number of seconds > 0")
        if self.processes_per_node is not None:
            _require(
                self.processes_per_node >= 1,
                "cluster.processes_per_node",
                self.processes_per_node,
                "must be >= 1",
            )
        _require(
            self.inter_node_period >= 1,
            "cluster.inter_node_period",
            self.inter_node_period,
            "must be >= 1",
        )
        _require(
            self.cuda_graphs in ("auto", "on", "off"),
            "cluster.cuda_graphs",
            self.cuda_graphs,
            "choose auto, on or off",
        )
        _require(
            not (self.cuda_graphs == "on" and self.device == "cpu"),
            "cluster.cuda_graphs",
            self.cuda_graphs,
            "CUDA graphs need cluster.device=cuda (or auto on a GPU); use auto or off on CPUs",
        )
        _require(
            str(self.threads) == "auto"
            or (str(self.threads).isdigit() and 1 <= int(self.threads) <= MAX_THREADS),
            "cluster.threads",
            self.threads,
            f"choose auto or a number of threads in [1, {MAX_THREADS}], e.g. cluster.threads=1",
        )


@dataclass
class CheckpointConfig:
    every_outer_steps: int = 25  # also at the end, and on SIGTERM / SIGUSR1
    keep_last: int = 3
    resume: bool = True  # resume from the run directory's newest checkpoint when there is one
    # SIGTERM / SIGUSR1 / SIGINT: write a checkpoint at the next outer step, then exit 75 (130)
    on_signal: bool = True

    def __post_init__(self) -> None:
        _require(
            self.every_outer_steps >= 1,
            "checkpoint.every_outer_steps",
            self.every_outer_steps,
            "must be >= 1",
        )
        _require(self.keep_last >= 1, "checkpoint.keep_last", self.keep_last, "must be >= 1")
