"""A run directory, read once: ``metrics.jsonl``, and ``results.json``, ``config.yaml``,
``overrides.yaml`` when they are there."""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

_REPLICA = re.compile(r"^train_loss/replica_(\d+)$")


class ReportError(ValueError):
    """Bad input for the report: one line for the user."""


def _number(value: Any) -> Any:
    # metrics.jsonl writes inf and nan as strings (JSON has no literals for them)
    if isinstance(value, str) and value in ("nan", "inf", "-inf"):
        return float(value)
    return value


def load_metrics(run_dir: Path) -> list[dict[str, Any]]:
    """The metric records of ``run_dir/metrics.jsonl`` (events left out), in order."""
    path = run_dir / "metrics.jsonl"
    if not run_dir.is_dir():
        raise ReportError(f"no such run directory: {run_dir}")
    if not path.is_file():
        raise ReportError(f"{run_dir} holds no metrics.jsonl; is it a run directory?")
    records = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue  # a line cut off by a kill
        if isinstance(record, dict) and "event" not in record and "step" in record:
            records.append({k: _number(v) for k, v in record.items()})
    if not records:
        raise ReportError(f"{path} has no metrics yet (the run logged nothing)")
    return records


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _read_yaml(path: Path) -> Any:
    import yaml

    try:
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError):
        return None


@dataclass
class RunData:
    """One run directory, read once."""

    path: Path
    records: list[dict[str, Any]]
    results: dict[str, Any] | None = None
    config: dict[str, Any] | None = None
    overrides: list[str] = field(default_factory=list)
    label: str = ""

    @classmethod
    def read(cls, path: Path) -> RunData:
        config = _read_yaml(path / "config.yaml")
        overrides = _read_yaml(path / "overrides.yaml")
        return cls(
            path=path,
            records=load_metrics(path),
            results=_read_json(path / "results.json"),
            config=config if isinstance(config, dict) else None,
            overrides=[
                str(o) for o in overrides or [] if not str(o).startswith(("hydra.", "hydra/"))
            ],
            label=path.name,
        )

    def series(self, key: str) -> tuple[list[float], list[float]]:
        """(epochs, values) of the records that hold ``key``."""
        xs, ys = [], []
        for record in self.records:
            value = record.get(key)
            if isinstance(value, (int, float)):
                xs.append(float(record["epoch"]))
                ys.append(float(value))
        return xs, ys

    def has(self, key: str) -> bool:
        return any(key in record for record in self.records)

    @property
    def num_replicas(self) -> int:
        found = {int(m.group(1)) for r in self.records for k in r if (m := _REPLICA.match(k))}
        return max(found) + 1 if found else 0

    @property
    def held_out(self) -> str:
        """The split the replicas were evaluated on: val when the run had one, else test."""
        return "val" if self.has("val_acc") else "test"

    def last(self, key: str) -> float | None:
        for record in reversed(self.records):
            if isinstance(record.get(key), (int, float)):
                return float(record[key])
        return None


def find_runs(paths: Sequence[str]) -> list[Path]:
    """Run directories named on the command line; a Hydra sweep directory stands for its jobs."""
    runs: list[Path] = []
    for name in paths:
        path = Path(name)
        if not path.is_dir():
            raise ReportError(f"no such run directory: {name}")
        if (path / "metrics.jsonl").is_file():
            runs.append(path)
            continue
        jobs = sorted(
            (d for d in path.iterdir() if (d / "metrics.jsonl").is_file()),
            key=lambda d: (not d.name.isdigit(), int(d.name) if d.name.isdigit() else 0, d.name),
        )
        if not jobs:
            raise ReportError(f"{name} holds no metrics.jsonl (nor do its folders); is it a run?")
        runs.extend(jobs)
    return list(dict.fromkeys(runs))
