"""What a finished run leaves: ``results.json``, ``reference.pt``, the plots, the table printed at
the end; and ``config.yaml`` / ``overrides.yaml`` of a fresh run."""

from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf
from torch import Tensor

from elastic_entropy import checkpoint, flatness
from elastic_entropy.distributed import barrier, broadcast_object
from elastic_entropy.training.checkpointer import plain_config
from elastic_entropy.training.evaluation import final_evaluation
from elastic_entropy.training.metrics import dp_bytes
from elastic_entropy.training.run import Run

log = logging.getLogger(__name__)


def extend_finished(run: Run) -> None:
    """A finished run rerun with a larger budget goes on from its last checkpoint: its
    ``results.json`` and ``reference.pt`` are kept as ``results.step-N.json`` and
    ``reference.step-N.pt`` (N: the steps it had), the new ones written at the new end. A budget
    that is not larger is refused in one line."""
    path = run.run_dir / "results.json"
    done = None
    if run.info.is_main and path.exists():
        try:
            done = int(json.loads(path.read_text())["steps_per_replica"])
        except (OSError, ValueError, KeyError, TypeError):
            done = -1  # unreadable: it cannot say how far it went
    done = broadcast_object(done, run.info)
    if done is None:
        return
    if done < 0 or run.plan.total_steps <= done or not run.cfg.checkpoint.resume:
        had = f"{done} steps per replica" if done >= 0 else "an unreadable results.json"
        raise ValueError(
            f"run directory {run.run_dir} already holds a finished run ({had}); to train it "
            "further rerun with a larger max_steps or epochs, or choose another hydra.run.dir"
        )
    if run.info.is_main:
        for name, kept in (
            ("results.json", f"results.step-{done}.json"),
            ("reference.pt", f"reference.step-{done}.pt"),
        ):
            if (run.run_dir / name).exists():
                (run.run_dir / name).replace(run.run_dir / kept)
        log.warning("extending the finished run of %d steps to %d", done, run.plan.total_steps)
    barrier(run.info)


def save_config(run: Run) -> None:
    """``config.yaml`` (resolved, with the layout) and ``overrides.yaml`` of a fresh run."""
    resolved = OmegaConf.create(plain_config(run.cfg))
    resolved.replicas_per_process = run.replicas_per_process
    resolved.processes = run.info.world_size
    OmegaConf.save(resolved, run.run_dir / "config.yaml")
    OmegaConf.save(OmegaConf.create(list(run.overrides)), run.run_dir / "overrides.yaml")


def logged_config(run: Run) -> dict[str, Any]:
    """The config as the sinks (wandb) record it, with the layout."""
    return {
        **plain_config(run.cfg),
        "processes": run.info.world_size,
        "replicas_per_process": run.replicas_per_process,
        "num_replicas": run.optimizer.num_replicas,
    }


def finish(run: Run, wall_s: float) -> dict[str, Any]:
    """Final evaluation of the reference and of every replica after ``wall_s`` seconds of
    training; results written on rank 0."""
    reference, replicas = final_evaluation(run)
    plan, stats = run.plan, run.comm.stats
    result = {
        "algorithm": run.cfg.algorithm.name,
        "model": run.cfg.model.name,
        "data": run.cfg.data.name,
        "num_replicas": run.optimizer.num_replicas,
        "processes": run.info.world_size,
        "replicas_per_process": run.replicas_per_process,
        "steps_per_replica": plan.total_steps,
        "epochs": plan.total_steps / plan.steps_per_epoch,
        "wall_s": wall_s,
        "cuda_graphs": run.graphed is not None and run.graphed.is_active,
        "fused_step": run.optimizer.is_fused,  # algorithm.fused, as it ran (False: eager)
        "reference": {
            "test_acc": reference["test"]["acc"],
            "test_loss": reference["test"]["loss"],
            "train_acc": reference["train"]["acc"],
            "train_loss": reference["train"]["loss"],
            **({"val_acc": reference["val"]["acc"]} if "val" in reference else {}),
            **(_per_token(reference) if run.data.label_shape else {}),
        },
        "replicas": [{"replica": a, "test_acc": acc} for a, acc in replicas],
        "communication": {
            "collectives": stats.num_collectives,
            "bytes_per_replica": stats.bytes_per_replica,
            "dp_sgd_bytes_per_replica": dp_bytes(run, plan.total_steps),
        },
        "run_dir": str(run.run_dir),
    }
    if run.info.is_main:
        torch.save(run.reference_model.state_dict(), run.run_dir / "reference.pt")
        if run.cfg.flatness.enabled:
            result["flatness"] = measure_flatness(run)
        _write_json(run.run_dir / "results.json", result)
        run.metrics.summary(_summary(result))
        if run.cfg.logger.plots:
            _plot(run.run_dir)
    return result


