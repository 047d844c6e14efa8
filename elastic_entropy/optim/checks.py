"""Parle's argument checks, as torch.optim makes them: ``ValueError`` with the value and the fix."""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from typing import Any

# hyper-parameters every replica of a job shares (replica a's groups against replica 0's)
SHARED_HYPER = ("lr", "inner_lr", "momentum", "nesterov", "alpha", "noise", "weight_decay")


def check_group(group: dict[str, Any]) -> None:
    """The hyper-parameters of one parameter group, and that its parameters are trainable."""
    checks = {  # name: (is it valid, the valid range)
        "lr": (group["lr"] >= 0.0, ">= 0"),
        "momentum": (0.0 <= group["momentum"] < 1.0, "in [0, 1)"),
        "alpha": (
            0.0 <= group["alpha"] < 1.0,
            "in [0, 1) (the weight of the old average in the EMA)",
        ),
        "noise": (group["noise"] >= 0.0, ">= 0"),
        "weight_decay": (group["weight_decay"] >= 0.0, ">= 0"),
    }
    for name, (ok, valid_range) in checks.items():
        if not ok or not math.isfinite(group[name]):
            raise ValueError(f"Invalid {name} value: {group[name]} (must be {valid_range})")
    inner_lr = group["inner_lr"]
    if inner_lr is not None and (not math.isfinite(inner_lr) or inner_lr < 0.0):
        raise ValueError(f"Invalid inner_lr value: {inner_lr} (must be >= 0, or None for lr)")
    for p in group["params"]:
        if not p.requires_grad:
            raise ValueError(
                "Parle got a parameter with requires_grad=False; pass only trainable "
                "parameters (e.g. [p for p in model.parameters() if p.requires_grad])"
            )


def check_steps_and_couplings(num_inner_steps: int, gamma: float, rho: float) -> None:
    """The inner loop's length and the coupling strengths, before any group is read."""
    if not isinstance(num_inner_steps, int) or num_inner_steps < 0:
        raise ValueError(f"Invalid num_inner_steps value: {num_inner_steps} (must be an int >= 0)")
    for name, value in (("gamma", gamma), ("rho", rho)):
        if not math.isfinite(value) or value < 0.0:
            raise ValueError(f"Invalid {name} value: {value} (must be finite and >= 0)")


def check_noise(num_inner_steps: int, is_noisy: bool) -> None:
    if num_inner_steps == 0 and is_noisy:
        raise ValueError(
            "noise > 0 needs an inner loop (num_inner_steps >= 1); set noise=0 for Elastic-SGD"
        )


def check_stability(
    param_groups: Sequence[dict[str, Any]], rho_max: float, is_elastic: bool
) -> None:
    """The elastic step ``x -= lr (1 + m) rho (x - r)`` overshoots ``r`` once the gain reaches 2.

    ``rho_max`` is the largest value the schedule of ``rho`` reaches; ``is_elastic``: whether
    ``rho`` acts at all (with an inner loop, or more than one replica).
    """
    if rho_max == 0.0 or not is_elastic:
        return
    for group in param_groups:
        lr, momentum = group["lr"], group["momentum"]
        if math.isinf(rho_max):
            warnings.warn(
                "rho grows without a cap: once lr * rho * (1 + momentum) >= 2 the elastic "
                "step overshoots the reference and diverges; give rho_schedule a max_value",
                stacklevel=3,
            )
            return
        gain = lr * rho_max * (1.0 + momentum)
        if gain >= 2.0:
            raise ValueError(
                f"Unstable elastic coupling: lr * rho_max * (1 + momentum) = {lr} * {rho_max} "
                f"* {1.0 + momentum} = {gain:.3g} >= 2, so each outer step moves a replica "
                "past the reference and the run diverges; keep rho_max below "
                f"{2.0 / (lr * (1.0 + momentum)):.3g} or lower lr"
            )


def check_resumable(saved: dict[str, Any] | None, settings: dict[str, int]) -> dict[str, Any]:
    """The ``"parle"`` entry of a saved state, checked against this run's ``settings``."""
    if saved is None:
        raise ValueError("not a Parle optimizer state (no 'parle' entry); was it saved by Parle?")
    for name, value in settings.items():
        if saved[name] != value:
            raise ValueError(
                f"optimizer state was saved with {name}={saved[name]} but this run has "
                f"{value}; resume with the same settings"
            )
    return saved
