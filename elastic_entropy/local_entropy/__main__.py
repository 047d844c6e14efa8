"""Pictures of local entropy, scoping, flat minima and metastability.

    python -m elastic_entropy.local_entropy plots --out figures/   # four PNGs, about 10 s on a CPU

Prints one line per figure written, with the numbers it measured. A mistake (unknown subcommand,
an --out that cannot be written) prints one line on stderr and exits non-zero.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import NoReturn

_USAGE_ERROR = 2
_RUN_ERROR = 1


class _Parser(argparse.ArgumentParser):
    """argparse that reports a mistake in one line (its default prints the whole usage first)."""

    def error(self, message: str) -> NoReturn:
        self.exit(_USAGE_ERROR, f"{self.prog}: error: {message} (see --help)\n")


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="python -m elastic_entropy.local_entropy",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="{plots}")
    plots = commands.add_parser("plots", help="write the PNG figures into --out")
    plots.add_argument("--out", type=Path, required=True, help="folder for the PNGs (created)")
    plots.add_argument("--seed", type=int, default=0, help="seed of the simulations (default 0)")
    return parser


def _prepare(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    # mkdir succeeds on an existing read-only folder; a probe file finds that out before the
    # simulations run rather than after
    probe = out / ".write_probe"
    probe.write_bytes(b"")
    probe.unlink()


def _fail(message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    return _RUN_ERROR


def _plots(out: Path, seed: int) -> int:
    try:
        _prepare(out)  # before the slow imports, so a bad --out fails at once
    except OSError as error:
        return _fail(f"cannot write figures to --out {out}: {error.strerror or error}")
    try:
        from elastic_entropy.local_entropy.plots import write_all
    except ImportError as error:
        return _fail(f"the figures need matplotlib ({error}); pip install matplotlib")
    try:
        written = write_all(out, seed)
    except OSError as error:
        return _fail(f"cannot write figures to --out {out}: {error.strerror or error}")
    for item in written:
        print(f"wrote {item.path}: {item.summary}")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "plots":
        return _plots(args.out, args.seed)
    raise AssertionError(f"unhandled command {args.command}")  # argparse only lets 'plots' in


if __name__ == "__main__":
    sys.exit(main())
