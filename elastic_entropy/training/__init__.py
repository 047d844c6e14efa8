"""Training: one room per responsibility, data flowing one way through them.

- ``run``: the run and its plan, built once from the config and immutable afterwards, and the
  loop's counters (the one small object that changes as it trains).
- ``algorithms``: the registry from ``algorithm.name`` to its optimizer and needs (seed, DDP
  wrapping), and the couplings' scoping.
- ``loop``: ``train()`` and the loop itself, a table of contents of the rooms below.
- ``passes``: the replicas' forward and backward passes, one after another; ``graphs``: the
  same passes from one CUDA graph, checked against the plain ones.
- ``evaluation``: the reference (BatchNorm statistics recomputed) and the replicas on held-out
  data.
- ``metrics``: what a metrics record holds, gathered to rank 0 (the sinks are in
  ``elastic_entropy.loggers``).
- ``checkpointer``: the components that survive a restart, when to save them, what to keep,
  and how a run resumes (file I/O in ``elastic_entropy.checkpoint``).
- ``preemption``: the stop signals and the exit code of every way a run ends.
- ``results``: ``results.json``, ``reference.pt``, the plots and the final table.

Imports are lazy, so that ``elastic_entropy.training.preemption`` (torch-free) can be used by
the command line before torch is imported.
"""

from __future__ import annotations

from typing import Any

_EXPORTS = {
    "train": "loop",
    "train_step": "loop",
    "fit": "loop",
    "Run": "run",
    "Plan": "run",
    "build_run": "run",
    "make_plan": "run",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    raise AttributeError(name)
