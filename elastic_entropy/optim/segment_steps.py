"""Parle's updates over its flat buffers, a segment (one parameter group's columns) at a time:
one fused pass where :mod:`~elastic_entropy.optim.fused` runs, else the eager reference steps of
:mod:`~elastic_entropy.optim.functional`."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch import Tensor

from elastic_entropy.optim import functional as F
from elastic_entropy.optim.consensus import Means
from elastic_entropy.optim.flat_buffers import FlatBuffers, Storage
from elastic_entropy.optim.fused import FusedSteps

Group = dict[str, Any]


def noise_and_average(storage: Storage, group: Group, cols: slice, inner_lr: float) -> None:
    """The Langevin term on ``y`` (where ``noise`` > 0), then ``z = alpha z + (1 - alpha) y``."""
    y = storage.live[:, cols]
    if group["noise"] > 0.0:
        assert storage.noise is not None
        F.add_noise([y], [storage.noise[:, cols]], lr=inner_lr, noise=group["noise"])
    F.ema_update([storage.state["ema"][:, cols]], [y], alpha=group["alpha"])


def sgd_inner(
    fused: FusedSteps | None,
    storage: Storage,
    group: Group,
    cols: slice,
    *,
    inner_lr: float,
    gamma: float,
    couple_after_momentum: bool,
) -> None:
    """The SGD inner step of one segment, its noise and the average."""
    if fused is not None:
        tensors, values = _inner_operands(storage, group, cols, inner_lr, gamma)
        static = {"momentum": group["momentum"] != 0.0, "nesterov": group["nesterov"]}
        static["couple_after_momentum"] = couple_after_momentum
        if fused.run("inner", tensors, values, **static):
            return
    F.inner_step(
        [storage.live[:, cols]],
        [storage.grad[:, cols]],
        [storage.state["anchor"][:, cols]],
        [storage.state["inner_momentum"][:, cols]],
        [storage.scratch[:, cols]],
        lr=inner_lr,
        momentum=group["momentum"],
        nesterov=group["nesterov"],
        weight_decay=group["weight_decay"],
        gamma=gamma,
        couple_after_momentum=couple_after_momentum,
    )
    noise_and_average(storage, group, cols, inner_lr)


def _inner_operands(
    storage: Storage, group: Group, cols: slice, inner_lr: float, gamma: float
) -> tuple[list[Tensor | None], list[float]]:
    """The fused inner kernel's tensors and hyper-parameters (``fused.inner_kernel``)."""
    is_noisy = group["noise"] > 0.0 and storage.noise is not None
    tensors = [
        storage.live[:, cols],
        storage.grad[:, cols],
        storage.state["anchor"][:, cols],
        storage.state["inner_momentum"][:, cols],
        storage.state["ema"][:, cols],
        storage.noise[:, cols] if is_noisy and storage.noise is not None else None,
    ]
    wd = group["weight_decay"]
    scale = group["noise"] * (2.0 * inner_lr) ** 0.5
    values = [inner_lr, group["momentum"], wd, gamma, wd + gamma, scale, 1.0 - group["alpha"]]
    return tensors, values


def outer(
    fused: FusedSteps | None,
    buffers: FlatBuffers,
    groups: Sequence[Group],
    means: Means,
    *,
    rho: float,
    outer_weight_decay: bool,
    resets_inner_momentum: bool,
) -> None:
    """The outer step of every segment, then the next inner loop's start: ``y = z = x``."""
    options = {"outer_weight_decay": outer_weight_decay, "resets": resets_inner_momentum}
    if fused is not None and _fused_outer(fused, buffers, groups, means, rho, **options):
        return
    for segment, storage in buffers.segment_storages():
        group, cols = groups[segment.group_index], segment.cols
        F.outer_step(
            [storage.state["anchor"][:, cols]],
            [storage.state["ema"][:, cols]],
            [storage.state["outer_momentum"][:, cols]],
            [means[segment.key][cols]],
            [storage.scratch[:, cols]],
            lr=group["lr"],
            momentum=group["momentum"],
            nesterov=group["nesterov"],
            rho=rho,
            weight_decay=group["weight_decay"] if outer_weight_decay else 0.0,
        )
    for storage in buffers.storages.values():
        storage.live.copy_(storage.state["anchor"])
        storage.state["ema"].copy_(storage.state["anchor"])
        if resets_inner_momentum:
            storage.state["inner_momentum"].zero_()


def _fused_outer(
    fused: FusedSteps,
    buffers: FlatBuffers,
    groups: Sequence[Group],
    means: Means,
    rho: float,
    *,
    outer_weight_decay: bool,
    resets: bool,
) -> bool:
    """All segments in one pass each, or none: the first is where a compile failure shows,
    before any buffer is written."""
    for segment, storage in buffers.segment_storages():
        group, cols = groups[segment.group_index], segment.cols
        z, r = storage.state["ema"][:, cols], means[segment.key][cols]
        # one replica: its mean is its own row of z, a view the kernel must not be handed
        r_is_z = rho != 0.0 and z.shape[0] == 1 and r.data_ptr() == z.data_ptr()
        tensors = [
            storage.state["anchor"][:, cols],
            z,
            storage.state["outer_momentum"][:, cols],
            r if rho != 0.0 and not r_is_z else None,
            storage.live[:, cols],
            storage.state["inner_momentum"][:, cols] if resets else None,
        ]
        wd = group["weight_decay"] if outer_weight_decay else 0.0
        values = [group["lr"], group["momentum"], wd, rho]
        static = {"momentum": group["momentum"] != 0.0, "nesterov": group["nesterov"]}
        if not fused.run("outer", tensors, values, **static, r_is_z=r_is_z):
            return False
    return True


def elastic(
    fused: FusedSteps | None,
    buffers: FlatBuffers,
    groups: Sequence[Group],
    means: Means | None,
    rho: float,
) -> None:
    """The no-inner-loop Nesterov step of every segment on ``grad + wd x + rho (x - means)``."""
    for segment, storage in buffers.segment_storages():
        group, cols = groups[segment.group_index], segment.cols
        mean = means[segment.key][cols] if means is not None and rho != 0.0 else None
        x, grad = storage.live[:, cols], storage.grad[:, cols]
        u = storage.state["outer_momentum"][:, cols]
        if fused is not None and fused.run(
            "elastic",
            [x, grad, u, mean],
            [group["lr"], group["momentum"], group["weight_decay"], rho],
            momentum=group["momentum"] != 0.0,
            nesterov=group["nesterov"],
        ):
            continue
        F.elastic_step(
            [x],
            [grad],
            [u],
            [mean],
            [storage.scratch[:, cols]],
            lr=group["lr"],
            momentum=group["momentum"],
            nesterov=group["nesterov"],
            weight_decay=group["weight_decay"],
            rho=rho,
        )
