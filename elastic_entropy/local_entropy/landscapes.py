r"""One-dimensional losses for the tests and pictures, written once for numpy and torch.

Each function is elementwise and uses only arithmetic, ``exp`` and ``cos``, dispatched on the
argument's type, so the same formula feeds the quadrature (numpy arrays) and the optimizers
(torch tensors with autograd).
"""

from __future__ import annotations

from types import ModuleType
from typing import TypeVar

import numpy as np
import torch

ArrayT = TypeVar("ArrayT", np.ndarray, torch.Tensor)


def _ops(y: np.ndarray | torch.Tensor) -> ModuleType:
    return torch if isinstance(y, torch.Tensor) else np


def double_well(y: ArrayT, barrier: float = 1.0) -> ArrayT:
    r"""``f(y) = barrier (y^2 - 1)^2``: minima at ``y = ±1``, a saddle of height ``barrier`` at 0.

    Curvatures: ``f''(±1) = 8 barrier`` and ``f''(0) = -4 barrier`` (Kramers' rate uses both).
    """
    return barrier * (y**2 - 1.0) ** 2


def double_well_grad(y: np.ndarray, barrier: float = 1.0) -> np.ndarray:
    """``f'(y) = 4 barrier y (y^2 - 1)``, for the numpy Langevin simulations."""
    return 4.0 * barrier * y * (y**2 - 1.0)


def rugged(y: ArrayT) -> ArrayT:
    r"""A tilted double well with ripples: ``(y^2 - 1)^2 + 0.3 y + 0.15 cos(12 y)``.

    The ripples are the small-scale non-convexity that local entropy smooths first (five local
    minima in ``[-2, 2]``, two left at ``t = 0.02``); the tilt makes the two wells unequal, so a
    long smoothing time ``t`` leaves one basin.
    """
    ops = _ops(y)
    return (y**2 - 1.0) ** 2 + 0.3 * y + 0.15 * ops.cos(12.0 * y)


def rugged_grad(y: np.ndarray) -> np.ndarray:
    """``f'`` of :func:`rugged`: ``4 y (y^2 - 1) + 0.3 - 1.8 sin(12 y)``."""
    return 4.0 * y * (y**2 - 1.0) + 0.3 - 1.8 * np.sin(12.0 * y)


def rugged_curvature(y: np.ndarray) -> np.ndarray:
    """``f''`` of :func:`rugged`: ``12 y^2 - 4 - 21.6 cos(12 y)``."""
    return 12.0 * y**2 - 4.0 - 21.6 * np.cos(12.0 * y)


# a narrow deep minimum at NARROW_AT and a wide, slightly shallower one at WIDE_AT
NARROW_AT = -1.0
WIDE_AT = 1.0


def narrow_and_wide(y: ArrayT) -> ArrayT:
    r"""Two Gaussian wells in a soft quartic bowl.

    ``f(y) = -1.3 exp(-(y + 1)^2 / (2 * 0.12^2)) - exp(-(y - 1)^2 / (2 * 0.6^2)) + 0.02 y^4``.
    The narrow well (width 0.12, at -1) is deeper; the wide one (width 0.6, at +1) holds more
    Gibbs mass, so the local entropy prefers it once ``t`` is a fraction of its width.
    """
    ops = _ops(y)
    narrow = 1.3 * ops.exp(-((y - NARROW_AT) ** 2) / (2.0 * 0.12**2))
    wide = ops.exp(-((y - WIDE_AT) ** 2) / (2.0 * 0.6**2))
    return -narrow - wide + 0.02 * y**4
