"""``elastic-entropy`` / ``python -m elastic_entropy.train``: the Hydra app.

elastic-entropy                                   # Parle, 4 replicas, MNIST-1D, CPU or GPU
elastic-entropy algorithm=sgd epochs=5            # the baseline
elastic-entropy algorithm.num_inner_steps=5 algorithm.rho=0.5 data=digits model=mlp
torchrun --standalone --nproc-per-node=2 -m elastic_entropy.train cluster.replicas_per_process=2
elastic-entropy --cfg job                         # print the composed config
elastic-entropy report RUN_DIR [RUN_DIR...]       # plots and a table from metrics.jsonl
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from elastic_entropy.config import GROUPS, Config, register_configs
from elastic_entropy.training.preemption import EXIT_USAGE, exit_for


def _fail(message: str) -> None:
    print(f"elastic-entropy: error: {message}", file=sys.stderr, flush=True)
    sys.exit(EXIT_USAGE)


def _to_config(cfg: DictConfig) -> Config:
    try:
        config = OmegaConf.to_object(cfg)
    except OmegaConfBaseException as error:
        # a __post_init__ ValueError arrives wrapped; show the user's key and rule only
        cause = error.__cause__ if isinstance(error.__cause__, ValueError) else error
        raise ValueError(str(cause).splitlines()[0]) from error
    assert isinstance(config, Config)
    return config


@hydra.main(version_base="1.3", config_path=None, config_name="config")
def _app(cfg: DictConfig) -> None:
    from elastic_entropy.training import train  # torch is imported after argument parsing

    try:
        config = _to_config(cfg)
        hydra_config = HydraConfig.get()
        train(config, Path(hydra_config.runtime.output_dir), tuple(hydra_config.overrides.task))
    except Exception as error:
        ending = exit_for(error)
        # user mistakes get one line and exit code 2; ELASTIC_ENTROPY_DEBUG=1 shows the traceback
        if ending is None or (ending[0] == EXIT_USAGE and os.environ.get("ELASTIC_ENTROPY_DEBUG")):
            raise
        code, message = ending
        print(f"elastic-entropy: {message}", file=sys.stderr, flush=True)
        sys.exit(code)


def _rank_overrides() -> list[str]:
    """Ranks other than 0 write nothing: rank 0 picks the run directory and tells them."""
    if int(os.environ.get("RANK", os.environ.get("SLURM_PROCID", "0"))) == 0:
        return []
    scratch = tempfile.mkdtemp(prefix="elastic-entropy-rank-")
    return [
        f"hydra.run.dir={scratch}",
        "hydra.output_subdir=null",
        "hydra/job_logging=disabled",
        "hydra/hydra_logging=disabled",
    ]


def _with_overrides(argv: list[str], extra: list[str]) -> list[str]:
    """Add overrides next to the user's own: argparse wants Hydra's overrides in one run."""
    positions = [
        i for i, arg in enumerate(argv) if i > 0 and "=" in arg and not arg.startswith("-")
    ]
    at = positions[-1] + 1 if positions else len(argv)
    return [*argv[:at], *extra, *argv[at:]]


# Hydra's own flags: leave the command line to Hydra untouched
_HYDRA_FLAGS = (
    "-h",
    "--help",
    "--hydra-help",
    "-c",
    "--cfg",
    "-i",
    "--info",
    "-m",
    "--multirun",
    "-sc",
    "--shell-completion",
    "--version",
    "-p",
    "--package",
    "--resolve",
)


def _one_line(error: BaseException) -> str:
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    cause = error.__cause__
    if cause is not None and str(cause).strip():
        lines.append(str(cause).strip().splitlines()[0])
    return "; ".join(dict.fromkeys(lines)) or type(error).__name__


def _check_run_dir_override(overrides: list[str]) -> None:
    chosen = [o.split("=", 1)[1] for o in overrides if o.startswith("hydra.run.dir=")]
    target = Path(chosen[-1]) if chosen else Path.cwd() / "outputs"
    existing = target
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        _fail(
            f"cannot create the run directory {target} ({existing} is not a writable folder); "
            "set hydra.run.dir to a writable place"
        )


def _precheck(argv: list[str]) -> None:
    """Compose and validate the config before Hydra runs, so that a mistake is one line."""
    if any(arg in _HYDRA_FLAGS or arg.startswith("--") for arg in argv[1:]):
        return
    overrides = [arg for arg in argv[1:] if not arg.startswith(("hydra.", "hydra/", "-"))]
    for override in overrides:
        group, _, option = override.lstrip("+~").partition("=")
        if group in GROUPS and option not in GROUPS[group]:
            _fail(
                f"unknown {group} {option!r}; choose one of {', '.join(sorted(GROUPS[group]))} "
                f"(e.g. {group}={next(iter(GROUPS[group]))})"
            )
    from hydra import compose, initialize

    try:
        with initialize(version_base="1.3", config_path=None):
            _to_config(compose("config", overrides=overrides))
    except Exception as error:  # Hydra's parse and composition errors, our ValueErrors
        if os.environ.get("ELASTIC_ENTROPY_DEBUG"):
            raise
        _fail(_one_line(error))
    if int(os.environ.get("RANK", os.environ.get("SLURM_PROCID", "0"))) == 0:
        _check_run_dir_override([arg for arg in argv[1:] if arg.startswith("hydra.run.dir=")])


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "report":
        # `elastic-entropy report RUN_DIR...`: not a training run, so Hydra never sees it
        from elastic_entropy.report import main as report

        sys.exit(report(sys.argv[2:]))
    register_configs()
    _precheck(sys.argv)
    sys.argv = _with_overrides(sys.argv, _rank_overrides())
    _app()


if __name__ == "__main__":
    main()
