"""What the replicas of one process need in memory, against what the machine has.

A run whose replicas cannot fit (``cluster.replicas_per_process=1000`` of a wide MLP) would
otherwise grow for minutes and end in the kernel's OOM killer, with no line saying why. The
estimate is deliberately rough: each parameter of each replica is held in about
``BUFFERS_PER_PARAMETER`` float32 tensors (the weights, their gradient, the flat buffers' scratch
and the optimizer's anchor, momenta and means), and a run is refused only above what the machine
has available now.

``check_config`` runs before anything is built (the CLI's precheck): the network is built on the
meta device, which allocates nothing. ``check_fits`` takes a parameter count where a real model
already exists, on any device.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from elastic_entropy.config import Config
from elastic_entropy.models import build_model

BUFFERS_PER_PARAMETER = 8
BYTES_PER_VALUE = 4  # float32
# one sample's shape and the number of classes of each data set, known without loading it
# (tests/unit/test_footprint.py holds them to what the loaders return)
INPUTS: dict[str, tuple[tuple[int, ...], int]] = {
    "mnist1d": ((40,), 10),
    "digits": ((1, 8, 8), 10),
    "mnist": ((1, 28, 28), 10),
    "cifar10": ((3, 32, 32), 10),
    "cifar100": ((3, 32, 32), 100),
    "svhn": ((3, 32, 32), 10),
    "mnist5k": ((1, 28, 28), 10),
}


def replica_bytes(num_parameters: int) -> int:
    return num_parameters * BUFFERS_PER_PARAMETER * BYTES_PER_VALUE


def available_bytes(device: torch.device) -> int | None:
    """Memory free for new tensors on ``device`` now, or None when it cannot be told."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    if device.type != "cpu":
        return None
    meminfo = Path("/proc/meminfo")
    if meminfo.is_file():
        for line in meminfo.read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024  # the kernel counts in kB
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError):  # not a POSIX name on this system
        return None


def check_fits(
    num_parameters: int, replicas: int, available: int | None, processes: int = 1
) -> None:
    """A ValueError naming the keys to change when ``processes`` processes of ``replicas``
    replicas of ``num_parameters`` parameters each need more than ``available`` bytes."""
    needed = replica_bytes(num_parameters) * replicas * processes
    if available is None or needed <= available:
        return
    sharing = f"{processes} processes on this machine x " if processes > 1 else ""
    raise ValueError(
        f"{sharing}{replicas} replicas of {num_parameters:,} parameters need about "
        f"{needed / 2**30:,.1f} GiB, but {available / 2**30:,.1f} GiB are available; lower "
        "cluster.replicas_per_process or the model's size, or spread the replicas over more "
        "machines with torchrun"
    )


def num_parameters(cfg: Config) -> int | None:
    """The network's parameter count, built on the meta device (nothing allocated), or None
    when the data set is not known here or the network does not fit it (the run says why)."""
    if cfg.data.name not in INPUTS:
        return None
    input_shape, num_classes = INPUTS[cfg.data.name]
    try:
        with torch.device("meta"):
            model = build_model(
                cfg.model.name, input_shape, num_classes, **cfg.model.model_kwargs()
            )
    except ValueError:
        return None
    return sum(p.numel() for p in model.parameters())


def _host_device(cfg: Config) -> torch.device | None:
    """The CPU when the replicas will live in this machine's memory, else None: the GPU a rank
    gets is only known once its process group is up (check_fits serves that case there)."""
    if cfg.cluster.device == "cpu" or (
        cfg.cluster.device == "auto" and not torch.cuda.is_available()
    ):
        return torch.device("cpu")
    return None


def check_config(cfg: Config) -> None:
    """Refuse, before anything is built, a run whose replicas cannot fit in this machine's RAM
    (every torchrun process on it holds its own)."""
    device = _host_device(cfg)
    count = num_parameters(cfg) if device is not None else None
    if device is None or count is None:
        return
    processes = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    check_fits(count, cfg.replicas_per_process, available_bytes(device), processes)
