"""Checks of the metric sinks that can run before anything starts: wandb's mode and credentials,
TensorBoard's package. A leaf: the config calls them when it is built, the loggers when they open,
and neither has to import the other.

wandb never stops a run: without credentials it runs offline (or as ``WANDB_MODE`` says). Asking for
``online`` without credentials is the one mistake refused (:func:`check_wandb`).
"""

from __future__ import annotations

import importlib.util
import netrc
import os
from pathlib import Path
from urllib.parse import urlsplit

# WANDB_MODE's values (wandb's old spellings included) and the mode each means
_ENV_MODES = {
    "online": "online",
    "run": "online",
    "offline": "offline",
    "dryrun": "offline",
    "disabled": "disabled",
}


def wandb_credentials() -> str | None:
    """Where wandb would find an API key (``WANDB_API_KEY``, an identity token, a ``.netrc``
    entry for ``WANDB_BASE_URL``'s host), or None. Read without importing wandb."""
    for variable in ("WANDB_API_KEY", "WANDB_IDENTITY_TOKEN_FILE"):
        if os.environ.get(variable):
            return variable
    host = urlsplit(os.environ.get("WANDB_BASE_URL") or "https://api.wandb.ai").netloc
    path = Path(os.environ.get("NETRC") or "~/.netrc").expanduser()
    try:
        entry = netrc.netrc(str(path)).authenticators(host)
    except (OSError, netrc.NetrcParseError):
        return None
    return str(path) if entry and entry[2] else None


def resolve_wandb_mode(requested: str) -> str:
    """``online``, ``offline`` or ``disabled``: the config's choice, else ``WANDB_MODE`` (and
    ``WANDB_DISABLED``), else online when there are credentials and offline when not."""
    if requested != "auto":
        return requested
    if os.environ.get("WANDB_DISABLED", "").strip().lower() in ("1", "true", "yes"):
        return "disabled"
    env = os.environ.get("WANDB_MODE", "").strip().lower()
    if env:
        if env not in _ENV_MODES:
            raise ValueError(
                f"Invalid WANDB_MODE: {env!r} (choose online, offline or disabled, or unset it)"
            )
        return _ENV_MODES[env]
    return "online" if wandb_credentials() else "offline"


def check_wandb(requested: str) -> None:
    """Refuse ``online`` without credentials: wandb would stop to prompt or fail mid-run."""
    mode = resolve_wandb_mode(requested)
    if mode == "online" and wandb_credentials() is None:
        how = "logger.wandb.mode=online" if requested == "online" else "WANDB_MODE=online"
        raise ValueError(
            f"{how} needs wandb credentials, and there are none (no WANDB_API_KEY, no ~/.netrc "
            "entry): run `wandb login` or set WANDB_API_KEY, or use logger.wandb.mode=offline"
        )


def check_tensorboard() -> None:
    if importlib.util.find_spec("tensorboard") is None:
        raise ValueError(
            "logger.sinks has tensorboard but the tensorboard package is not installed; "
            "pip install tensorboard, or drop tensorboard from logger.sinks"
        )
