"""The checks every config's ``__post_init__`` uses: one ``ValueError`` line naming the key."""

from __future__ import annotations

import math
from dataclasses import fields, is_dataclass
from typing import Any

# the largest number a config may hold: exact as a float, a JSON number and an int64, so that a
# count, a seed or a step survives the plan's arithmetic, the checkpoint and results.json
MAX_MAGNITUDE = 2**53
SEED_BOUND = 2**32  # numpy's legacy seeding, which MNIST-1D's generator uses, takes [0, 2**32)


def _require(condition: bool, key: str, value: Any, rule: str) -> None:
    if not condition:
        raise ValueError(f"Invalid {key}: {value!r} ({rule})")


def _non_negative(key: str, value: float) -> None:
    _require(math.isfinite(value) and value >= 0.0, key, value, "must be finite and >= 0")


def _positive(key: str, value: float, rule: str = "must be finite and > 0") -> None:
    _require(math.isfinite(value) and value > 0.0, key, value, rule)


def _seed(key: str, value: int) -> None:
    _require(0 <= value < SEED_BOUND, key, value, "must be in [0, 2**32)")


def _check_number(key: str, value: float, may_be_inf: bool) -> None:
    if may_be_inf and value == math.inf:
        return
    _require(
        math.isfinite(value) and abs(value) <= MAX_MAGNITUDE,
        key,
        value,
        "must be a finite number of at most 2**53 in size",
    )


def check_numbers(node: Any, prefix: str = "") -> None:
    """Every number under the config dataclass ``node``, lists included, finite and at most
    ``MAX_MAGNITUDE``: one walk over the fields, so that a key added later is covered too. A
    dataclass names the keys where ``inf`` means "no cap" in its ``UNBOUNDED`` class variable."""
    unbounded = getattr(type(node), "UNBOUNDED", ())
    for f in fields(node):
        value = getattr(node, f.name)
        key = f"{prefix}{f.name}"
        items = value if isinstance(value, (list, tuple)) else [value]
        for item in items:
            if is_dataclass(item) and not isinstance(item, type):
                check_numbers(item, f"{key}.")
            elif isinstance(item, (int, float)) and not isinstance(item, bool):
                _check_number(key, item, f.name in unbounded)
