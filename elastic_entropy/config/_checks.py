"""The checks every config's ``__post_init__`` uses: one ``ValueError`` line naming the key."""

from __future__ import annotations

import math
from typing import Any


def _require(condition: bool, key: str, value: Any, rule: str) -> None:
    if not condition:
        raise ValueError(f"Invalid {key}: {value!r} ({rule})")


def _non_negative(key: str, value: float) -> None:
    _require(math.isfinite(value) and value >= 0.0, key, value, "must be finite and >= 0")