def _per_token(reference: dict[str, dict[str, float]]) -> dict[str, float]:
    """A language model's mean next-token loss as perplexity and bits per character."""
    scores = {}
    for split, result in reference.items():
        scores[f"{split}_perplexity"] = math.exp(min(result["loss"], 700.0))
        scores[f"{split}_bits_per_char"] = result["loss"] / math.log(2.0)
    return scores


def _training_sample(run: Run) -> list[tuple[Tensor, Tensor]]:
    """The first ``flatness.num_samples`` training points, in chunks, on the reference's device."""
    cfg, data = run.cfg.flatness, run.data
    device = next(run.reference_model.parameters()).device
    if hasattr(data, "batches"):  # either input path: tensors, or a DataLoader's
        chunks = data.batches("train", cfg.batch_size, cfg.num_samples)
    else:
        chunks = flatness.fixed_batches(data.x_train, data.y_train, cfg.num_samples, cfg.batch_size)
    return [(x.to(device), y.to(device)) for x, y in chunks]


def measure_flatness(run: Run) -> dict[str, Any]:
    """:func:`elastic_entropy.flatness.measure` of the reference just evaluated (its BatchNorm
    statistics fresh from the dry feed), on rank 0: the reference is the same on every rank.
    Its cost is counted apart from the training time, as ``flatness.wall_s``."""
    cfg = run.cfg.flatness
    started = time.perf_counter()
    found = flatness.measure(
        run.reference_model,
        _training_sample(run),
        iterations=cfg.iterations,
        tolerance=cfg.tolerance,
        probes=cfg.probes,
        radii=list(cfg.radii),
        draws=cfg.draws,
        gamma=cfg.gamma,
        noise=cfg.noise,
        num_inner_steps=cfg.num_inner_steps,
        num_nodes=cfg.num_nodes,
        seed=cfg.seed,
    )
    found["wall_s"] = time.perf_counter() - started
    entropy, kept = found.get("local_entropy"), cfg.num_inner_steps - cfg.num_inner_steps // 2
    if entropy and entropy["relaxation_steps"] * 3 > kept:
        # the averaged half of each chain spans fewer than three relaxation times of its slowest
        # direction: the Gibbs averages still remember the start
        log.warning(
            "flatness: the local entropy's chains relax in about %.0f steps, more than a third of "
            "the %d they average; raise flatness.num_inner_steps or flatness.gamma",
            entropy["relaxation_steps"],
            kept,
        )
    log.info(
        "flatness of the reference: top eigenvalue %.4g, trace %.4g, in %.1f s",
        found["top_eigenvalue"],
        found["trace"],
        found["wall_s"],
    )
    return found


def _summary(result: dict[str, Any]) -> dict[str, float]:
    ref, comm = result["reference"], result["communication"]
    return {
        **_flatness_summary(result.get("flatness")),
        **{f"final/reference_{k}": v for k, v in ref.items()},
        **{f"final/replica_{r['replica']}_test_acc": r["test_acc"] for r in result["replicas"]},
        "final/bytes_per_replica": comm["bytes_per_replica"],
        "final/dp_sgd_bytes_per_replica": comm["dp_sgd_bytes_per_replica"],
        "final/wall_s": result["wall_s"],
    }


