"""Where metrics go: ``metrics.jsonl`` (always), a console progress bar, TensorBoard, wandb.

Only rank 0 writes; other ranks get loggers that do nothing. :class:`RunLogger` puts every sink of a
run behind one ``log(record)``; a record is a flat dict with a ``step`` (minibatches per replica),
or an event (``{"event": "resume", ...}``) that only the JSONL file keeps.

wandb never stops a run: without credentials it runs offline (or as ``WANDB_MODE`` says), and if
it cannot start at all the run goes on without it. Asking for ``online`` without credentials is the
one mistake refused, before anything starts (``sink_checks.check_wandb``, called by the config).
"""

from __future__ import annotations

import json
import logging
import math
import os
import secrets
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from tqdm import tqdm

# the checks live in a leaf module that the config imports too; re-exported here, where they were
from elastic_entropy.sink_checks import check_wandb as check_wandb
from elastic_entropy.sink_checks import resolve_wandb_mode
from elastic_entropy.sink_checks import wandb_credentials as wandb_credentials

if TYPE_CHECKING:
    from elastic_entropy.config import LoggerConfig, WandbConfig

log = logging.getLogger(__name__)


def _jsonable(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)  # JSON has no inf/nan literals
    return value


def _scalars(record: dict[str, Any]) -> dict[str, float]:
    """The numbers of a record: what TensorBoard and wandb can plot."""
    return {
        k: float(v)
        for k, v in record.items()
        if isinstance(v, (int, float)) and not isinstance(v, bool)
    }


