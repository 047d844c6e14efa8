"""An explicit ``inner_lr`` that follows the schedule of ``lr``, as torch's LR schedulers set it.

Schedulers scale ``group["lr"]`` alone; the inner loop's rate is a separate number, which would
stay where it was given. So each group remembers the ``inner_lr`` it was given and the ``lr`` of
that moment, and at each step sets ``inner_lr = given * (lr / lr_then)``. Setting
``group["inner_lr"]`` yourself (as the app's cosine schedule does, for both rates) starts from the
new value. While ``lr`` has not moved, ``inner_lr`` is left exactly as given (no ``x * (y / y)``
rounding). The record lives in the group, so ``state_dict`` carries it and a resume is exact.
``Parle(inner_lr_follows_lr=False)`` does without it: ``inner_lr`` stays as given while ``lr``
moves, as the authors' ``llr`` did (the app's ``lr_schedule.inner_lr=fixed``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

# group key: [inner_lr as given, lr when it was given, inner_lr as last written here]
KEY = "inner_lr_follows_lr"


def follow_lr(param_groups: Sequence[dict[str, Any]]) -> None:
    """Rescale each group's explicit ``inner_lr`` by how far ``lr`` moved since it was given."""
    for group in param_groups:
        inner_lr, lr = group["inner_lr"], group["lr"]
        if inner_lr is None:  # None: the inner loop runs at lr, which follows by itself
            continue
        record = group.get(KEY)
        if record is None or inner_lr != record[2]:  # new, or set by hand since the last step
            group[KEY] = [inner_lr, lr, inner_lr]
            continue
        given, lr_then, _ = record
        if lr != lr_then:
            scaled = given * (lr / lr_then) if lr_then != 0.0 else given
            group["inner_lr"] = scaled
            # a new list: a state_dict taken earlier shares the old one and must not change
            group[KEY] = [given, lr_then, scaled]