def _flatness_lines(found: dict[str, Any] | None) -> list[str]:
    if found is None:
        return []
    rises = ", ".join(f"{r['radius']:g}: {r['mean']:.3g}" for r in found["rises"])
    lines = [
        "",
        f"  flatness of the reference on {found['num_samples']} training samples: top Hessian "
        f"eigenvalue {found['top_eigenvalue']:.4g}, trace {found['trace']:.4g} "
        f"± {found['trace_stderr']:.2g}",
        f"  loss rise at relative radius {rises}",
    ]
    if "local_entropy" in found:
        entropy = found["local_entropy"]
        lines.append(
            f"  local entropy (gamma {entropy['gamma']:g}, noise {entropy['noise']:g}): "
            f"f_gamma {entropy['local_entropy']:.4g} ± {entropy['local_entropy_stderr']:.2g} "
            f"(f {entropy['loss']:.4g}, Gibbs mean loss {entropy['gibbs_loss']:.4g}, "
            f"|grad f_gamma| {entropy['grad_norm']:.3g})"
        )
    return lines


def _flatness_summary(found: dict[str, Any] | None) -> dict[str, float]:
    if found is None:
        return {}
    summary = {
        "final/flatness_top_eigenvalue": found["top_eigenvalue"],
        "final/flatness_trace": found["trace"],
        **{f"final/flatness_rise_{r['radius']:g}": r["mean"] for r in found["rises"]},
    }
    if "local_entropy" in found:
        summary["final/flatness_local_entropy"] = found["local_entropy"]["local_entropy"]
    return summary


def _plot(run_dir: Path) -> None:
    """PNGs from metrics.jsonl; a finished run is never failed by its pictures."""
    from elastic_entropy.report import plot_run

    try:
        plot_run(run_dir)
    except Exception as error:
        log.warning(
            "plots were not drawn (%s); `elastic-entropy report %s` retries", error, run_dir
        )


def _write_json(path: Path, data: Any) -> None:
    # the checkpoints' atomic write: all of it or nothing, and a full disk in one line
    checkpoint.write_bytes_atomic(path, (json.dumps(data, indent=2) + "\n").encode())


def _mb(n: float) -> str:
    return f"{n / 1e6:.2f} MB"


def format_table(result: dict[str, Any]) -> str:
    ref, comm = result["reference"], result["communication"]
    ratio = comm["bytes_per_replica"] / max(comm["dp_sgd_bytes_per_replica"], 1)
    lines = [
        f"{result['algorithm']} on {result['data']} ({result['model']}): "
        f"{result['num_replicas']} replicas = {result['processes']} process(es) x "
        f"{result['replicas_per_process']}, {result['steps_per_replica']} steps per replica "
        f"({result['epochs']:.1f} epochs) in {result['wall_s']:.1f} s",
        "",
        f"  {'model':<14}{'test acc':>10}",
        f"  {'reference':<14}{ref['test_acc']:>10.4f}   (train acc {ref['train_acc']:.4f})",
    ]
    if "test_perplexity" in ref:  # a language model: accuracy is of the next token
        lines[-1] += (
            f"   test perplexity {ref['test_perplexity']:.4f}, "
            f"{ref['test_bits_per_char']:.4f} bits per character"
        )
    lines += [
        f"  {'replica ' + str(r['replica']):<14}{r['test_acc']:>10.4f}" for r in result["replicas"]
    ]
    lines += _flatness_lines(result.get("flatness"))
    lines += [
        "",
        f"  communicated per replica: {_mb(comm['bytes_per_replica'])} in {comm['collectives']} "
        f"all-reduces; data-parallel SGD would send {_mb(comm['dp_sgd_bytes_per_replica'])} "
        f"(ratio {ratio:.3f})",
        f"  run directory: {result['run_dir']}",
    ]
    return "\n".join(lines)
