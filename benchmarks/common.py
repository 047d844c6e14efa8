"""Shared helpers for the benchmarks: timing, result files, the command that made them."""

from __future__ import annotations

import json
import platform
import shlex
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

RESULTS = Path(__file__).resolve().parent / "results"


def median_seconds(fn: Callable[[], object], *, repeats: int, warmup: int = 2) -> float:
    """Median wall time of ``fn`` over ``repeats`` runs after ``warmup`` (synchronising CUDA)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def machine() -> dict[str, Any]:
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cpu": platform.processor() or platform.machine(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }


def write_results(name: str, figures: dict[str, Any], table: str, out: Path | None = None) -> Path:
    """``results/NAME.json`` (every figure) and ``results/NAME.md`` (the table and the command)."""
    folder = out or RESULTS
    folder.mkdir(parents=True, exist_ok=True)
    module = f"benchmarks.{Path(sys.argv[0]).stem}"
    command = " ".join(["python", "-m", module, *(shlex.quote(a) for a in sys.argv[1:])])
    payload = {"benchmark": name, "command": command, "machine": machine(), **figures}
    (folder / f"{name}.json").write_text(json.dumps(payload, indent=2) + "\n")
    (folder / f"{name}.md").write_text(f"# {name}\n\n`{command}`\n\n```\n{table}\n```\n")
    return folder / f"{name}.json"
