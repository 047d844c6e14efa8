"""The pictures: a run's ``plots/*.png`` and the comparison of several runs."""

from __future__ import annotations

import math
from pathlib import Path

# Figure, not pyplot: no global state and no GUI backend, savefig draws with Agg
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from elastic_entropy.report.runs import RunData

PLOTS = ("curves.png", "couplings.png", "communication.png")


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
