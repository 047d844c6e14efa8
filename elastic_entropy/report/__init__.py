"""Pictures of a run from its ``metrics.jsonl``, and ``elastic-entropy report`` to compare runs.

elastic-entropy report RUN_DIR                 # redraw RUN_DIR/plots/*.png, write RUN_DIR/report.md
elastic-entropy report RUN_A RUN_B             # both, side by side: report.md and report.png
elastic-entropy report multirun/DATE/TIME      # a Hydra sweep: every job in it
elastic-entropy report RUN_A RUN_B --out DIR   # where the comparison goes (default: the runs'
                                               # common folder)

A run draws its own plots when it finishes (``logger.plots``); this package needs no torch, so
the report command starts in a moment. Everything is read from the run directory: ``metrics.jsonl``,
and ``results.json``, ``config.yaml``, ``overrides.yaml`` when they are there.

``runs`` reads a run directory, ``plots`` draws, ``table`` writes ``report.md``; this module is the
command.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from elastic_entropy.report.plots import (
    PLOTS,
    plot_communication,
    plot_comparison,
    plot_couplings,
    plot_curves,
    plot_run,
)
from elastic_entropy.report.runs import ReportError, RunData, find_runs, load_metrics
from elastic_entropy.report.table import markdown_table, summary_row, write_report
from elastic_entropy.training.preemption import EXIT_USAGE

__all__ = [
    "EXIT_USAGE",
    "PLOTS",
    "ReportError",
    "RunData",
    "find_runs",
    "load_metrics",
    "main",
    "markdown_table",
    "plot_communication",
    "plot_comparison",
    "plot_couplings",
    "plot_curves",
    "plot_run",
    "summary_row",
    "write_report",
]


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