class MetricsLogger:
    """Appends one JSON object per line to ``RUN_DIR/metrics.jsonl``."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self._file = path.open("a", encoding="utf-8") if path is not None else None

    def log(self, record: dict[str, Any]) -> None:
        if self._file is None:
            return
        self._file.write(json.dumps({k: _jsonable(v) for k, v in record.items()}) + "\n")
        self._file.flush()

    def truncate_after(self, step: int) -> None:
        """Drop records past ``step`` (logged by an attempt that died before its checkpoint)."""
        if self.path is None or self._file is None:
            return
        self._file.close()
        kept = []
        for line in self.path.read_text(encoding="utf-8").splitlines():
            try:
                record = json.loads(line)
            except ValueError:
                continue  # a line cut off by a kill
            if record.get("step", 0) <= step:
                kept.append(line)
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text("".join(line + "\n" for line in kept), encoding="utf-8")
        os.replace(tmp, self.path)
        self._file = self.path.open("a", encoding="utf-8")

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


class PipeSafeStream:
    """``sys.stdout`` / ``sys.stderr`` that outlive their reader (``elastic-entropy ... | head``).

    Python ignores SIGPIPE, so a write into a pipe whose reader has gone raises BrokenPipeError,
    from the progress bar, a log line or the final table, wherever it happens to be: it would
    end a run that has nothing wrong with it. On the first one the stream's descriptor is pointed
    at os.devnull (the pattern of Python's signal docs), and the run goes on and writes its run
    directory; what the reader no longer wanted is dropped.
    """

    def __init__(self, stream: Any) -> None:
        self._stream = stream

    def write(self, text: str) -> int:
        try:
            return self._stream.write(text)
        except BrokenPipeError:
            self._to_devnull()
            return len(text)

    def flush(self) -> None:
        try:
            self._stream.flush()
        except BrokenPipeError:
            self._to_devnull()

    def _to_devnull(self) -> None:
        try:
            fd = self._stream.fileno()
        except (OSError, ValueError):  # not a file: write to devnull from now on
            self._stream = open(os.devnull, "w", encoding="utf-8")
            return
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, fd)  # C-level writes (torch's warnings) go there too
        os.close(devnull)
        try:  # what is still buffered goes to devnull now
            self._stream.flush()
        except OSError:
            pass

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


def guard_broken_pipes() -> None:
    """Make this process's stdout and stderr :class:`PipeSafeStream` (once)."""
    for name in ("stdout", "stderr"):
        stream = getattr(sys, name)
        if stream is not None and not isinstance(stream, PipeSafeStream):
            setattr(sys, name, PipeSafeStream(stream))


class Progress:
    """A tqdm bar over minibatches on rank 0 (stderr), showing the key numbers."""

    def __init__(self, total: int, initial: int, enabled: bool, desc: str) -> None:
        self._bar = (
            tqdm(
                total=total,
                initial=initial,
                desc=desc,
                unit="step",
                file=sys.stderr,
                dynamic_ncols=True,
                mininterval=0.5,
            )
            if enabled
            else None
        )

    def update(self, n: int = 1, **postfix: float) -> None:
        if self._bar is None:
            return
        if postfix:
            self._bar.set_postfix({k: f"{v:.4g}" for k, v in postfix.items()}, refresh=False)
        self._bar.update(n)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()


def _sweep() -> tuple[str | None, str | None]:
    """(sweep directory, this job's overrides) under ``elastic-entropy -m``, else (None, None):
    the wandb group and run name that keep a sweep's runs together."""
    try:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        if not HydraConfig.initialized():
            return None, None
        hydra = HydraConfig.get()
        if hydra.mode != RunMode.MULTIRUN:
            return None, None
        return str(hydra.sweep.dir), hydra.job.override_dirname or f"job-{hydra.job.num}"
    except Exception:  # outside a Hydra app (tests, notebooks): no sweep
        return None, None


# ---------------------------------------------------------------------------------- sinks
class _Sink(Protocol):
    def log(self, scalars: dict[str, float], step: int) -> None: ...

    def close(self, exit_code: int, is_preempted: bool) -> None: ...


class TensorBoardSink:
    """Scalars under ``RUN_DIR/tensorboard``, one tag per record key, x axis the step."""

    def __init__(self, log_dir: Path, purge_step: int) -> None:
        from torch.utils.tensorboard import SummaryWriter

        # a resumed run hides what an interrupted attempt wrote past its checkpoint
        self._writer = SummaryWriter(str(log_dir), purge_step=purge_step)

    def log(self, scalars: dict[str, float], step: int) -> None:
        for key, value in scalars.items():
            if key != "step":
                self._writer.add_scalar(key, value, global_step=step)

    def close(self, exit_code: int, is_preempted: bool) -> None:
        self._writer.close()


class WandbSink:
    """One wandb run per job, from rank 0; ``step`` is every chart's x axis."""

    def __init__(self, run: Any) -> None:
        self.run = run

    @classmethod
    def open(
        cls,
        cfg: WandbConfig,
        mode: str,
        run_dir: Path,
        run_id: str,
        config: dict[str, Any],
    ) -> WandbSink | None:
        group, job = _sweep()
        try:
            import wandb

            run = wandb.init(
                project=cfg.project or os.environ.get("WANDB_PROJECT") or "elastic-entropy",
                entity=cfg.entity,
                group=cfg.group or os.environ.get("WANDB_RUN_GROUP") or group,
                name=cfg.name or os.environ.get("WANDB_NAME") or job,
                tags=list(cfg.tags) or None,
                id=run_id,
                resume="allow",  # a resumed or requeued job continues its run
                dir=os.environ.get("WANDB_DIR") or str(run_dir),
                mode=mode,
                config=config,
                # our own output (the results table) stays ours; no history sparklines at exit
                settings=wandb.Settings(console="off", quiet=True),
            )
            # a custom x axis: a resumed run logs steps again after its checkpoint, which
            # wandb's own monotonic _step would drop
            run.define_metric("step")
            run.define_metric("*", step_metric="step")
        except Exception as error:  # no network, a bad key, a wandb bug: go on without it
            log.warning("wandb did not start (%s); the run goes on without it", error)
            return None
        return cls(run)

    def log(self, scalars: dict[str, float], step: int) -> None:
        self.run.log(scalars)

    def summary(self, values: dict[str, float]) -> None:
        self.run.summary.update(values)

    def close(self, exit_code: int, is_preempted: bool) -> None:
        if is_preempted:  # shown as preempted, not crashed: a requeued job continues it
            self.run.mark_preempting()
        self.run.finish(exit_code=exit_code)


def new_wandb_run_id() -> str:
    """wandb's own format (8 lowercase letters and digits), made without importing wandb."""
    alphabet = "abcdefghijklmnopqrstuvwxyz0123456789"
    return "".join(secrets.choice(alphabet) for _ in range(8))


class RunLogger:
    """Every sink of a run behind one :meth:`log`. The JSONL file opens at once (a resumed run
    truncates it); TensorBoard and wandb open in :meth:`start`, once the step to continue from
    and the wandb run id (kept in the checkpoint) are known."""

    def __init__(self, cfg: LoggerConfig, run_dir: Path, is_main: bool) -> None:
        self.cfg = cfg
        self.run_dir = run_dir
        self.is_main = is_main
        self.jsonl = MetricsLogger(run_dir / "metrics.jsonl" if is_main else None)
        self.wandb_run_id: str | None = None  # set by a restored checkpoint, else by start()
        self.exit_code = 0  # what wandb records when the run closes: set before a failure
        self.is_preempted = False
        self._sinks: list[_Sink] = []
        self._wandb: WandbSink | None = None

    @property
    def is_console(self) -> bool:
        return self.is_main and "console" in self.cfg.sinks

    def start(self, step: int, config: dict[str, Any]) -> None:
        """Open TensorBoard and wandb on rank 0, continuing after ``step`` (0: a fresh run)."""
        if not self.is_main:
            return
        if "tensorboard" in self.cfg.sinks:
            self._sinks.append(TensorBoardSink(self.run_dir / "tensorboard", step + 1))
        if "wandb" in self.cfg.sinks:
            mode = resolve_wandb_mode(self.cfg.wandb.mode)
            if mode != "disabled":
                if self.wandb_run_id is None:
                    self.wandb_run_id = os.environ.get("WANDB_RUN_ID") or new_wandb_run_id()
                self._wandb = WandbSink.open(
                    self.cfg.wandb, mode, self.run_dir, self.wandb_run_id, config
                )
                if self._wandb is not None:
                    self._sinks.append(self._wandb)

    def log(self, record: dict[str, Any]) -> None:
        self.jsonl.log(record)
        if "event" in record or not self._sinks:
            return
        scalars = _scalars(record)
        for sink in list(self._sinks):
            try:
                sink.log(scalars, int(record["step"]))
            except Exception as error:  # a full disk, a dead wandb process: drop the sink
                log.warning("%s failed (%s); no more metrics go there", type(sink).__name__, error)
                self._sinks.remove(sink)

    def summary(self, values: dict[str, float]) -> None:
        """The run's final numbers (wandb's run summary)."""
        if self._wandb is not None and self._wandb in self._sinks:
            self._wandb.summary(values)

    def state_dict(self) -> dict[str, Any]:
        """What a checkpoint keeps: the wandb run id, so that a resumed job continues its run."""
        return {"wandb_run_id": self.wandb_run_id}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.wandb_run_id = state.get("wandb_run_id")

    def truncate_after(self, step: int) -> None:
        self.jsonl.truncate_after(step)

    def close(self) -> None:
        self.jsonl.close()
        sinks, self._sinks = self._sinks, []
        for sink in sinks:
            try:
                sink.close(self.exit_code, self.is_preempted)
            except Exception as error:
                log.warning("closing %s failed (%s)", type(sink).__name__, error)
