"""The fused optimizer step: each of Parle's updates as one pass over its flat buffers.

The eager steps of :mod:`~elastic_entropy.optim.functional` launch one kernel per term, and each
kernel reads and writes whole ``[replicas, N]`` buffers: about 24 passes over memory for the inner
step where its data is 8 (``g, y, x, v, z`` in, ``y, v, z`` out), so a step that is memory bound
runs several times slower than it could. Here the same arithmetic is written as one function per
update and handed to ``torch.compile``, which fuses it into one loop (inductor's C++ on CPUs,
Triton on GPUs): each buffer is read once and written once.

The eager steps stay the reference. The fused ones compute the same terms in the same order, but
a compiler may contract ``a + b c`` into one fused multiply-add, so they agree to rounding (a few
ulps per step), not bit for bit. The hyper-parameters that move during a run (``lr``, ``gamma``,
``rho``: scoping and LR schedules) are passed as one small tensor, so a new value never
recompiles; what decides which terms exist (momentum or not, Nesterov, noise) is static. The
Langevin noise is still drawn eagerly from each replica's generator (the step reads it), so a
resumed run draws the same noise.

``fused=None`` (the optimizers' default, as in ``torch.optim``): fused where the buffers live on a
GPU and Triton is there to compile for it; on a CPU the few seconds of compiling outweigh what a
small model saves, so ``fused=True`` asks for it. Where compiling fails (no C++ compiler, an
unsupported platform), one warning line and the eager step from then on.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

log = logging.getLogger(__name__)


def _nesterov(x: Tensor, d: Tensor, u: Tensor, lr: Tensor, m: Tensor, *, momentum: bool,
              nesterov: bool) -> tuple[Tensor, Tensor]:  # fmt: skip
    """``u = m u + d``; ``x - lr (d + m u)`` (Nesterov), ``x - lr u`` or, without momentum,
    ``x - lr d``: the new ``x`` and ``u`` (``u`` unchanged without momentum)."""
    if not momentum:
        return x - lr * d, u
    u_new = u * m + d  # the eager step's mul_(m).add_(d)
    step = d + m * u_new if nesterov else u_new
    return x - lr * step, u_new


def inner_kernel(
    y: Tensor,
    grad: Tensor,
    x: Tensor,
    v: Tensor,
    z: Tensor,
    noise: Tensor | None,
    hp: Tensor,
    momentum: bool,
    nesterov: bool,
    couple_after_momentum: bool,
) -> None:
    """One inner step, the Langevin noise and the average, in place (see ``functional``).

    ``hp`` = ``[lr', m, wd, gamma, wd + gamma, noise scale, 1 - alpha]``."""
    lr, m, wd, gamma, wd_gamma, scale, weight = (hp[i] for i in range(7))
    if couple_after_momentum:
        s = grad + wd * y
        if momentum:
            v_new = s + m * v
            s = s + m * v_new if nesterov else v_new
            v.copy_(v_new)
        s = (s + gamma * y) - gamma * x
    else:
        s = (grad + wd_gamma * y) - gamma * x
        if momentum:
            v_new = s + m * v
            s = s + m * v_new if nesterov else v_new
            v.copy_(v_new)
    y_new = y - lr * s
    if noise is not None:
        y_new = y_new + scale * noise
    y.copy_(y_new)
    z.copy_(torch.lerp(z, y_new, weight))


def outer_kernel(
    x: Tensor,
    z: Tensor,
    u: Tensor,
    r: Tensor | None,
    live: Tensor,
    v: Tensor | None,
    hp: Tensor,
    momentum: bool,
    nesterov: bool,
    r_is_z: bool = False,
) -> None:
    """``d = (x - z) + wd x + rho (x - r)``, the Nesterov step on ``x``, then the next inner loop
    starts from it: ``y = z = x`` (and ``v = 0`` where the inner momentum restarts).

    ``hp`` = ``[lr, m, wd, rho]``; ``r`` is ``None`` when ``rho`` is 0, or when it is ``z``
    itself (``r_is_z``: one replica, whose mean is its own row; passing that view of a buffer
    the kernel writes would cost a copy of the whole buffer)."""
    lr, m, wd, rho = (hp[i] for i in range(4))
    d = (x - z) + wd * x
    if r_is_z:
        d = (d + rho * x) - rho * z
    elif r is not None:
        d = (d + rho * x) - rho * r
    x_new, u_new = _nesterov(x, d, u, lr, m, momentum=momentum, nesterov=nesterov)
    x.copy_(x_new)
    u.copy_(u_new)
    live.copy_(x_new)
    z.copy_(x_new)
    if v is not None:
        v.zero_()


def elastic_kernel(
    x: Tensor,
    grad: Tensor,
    u: Tensor,
    r: Tensor | None,
    hp: Tensor,
    momentum: bool,
    nesterov: bool,
) -> None:
    """No inner loop: ``d = grad + wd x + rho (x - r)`` and the Nesterov step, in place.

    ``hp`` = ``[lr, m, wd, rho]``; ``r`` is ``None`` when the replicas are not coupled."""
    lr, m, wd, rho = (hp[i] for i in range(4))
    d = grad + wd * x
    if r is not None:
        d = (d + rho * x) - rho * r
    x_new, u_new = _nesterov(x, d, u, lr, m, momentum=momentum, nesterov=nesterov)
    x.copy_(x_new)
    u.copy_(u_new)


KERNELS: dict[str, Callable[..., None]] = {
    "inner": inner_kernel,
    "outer": outer_kernel,
    "elastic": elastic_kernel,
}


def can_fuse_by_default(devices: list[torch.device]) -> bool:
    """``fused=None``: every buffer on a GPU, and Triton there to compile for it."""
    if not devices or any(d.type != "cuda" for d in devices):
        return False
    try:
        from torch.utils._triton import has_triton
    except ImportError:
        return False
    return bool(has_triton())


class FusedSteps:
    """The compiled kernels, and the switch back to the eager step where they cannot compile.

    Each call returns whether the fused step ran; ``False`` leaves the buffers untouched (the
    compile happens before any buffer is written) for the caller's eager step.
    """

    def __init__(self) -> None:
        self.is_active = True
        self._compiled = {
            name: torch.compile(kernel, fullgraph=True) for name, kernel in KERNELS.items()
        }
        self._hp: dict[tuple[str, torch.device, torch.dtype], Tensor] = {}

    def _hyper(self, name: str, like: Tensor, values: list[float]) -> Tensor:
        """``values`` in one reused tensor on ``like``'s device (float64 for float64 buffers, as
        the eager step's scalars are there; float32, the eager step's compute type, else)."""
        dtype = torch.float64 if like.dtype == torch.float64 else torch.float32
        key = (name, like.device, dtype)
        host = torch.tensor(values, dtype=dtype)
        if key not in self._hp or self._hp[key].numel() != len(values):
            self._hp[key] = host.to(like.device)
        else:
            self._hp[key].copy_(host, non_blocking=True)
        return self._hp[key]

    def run(self, name: str, tensors: list[Tensor | None], values: list[float],
            **static: Any) -> bool:  # fmt: skip
        if not self.is_active:
            return False
        like = next(t for t in tensors if t is not None)
        hp = self._hyper(name, like, values)
        try:
            self._compiled[name](*tensors, hp, **static)
        except Exception as error:  # torch's compile errors have no common base class
            first = str(error).strip().splitlines()[0] if str(error).strip() else ""
            log.warning(
                "fused: the fused optimizer step cannot compile here (%s: %s); stepping "
                "eagerly (algorithm.fused=false says so and skips the attempt)",
                type(error).__name__,
                first[:200],
            )
            self.is_active = False
            return False
        return True


def fused_steps(fused: bool | None, devices: list[torch.device]) -> FusedSteps | None:
    """What ``fused`` asks for on buffers on ``devices``: the fused steps, or ``None`` (eager)."""
    if fused is None:
        fused = can_fuse_by_default(devices)
    return FusedSteps() if fused else None
