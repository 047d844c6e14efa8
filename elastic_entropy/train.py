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
import re
import sys
import tempfile
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Override, OverrideType
from hydra.errors import ConfigCompositionException
from omegaconf import DictConfig, OmegaConf, open_dict
from omegaconf.errors import OmegaConfBaseException

from elastic_entropy.config import CONFIG_MODULE, CONFIG_PATH, GROUPS, Config, register_configs
from elastic_entropy.config.keys import UnknownKey, describe, unknown_keys
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


@hydra.main(version_base="1.3", config_path=CONFIG_PATH, config_name="config")
def _app(cfg: DictConfig) -> None:
    from elastic_entropy.training import train  # torch is imported after argument parsing

    try:
        config = _to_config(cfg)
        hydra_config = HydraConfig.get()
        train(config, Path(hydra_config.runtime.output_dir), tuple(hydra_config.overrides.task))
    except (Exception, KeyboardInterrupt) as error:  # Ctrl-C: one line and 130, too
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


def _check_run_dir_override(chosen: str | None) -> None:
    """``chosen``: hydra.run.dir's value as Hydra parses it (quotes removed), None if not set."""
    target = Path(chosen) if chosen is not None else Path.cwd() / "outputs"
    existing = target
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        _fail(
            f"cannot create the run directory {target} ({existing} is not a writable folder); "
            "set hydra.run.dir to a writable place"
        )


def _grammar_error(raw: str, error: Exception) -> str:
    reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    key, equals, value = raw.partition("=")
    if not equals:
        return f"cannot parse {raw!r} ({reason}); an override is KEY=VALUE, e.g. algorithm.lr=0.05"
    # Hydra reads a quoted value verbatim; the outer quotes keep the shell from eating the inner
    inner, outer = ("'", '"') if '"' in value else ('"', "'")
    return (
        f"cannot parse the override {raw} ({reason}); quote its value for Hydra, e.g. "
        f"{outer}{key}={inner}{value}{inner}{outer} (the outer quotes are for the shell)"
    )


def _parse_overrides(args: list[str]) -> list[Override]:
    """Every override, hydra.* included, through Hydra's own grammar: an error is one line."""
    parser = OverridesParser.create()
    parsed = []
    for raw in args:
        try:
            parsed.append(parser.parse_override(raw))
        except Exception as error:  # HydraException, OverrideParseException: the lexer's words
            _fail(_grammar_error(raw, error))
    return parsed


def _is_key(override: Override) -> bool:
    """A plain ``key=value`` of a config value (not a group's option, an addition, a deletion)."""
    name = override.key_or_group
    return override.type == OverrideType.CHANGE and name not in GROUPS and "/" not in name


def _compose(overrides: list[str], parsed: list[Override], name: str = "config") -> DictConfig:
    """The composed config; a ``key=value`` whose key nothing takes is named with the nearest
    valid key, the same line as for ``+key=value`` (which Hydra accepts into the schema)."""
    from hydra import compose

    try:
        cfg = compose(name, overrides=overrides, return_hydra_config=True)
    except ConfigCompositionException as error:
        if not str(error).startswith("Could not override"):
            raise
        # add what Hydra refused as ++ would, so that the walk over the schema finds it
        forced = [f"++{raw}" if _is_key(o) else raw for raw, o in zip(overrides, parsed)]
        forced += overrides[len(parsed) :]  # the search path added for --config-dir
        try:
            forced_cfg = compose(name, overrides=forced, return_hydra_config=True)
            unknown = _unknown(forced_cfg, name, parsed)
        except Exception:
            raise error from None  # not an unknown key after all: Hydra's own words
        if not unknown:
            raise
        _fail(describe(unknown[0]))
    unknown = _unknown(cfg, name, parsed)
    if unknown:
        _fail(describe(unknown[0]))
    with open_dict(cfg):
        del cfg["hydra"]  # checked; Hydra's own node is no part of the run's config
    return cfg


