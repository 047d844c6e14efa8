"""The training loop: ``train()`` sets up the processes, builds the run, trains it to its plan and
writes the results; one code path for every algorithm and every layout."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from elastic_entropy.config import Config
from elastic_entropy.distributed import any_rank, as_peer_lost, init_distributed, teardown
from elastic_entropy.loggers import Progress
from elastic_entropy.threads import log_choice, set_intra_op_threads
from elastic_entropy.training.evaluation import eval_metrics
from elastic_entropy.training.metrics import SHOWN, base_metrics, log_quarantine, train_metrics
from elastic_entropy.training.preemption import EXIT_INTERRUPTED, Preempted, StopSignals
from elastic_entropy.training.results import (
    extend_finished,
    finish,
    format_table,
    logged_config,
    save_config,
)
from elastic_entropy.training.run import Run, build_run, prepare_run_dir


def train(cfg: Config, run_dir: Path, overrides: tuple[str, ...] = ()) -> dict[str, Any]:
    """Set up the processes, train, evaluate, write the run directory, tear down.

    The stop signals are caught from the start: one that arrives while the run is built is
    answered at the first outer step, like one during training; after the last step the
    results are finished.
    """
    with StopSignals(cfg.checkpoint.on_signal) as stop:
        info = init_distributed(cfg.cluster.backend, cfg.cluster.device, cfg.cluster.timeout_s)
        # before the first parallel op: the data, the model and every step run with it
        cluster = cfg.cluster
        set_intra_op_threads(cluster.threads, info.device, cluster.processes_per_node, False)
        lock = None
        try:
            run_dir, lock = prepare_run_dir(run_dir, info, cfg.checkpoint.resume)
            run = build_run(cfg, info, run_dir, overrides)
            extend_finished(run)
            try:
                result = finish(run, fit(run, stop))
            finally:
                run.metrics.close()
                run.close()
            if info.is_main:
                print(format_table(result), flush=True)
        except BaseException as error:
            teardown(info, is_clean=False)
            lost = as_peer_lost(error, info, cfg.cluster.timeout_s)
            if lost is not None:
                raise lost from error
            raise
        finally:
            if lock is not None:
                lock.release()  # the run directory is free for the next attempt
        teardown(info)
    return result


def fit(run: Run, stop: StopSignals) -> float:
    """Train to ``plan.total_steps`` minibatches per replica; returns the training time.

    Metrics: every ``logger.every_outer_steps`` outer steps a record of the replicas (losses,
    distances, coupling forces) and of the run (couplings, rates, traffic), cheap enough to keep
    often; every ``eval_every`` epochs the reference's (and replicas') evaluation joins it.
    """
    plan, counters = run.plan, run.counters
    resume(run)
    if run.info.is_main:  # after the last refusal: a refused run leaves train.log as it was
        cluster = run.cfg.cluster
        log_choice(cluster.threads, run.info.device, cluster.processes_per_node)
    progress = _progress_bar(run)
    shown: dict[str, float] = {}
    counters.start_clock()
    since = (counters.step, counters.wall_s_before)
    try:
        while counters.step < plan.total_steps:
            step = counters.step + 1
            is_train = step % (run.cfg.logger.every_outer_steps * plan.steps_per_exchange) == 0
            is_train = is_train or step == plan.total_steps
            if is_train:
                run.optimizer.request_diagnostics()  # measured in this step's outer step
            stats = train_step(run)
            if stats is None:  # an fp16 step skipped: it does not count (see loss_scale)
                continue
            counters.window.append(stats)
            counters.step = step
            log_quarantine(run)
            is_eval = step % plan.eval_interval == 0 or step == plan.total_steps
            if is_train or is_eval:
                record = log_record(run, since, is_train=is_train, is_eval=is_eval)
                since = (step, record["elapsed_s"])
                shown |= {label: record[key] for key, label in SHOWN.items() if key in record}
            progress.update(1, **shown)
            is_stopping = step % plan.steps_per_exchange == 0 and _should_stop(run, stop)
            if run.checkpointer.should_save(step, is_stopping=is_stopping):
                run.checkpointer.save(step)
            if is_stopping:
                progress.close()
                run.metrics.exit_code = stop.exit_code
                run.metrics.is_preempted = True
                why = f"stopped by {stop.describe()} at step {step}; checkpoint written"
                raise Preempted(why, stop.exit_code)
    except BaseException as error:
        if run.metrics.exit_code == 0:  # wandb marks the run failed (or interrupted)
            run.metrics.exit_code = EXIT_INTERRUPTED if isinstance(error, KeyboardInterrupt) else 1
        raise
    progress.close()
    return counters.wall_s


def resume(run: Run) -> None:
    """Continue from the newest checkpoint, or start the run directory of a fresh run."""
    found = run.checkpointer.restore()
    step = run.counters.step
    if found is None:
        if run.info.is_main:
            save_config(run)
        run.metrics.truncate_after(0)  # lines of an attempt that died before any checkpoint
    elif run.info.is_main:
        run.metrics.truncate_after(step)
        run.metrics.log({"event": "resume", "step": step, "checkpoint": str(found.path)})
        if run.checkpointer.change is not None:
            run.metrics.log(run.checkpointer.change.record(step))
        print(f"resumed from step {step} ({found.path})", flush=True)
    run.metrics.start(step, logged_config(run))


def _progress_bar(run: Run) -> Progress:
    enabled = run.cfg.progress and run.metrics.is_console
    desc = f"{run.cfg.algorithm.name} x{run.optimizer.num_replicas}"
    return Progress(run.plan.total_steps, run.counters.step, enabled, desc)


def train_step(run: Run) -> Tensor | None:
    """One minibatch for every replica of this process, then one optimizer step.

    Returns each replica's minibatch loss and accuracy, ``[2, replicas]``, left on the device so
    that nothing waits for them until a metrics record is written; None when ``precision=fp16``
    found a gradient that overflowed on some rank, and the whole job skipped the step.
    """
    _schedule_learning_rates(run)
    indices = [sampler.next() for sampler in run.samplers]
    passes = run.graphed if run.graphed is not None else run.passes
    stats = passes(indices)
    is_stepping = _unscaled(run)
    if is_stepping:
        run.optimizer.step()
    run.optimizer.zero_grad()
    return stats if is_stepping else None


def _unscaled(run: Run) -> bool:
    """Under fp16: the gradients unscaled, and whether every rank's are finite (one decision
    for the job, so that its replicas stay in step); True otherwise."""
    if run.loss_scale is None:
        return True
    params = [p for group in run.optimizer.param_groups for p in group["params"]]
    overflowed = run.loss_scale.unscale(params).reshape(1).to(run.info.device)
    is_finite = not any_rank(overflowed, run.info)
    run.loss_scale.update(is_finite)
    return is_finite


def _schedule_learning_rates(run: Run) -> None:
    """Set lr and inner_lr for the coming step: a function of the step alone, so that a resumed
    run takes the same rates."""
    schedule = run.cfg.lr_schedule
    if schedule.name == "constant" and schedule.warmup_epochs == 0.0:
        return
    plan = run.plan
    factor = schedule.factor(run.optimizer.num_steps, plan.total_steps, plan.steps_per_epoch_unit)
    lr = run.cfg.algorithm.lr
    has_inner_loop = hasattr(run.cfg.algorithm, "inner_lr")
    inner_lr = schedule.inner_lr_at(getattr(run.cfg.algorithm, "inner_lr", None), lr, factor)
    for group in run.optimizer.param_groups:
        group["lr"] = lr * factor
        if has_inner_loop and inner_lr is not None:
            group["inner_lr"] = inner_lr


def log_record(
    run: Run, since: tuple[int, float], *, is_train: bool, is_eval: bool
) -> dict[str, Any]:
    """One line of metrics.jsonl (and of TensorBoard, wandb): every rank takes part in the
    gathers and the reference's evaluation, rank 0 writes."""
    record = base_metrics(run, run.counters.wall_s, since)
    if is_train:
        record |= train_metrics(run)
    if is_eval:
        record |= eval_metrics(run)
    run.metrics.log(record)
    return record


def _should_stop(run: Run, stop: StopSignals) -> bool:
    """Any rank signalled? One tiny all-reduce, polled only at outer-step boundaries."""
    flag = torch.tensor([1.0 if stop.is_requested else 0.0], device=run.info.device)
    return any_rank(flag, run.info)
