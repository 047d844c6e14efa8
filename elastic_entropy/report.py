"""Pictures of a run from its ``metrics.jsonl``, and ``elastic-entropy report`` to compare runs.

elastic-entropy report RUN_DIR                 # redraw RUN_DIR/plots/*.png, write RUN_DIR/report.md
elastic-entropy report RUN_A RUN_B             # both, side by side: report.md and report.png
elastic-entropy report multirun/DATE/TIME      # a Hydra sweep: every job in it
elastic-entropy report RUN_A RUN_B --out DIR   # where the comparison goes (default: the runs'
                                               # common folder)

A run draws its own plots when it finishes (``logger.plots``); this module needs no torch, so the
report command starts in a moment. Everything is read from the run directory: ``metrics.jsonl``,
and ``results.json``, ``config.yaml``, ``overrides.yaml`` when they are there.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# Figure, not pyplot: no global state and no GUI backend, savefig draws with Agg
from matplotlib.axes import Axes
from matplotlib.figure import Figure

PLOTS = ("curves.png", "couplings.png", "communication.png")
EXIT_USAGE = 2
_REPLICA = re.compile(r"^train_loss/replica_(\d+)$")


class ReportError(ValueError):
    """Bad input for the report: one line for the user."""


# ---------------------------------------------------------------------------------- reading
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


# ---------------------------------------------------------------------------------- drawing
def _axes(rows: int, cols: int, title: str) -> tuple[Figure, list[Axes]]:
    figure = Figure(figsize=(5.2 * cols, 3.6 * rows))
    figure.suptitle(title)
    # fixed margins: constrained or tight layout would draw every figure twice
    figure.subplots_adjust(
        left=0.3 / cols,
        right=0.98,
        bottom=0.5 / (3.6 * rows),
        top=1 - 0.55 / (3.6 * rows),
        wspace=0.28,
        hspace=0.4,
    )
    axes = figure.subplots(rows, cols, squeeze=False).flatten().tolist()
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.set_xlabel("epoch")
    return figure, axes


def _log_scale_if_positive(ax: Axes) -> None:
    ys = [y for line in ax.get_lines() for y in line.get_ydata() if math.isfinite(y)]
    if ys and min(ys) > 0 and max(ys) / min(ys) > 20:
        ax.set_yscale("log")


def _per_replica(ax: Axes, run: RunData, name: str, label: str, style: str = "-") -> None:
    """Each replica thin, their mean thick; replicas named in the legend while they are few."""
    is_named = style == "-" and run.num_replicas <= 8
    for a in range(run.num_replicas):
        xs, ys = run.series(f"{name}/replica_{a}")
        if xs:
            color = f"C{a % 10}"
            label_a = f"replica {a}" if is_named else None
            ax.plot(xs, ys, style, ms=3, lw=0.8, alpha=0.6, color=color, label=label_a)
    xs, ys = run.series(name)
    if xs:
        ax.plot(xs, ys, style, ms=4, lw=2.0, color="black", label=label)


def _finish(ax: Axes, title: str) -> None:
    ax.set_title(title, fontsize=10)
    if ax.get_lines():
        ax.legend(fontsize=7, ncols=2)
    else:
        ax.text(0.5, 0.5, "not logged", ha="center", va="center", transform=ax.transAxes)


def _save(figure: Figure, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=90)
    return path


def _reference(ax: Axes, run: RunData, metric: str) -> None:
    styles = {"test": ("-", "tab:red"), "val": ("-", "tab:purple"), "train": ("--", "tab:red")}
    for split, (style, color) in styles.items():
        xs, ys = run.series(f"reference/{split}_{metric}")
        if xs:
            ax.plot(
                xs, ys, style, marker="o", ms=3, lw=2.0, color=color, label=f"reference {split}"
            )


def plot_curves(run: RunData, path: Path) -> Path:
    figure, (train_loss, held_loss, train_acc, held_acc) = _axes(2, 2, f"{run.label}: curves")
    held = run.held_out
    _per_replica(train_loss, run, "train_loss", "mean of replicas")
    _log_scale_if_positive(train_loss)
    _finish(train_loss, "training loss (minibatches since the last record)")
    _per_replica(held_loss, run, f"{held}_loss", f"mean of replicas ({held})")
    _reference(held_loss, run, "loss")
    _finish(held_loss, f"loss: reference, and replicas on {held}")
    _per_replica(train_acc, run, "train_acc", "mean of replicas")
    _finish(train_acc, "training accuracy (minibatches)")
    _per_replica(held_acc, run, f"{held}_acc", f"mean of replicas ({held})")
    _reference(held_acc, run, "acc")
    _finish(held_acc, f"accuracy: reference, and replicas on {held}")
    return _save(figure, path)


def plot_couplings(run: RunData, path: Path) -> Path:
    figure, (schedules, distance, forces, entropy) = _axes(2, 2, f"{run.label}: couplings")
    for name, color in (("gamma", "tab:blue"), ("rho", "tab:orange")):
        xs, ys = run.series(name)
        if xs:
            schedules.plot(xs, ys, lw=2.0, color=color, label=f"{name}_t")
    _log_scale_if_positive(schedules)
    _finish(schedules, "coupling strengths (scoping)")
    _per_replica(distance, run, "distance", "mean")
    _per_replica(distance, run, "reference_distance", "to the reference |x - xbar|", "o")
    _finish(distance, "distance: to the consensus |z - r| (lines), to the reference (dots)")
    _per_replica(forces, run, "elastic_force", "elastic rho |x - r| (mean)")
    _per_replica(forces, run, "prox_force", "proximal gamma |y - x| (mean)", style="--")
    _finish(forces, "coupling forces, per replica")
    _per_replica(entropy, run, "entropy_grad", "mean")
    _finish(entropy, "local-entropy gradient estimate gamma |x - z|")
    return _save(figure, path)


def plot_communication(run: RunData, path: Path) -> Path:
    figure, (sent, waited, rate) = _axes(1, 3, f"{run.label}: communication")
    for key, label, style in (
        ("bytes_per_replica", "sent (all-reduces)", "-"),
        ("dp_bytes_per_replica", "data-parallel SGD would send", "--"),
    ):
        xs, ys = run.series(key)
        if xs:
            sent.plot(xs, [y / 1e6 for y in ys], style, lw=2.0, label=label)
    sent.set_ylabel("MB per replica")
    _finish(sent, "traffic per replica, so far")
    xs, ys = run.series("comm_wait_s")
    if xs:
        _, elapsed = run.series("elapsed_s")
        share = f" ({ys[-1] / elapsed[-1]:.1%})" if elapsed and elapsed[-1] > 0 else ""
        waited.plot(xs, ys, lw=2.0, label=f"waiting on all-reduces{share}")
        waited.plot(*run.series("elapsed_s"), "--", lw=1.0, color="gray", label="training time")
    waited.set_ylabel("seconds (mean over processes)")
    _finish(waited, "time spent waiting on communication")
    xs, ys = run.series("samples_per_s")
    if xs:
        rate.plot(xs, ys, lw=1.0, label="all replicas")
    rate.set_ylabel("samples / s")
    _finish(rate, "throughput")
    return _save(figure, path)


def plot_run(run_dir: Path | RunData) -> list[Path]:
    """Redraw ``RUN_DIR/plots/{curves,couplings,communication}.png`` from ``metrics.jsonl``."""
    run = run_dir if isinstance(run_dir, RunData) else RunData.read(Path(run_dir))
    folder = run.path / "plots"
    return [
        plot_curves(run, folder / PLOTS[0]),
        plot_couplings(run, folder / PLOTS[1]),
        plot_communication(run, folder / PLOTS[2]),
    ]


def plot_comparison(runs: list[RunData], path: Path) -> Path:
    figure, axes = _axes(2, 3, "runs side by side")
    panels = (
        ("reference/test_acc", "reference test accuracy", "-o"),
        ("train_loss", "training loss (mean of replicas)", "-"),
        ("distance", "distance to consensus |z - r| (mean)", "-"),
        ("rho", "rho_t (solid) and gamma_t (dashed)", "-"),
        ("bytes_per_replica", "MB sent per replica", "-"),
        ("samples_per_s", "samples / s", "-"),
    )
    for ax, (key, title, style) in zip(axes, panels):
        for index, run in enumerate(runs):
            color = f"C{index % 10}"
            xs, ys = run.series(key)
            if key == "bytes_per_replica":
                ys = [y / 1e6 for y in ys]
            if xs:
                ax.plot(xs, ys, style, ms=3, lw=1.5, color=color, label=run.label)
            if key == "rho":
                gx, gy = run.series("gamma")
                if gx:
                    ax.plot(gx, gy, "--", lw=1.5, color=color)
        if key in ("train_loss", "rho"):
            _log_scale_if_positive(ax)
        ax.set_title(title, fontsize=10)
    # one legend for all panels, under them: per-panel legends would hide the curves
    handles = [h for ax in axes for h in ax.get_lines() if not h.get_label().startswith("_")]
    by_label = {h.get_label(): h for h in handles}
    rows = math.ceil(len(by_label) / 3)
    figure.legend(list(by_label.values()), list(by_label), loc="lower center", ncols=3, fontsize=8)
    figure.subplots_adjust(bottom=(0.5 + 0.22 * rows) / 7.2)
    return _save(figure, path)


# ---------------------------------------------------------------------------------- the table
def _fmt(value: float | None, spec: str) -> str:
    return "–" if value is None or not math.isfinite(value) else format(value, spec)


def summary_row(run: RunData) -> dict[str, str]:
    """One row of the table: results.json where the run finished, its last records otherwise."""
    results = run.results or {}
    algorithm = results.get("algorithm") or ((run.config or {}).get("algorithm") or {}).get("name")
    accs = run.series("reference/test_acc")[1]
    comm = results.get("communication") or {}
    sent = comm.get("bytes_per_replica", run.last("bytes_per_replica"))
    dp = comm.get("dp_sgd_bytes_per_replica", run.last("dp_bytes_per_replica"))
    final_acc = (results.get("reference") or {}).get("test_acc", accs[-1] if accs else None)
    return {
        "run": run.label + ("" if run.results else " (unfinished)"),
        "algorithm": str(algorithm or "?"),
        "replicas": str(results.get("num_replicas") or run.num_replicas),
        "steps": str(int(run.records[-1]["step"])),
        "epochs": _fmt(run.records[-1].get("epoch"), ".1f"),
        "ref. test acc": _fmt(final_acc, ".4f"),
        "best ref. test acc": _fmt(max(accs) if accs else None, ".4f"),
        "train loss": _fmt(run.last("train_loss"), ".4g"),
        "distance": _fmt(run.last("distance"), ".3g"),
        "MB / replica": _fmt(sent / 1e6 if sent is not None else None, ".2f"),
        "vs DP-SGD": _fmt(sent / dp if sent is not None and dp else None, ".3f"),
        "comm wait s": _fmt(run.last("comm_wait_s"), ".2f"),
        "wall s": _fmt(results.get("wall_s", run.last("elapsed_s")), ".1f"),
    }


def markdown_table(rows: list[dict[str, str]]) -> str:
    header = list(rows[0])
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row[k].replace("|", "\\|") for k in header) + " |" for row in rows]
    return "\n".join(lines)


def _canonical(override: str) -> str:
    """``key=value`` with the value parsed, so that a sweep's ``progress=False`` and a single
    run's ``progress=false`` (Hydra's sweeper rewrites them) count as the same override."""
    import yaml

    key, _, value = override.partition("=")
    try:
        return f"{key}={json.dumps(yaml.safe_load(value), sort_keys=True)}"
    except (yaml.YAMLError, TypeError, ValueError):
        return override


def _label(runs: list[RunData]) -> None:
    """Name runs by the overrides that tell them apart (a sweep's), else by their folder."""
    if len(runs) > 1:
        common = set.intersection(*({_canonical(o) for o in r.overrides} for r in runs))
        for run in runs:
            own = [o for o in run.overrides if _canonical(o) not in common]
            run.label = " ".join(own) or run.path.name
    labels = [run.label for run in runs]
    for run in runs:
        if labels.count(run.label) > 1:
            run.label = f"{run.label} ({run.path})"


def write_report(runs: list[RunData], out: Path) -> Path:
    """Per-run plots redrawn, the comparison plot (several runs), ``out/report.md``."""
    _label(runs)
    out.mkdir(parents=True, exist_ok=True)
    lines = ["# Runs", "", markdown_table([summary_row(run) for run in runs]), ""]
    if len(runs) > 1:
        compared = plot_comparison(runs, out / "report.png")
        lines += [f"![runs side by side]({compared.name})", ""]
    for run in runs:
        lines += [f"## {run.label}", "", f"`{run.path}`", ""]
        for plot in plot_run(run):
            lines.append(f"![{plot.stem}]({Path(os.path.relpath(plot, out)).as_posix()})")
        lines.append("")
    report = out / "report.md"
    report.write_text("\n".join(lines), encoding="utf-8")
    return report


# ---------------------------------------------------------------------------------- the command
class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        # one line, like the app's own errors, not argparse's usage block
        print(f"elastic-entropy report: error: {message}", file=sys.stderr)
        sys.exit(EXIT_USAGE)


def main(argv: Sequence[str] | None = None) -> int:
    parser = _Parser(
        prog="elastic-entropy report",
        description="Redraw a run's plots from its metrics.jsonl and compare runs side by side: "
        "PNGs in each RUN_DIR/plots, report.md (and report.png for several runs) in --out.",
    )
    parser.add_argument("runs", nargs="+", metavar="RUN_DIR", help="run or Hydra sweep folder")
    parser.add_argument(
        "--out", type=Path, help="where report.md goes (default: the runs' common folder)"
    )
    args = parser.parse_args(argv)
    try:
        paths = find_runs(args.runs)
        runs = [RunData.read(path) for path in paths]
        out = args.out or Path(os.path.commonpath([p.resolve() for p in paths]))
        report = write_report(runs, out)
    except (ReportError, OSError) as error:
        message = (
            str(error) if isinstance(error, ReportError) else f"{error.strerror}: {error.filename}"
        )
        print(f"elastic-entropy report: error: {message}", file=sys.stderr)
        return EXIT_USAGE
    print(f"{len(runs)} run(s); report: {report}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
