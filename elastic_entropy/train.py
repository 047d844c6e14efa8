"""``elastic-entropy`` / ``python -m elastic_entropy.train``: the Hydra app.

elastic-entropy                                   # Parle, 4 replicas, MNIST-1D, CPU or GPU
elastic-entropy algorithm=sgd epochs=5            # the baseline
elastic-entropy algorithm.num_inner_steps=5 algorithm.rho=0.5 data=digits model=mlp
torchrun --standalone --nproc-per-node=2 -m elastic_entropy.train cluster.replicas_per_process=2
elastic-entropy --cfg job                         # print the composed config
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

from elastic_entropy.config import Config, register_configs
from elastic_entropy.data import DataNotFoundError

# user mistakes get one line and exit code 2; ELASTIC_ENTROPY_DEBUG=1 shows the traceback
USER_ERRORS = (ValueError, DataNotFoundError, PermissionError, OmegaConfBaseException)
EXIT_USAGE = 2
EXIT_DIVERGED = 3


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
    from elastic_entropy.optim import DivergedError
    from elastic_entropy.trainer import (
        EXIT_PREEMPTED,
        Preempted,
        train,  # torch is imported after argument parsing
    )

    try:
        config = _to_config(cfg)
        train(config, Path(HydraConfig.get().runtime.output_dir))
    except Preempted as stop:
        print(f"elastic-entropy: {stop}; rerun the same command to resume", file=sys.stderr)
        sys.exit(EXIT_PREEMPTED)
    except DivergedError as error:
        print(f"elastic-entropy: diverged: {error}", file=sys.stderr, flush=True)
        sys.exit(EXIT_DIVERGED)
    except USER_ERRORS as error:
        if os.environ.get("ELASTIC_ENTROPY_DEBUG"):
            raise
        _fail(str(error))


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


def main() -> None:
    register_configs()
    sys.argv = _with_overrides(sys.argv, _rank_overrides())
    _app()


if __name__ == "__main__":
    main()