def _unknown(cfg: DictConfig, name: str, parsed: list[Override]) -> list[UnknownKey]:
    """Unknown keys of the run's config, then, when the command line sets some, of Hydra's
    (``+hydra.foo=1``), leaving out what Hydra itself keeps in its node beyond its schema (the
    keys of the config composed without the user's overrides)."""
    unknown = unknown_keys(cfg)
    if not any(o.key_or_group.startswith("hydra.") for o in parsed):
        return unknown  # no second composition on the common path
    from hydra import compose

    plain = compose(name, return_hydra_config=True).hydra
    own = {found.key for found in unknown_keys(plain, "hydra.")}
    return unknown + [f for f in unknown_keys(cfg.hydra, "hydra.") if f.key not in own]


_CONFIG_FLAGS = {"--config-dir": "dir", "-cd": "dir", "--config-name": "name", "-cn": "name"}


def _split_flags(argv: list[str]) -> tuple[list[str], list[str], str] | None:
    """The overrides, the added config folders (``--config-dir``) and the primary config's name
    (``--config-name``) of a command line; None for one that asks Hydra for something else."""
    args, dirs, name = [], [], "config"
    rest = iter(argv[1:])
    for arg in rest:
        flag, equals, value = arg.partition("=")
        if flag in _CONFIG_FLAGS:
            value = value if equals else next(rest, "")
            if _CONFIG_FLAGS[flag] == "dir":
                dirs.append(str(Path(value).absolute()))
            else:
                name = value
        elif arg in _HYDRA_FLAGS or arg.startswith("-"):
            return None
        else:
            args.append(arg)
    return args, dirs, name


def _unknown_option(error: Exception) -> str | None:
    """Hydra's "Could not find 'model/foo'" and its list of options, in one line."""
    text = str(error)
    missing = re.search(r"Could not find '([^'/]+)/([^']+)'", text)
    if missing is None:
        return None
    group, option = missing.groups()
    listed = re.search(rf"Available options in '{group}':\n((?:\t.*\n?)*)", text)
    names = [n.strip() for n in listed.group(1).splitlines()] if listed else []
    names = [n for n in names if n and not n.startswith("schema_")]
    choose = f"; choose one of {', '.join(names)} (e.g. {group}={names[0]})" if names else ""
    return f"unknown {group} {option!r}{choose}"


def _precheck(argv: list[str]) -> None:
    """Compose and validate the config before Hydra runs, so that a mistake is one line."""
    split = _split_flags(argv)
    if split is None:
        return
    args, dirs, config_name = split
    parsed = _parse_overrides(args)
    kept = list(zip(args, parsed))  # hydra.* too: Hydra's keys are checked as the run's are
    overrides = [raw for raw, _ in kept]
    if dirs:  # what --config-dir does for the app: those folders first on the search path
        overrides.append(f"hydra.searchpath=[{','.join(f'file://{d}' for d in dirs)}]")
    from hydra import initialize_config_module

    try:
        with initialize_config_module(CONFIG_MODULE, version_base="1.3"):
            config = _to_config(_compose(overrides, [o for _, o in kept], config_name))
        from elastic_entropy import footprint  # imports torch: only for a config that is valid

        footprint.check_config(config)
    except Exception as error:  # Hydra's parse and composition errors, our ValueErrors
        if os.environ.get("ELASTIC_ENTROPY_DEBUG"):
            raise
        _fail(_unknown_option(error) or _one_line(error))
    if int(os.environ.get("RANK", os.environ.get("SLURM_PROCID", "0"))) == 0:
        run_dirs = [o for o in parsed if o.key_or_group == "hydra.run.dir" and not o.is_delete()]
        _check_run_dir_override(str(run_dirs[-1].value()) if run_dirs else None)


def main() -> None:
    from elastic_entropy.loggers import guard_broken_pipes
    from elastic_entropy.training.preemption import exit_on_signals

    guard_broken_pipes()  # `elastic-entropy ... | head`: the run still finishes, quietly
    if len(sys.argv) > 1 and sys.argv[1] == "report":
        # `elastic-entropy report RUN_DIR...`: not a training run, so Hydra never sees it
        from elastic_entropy.report import main as report

        sys.exit(report(sys.argv[2:]))
    exit_on_signals()  # until training starts, a stop signal ends the process in one line
    register_configs()
    _precheck(sys.argv)
    sys.argv = _with_overrides(sys.argv, _rank_overrides())
    _app()


if __name__ == "__main__":
    main()
