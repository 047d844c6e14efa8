"""``report.md``: the table of runs, named by what tells them apart, and their plots."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

from elastic_entropy.report.plots import plot_comparison, plot_run
from elastic_entropy.report.runs import RunData


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
        **flatness_columns(results.get("flatness")),
    }


def flatness_columns(found: dict[str, Any] | None) -> dict[str, str]:
    """The reference's flatness (``flatness.enabled``): Hessian top eigenvalue and trace, the
    loss's rise at each relative radius, the local entropy f_gamma and the Gibbs mean loss."""
    if not found:
        return {}
    columns = {
        "top eig.": _fmt(found.get("top_eigenvalue"), ".4g"),
        "trace": _fmt(found.get("trace"), ".4g"),
        **{f"rise r={r['radius']:g}": _fmt(r.get("mean"), ".3g") for r in found.get("rises", [])},
    }
    entropy = found.get("local_entropy")
    if entropy:
        columns["f_gamma"] = _fmt(entropy.get("local_entropy"), ".4g")
        columns["Gibbs loss"] = _fmt(entropy.get("gibbs_loss"), ".4g")
    return columns


def markdown_table(rows: list[dict[str, str]]) -> str:
    """Every column any row has, in order of first appearance; a row without one shows "–"
    (a run measured without flatness beside one with it)."""
    header = list(dict.fromkeys(k for row in rows for k in row))
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += [
        "| " + " | ".join(row.get(k, "–").replace("|", "\\|") for k in header) + " |"
        for row in rows
    ]
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
