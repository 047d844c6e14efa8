"""The coupling diagnostics of one outer step, measured on the flat buffers."""

from __future__ import annotations

from typing import Any

import torch

from elastic_entropy.optim.flat_buffers import FlatBuffers, StorageKey

# what Parle.pop_diagnostics() reports per replica, besides the couplings it was measured with
DIAGNOSTICS = ("distance", "elastic_force", "prox_force", "entropy_grad")


def measure(
    buffers: FlatBuffers, means: dict[StorageKey, torch.Tensor], *, gamma: float, rho: float
) -> dict[str, Any]:
    """The norms of :data:`DIAGNOSTICS` per replica, taken before the step moves the anchors."""
    x = buffers.anchor_name
    has_inner_loop = x == "anchor"
    # the replicas' inner-loop averages; DiLoCo keeps none, its last inner iterates count
    z = "ema" if "ema" in next(iter(buffers.storages.values())).state else "live"
    z = z if has_inner_loop else x
    distance = buffers.row_distance(z, means)
    zeros = torch.zeros_like(distance)  # no inner loop: no proximal pull, no entropy
    measured = (
        distance,
        rho * buffers.row_distance(x, means),
        gamma * buffers.row_distance("live", x) if has_inner_loop else zeros,
        gamma * buffers.row_distance(x, z) if has_inner_loop else zeros,
    )
    return {"gamma": gamma, "rho": rho, **dict(zip(DIAGNOSTICS, measured))}
