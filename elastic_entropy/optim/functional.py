"""The functional core of Parle: its updates, on lists of tensors.

The equations are those of Chaudhari et al., "Parle: parallelizing stochastic gradient descent"
(SysML 2018), whose inner loop is Entropy-SGD's (Chaudhari et al., "Entropy-SGD: biasing gradient
descent into wide valleys", ICLR 2017).

Each function loops over tensors. :class:`~elastic_entropy.optim.Parle` calls them with one flat
``[replicas, N]`` buffer per parameter group, device and dtype (a list of length one in the usual
case), so a step is a handful of kernels over one contiguous buffer; called with per-parameter
tensors the same code is the readable reference path. Everything runs in place.

Notation: ``y`` live (inner) iterate, ``x`` anchor, ``z`` exponential average of ``y``, ``v`` inner
momentum, ``u`` outer momentum, ``r`` the mean over replicas of ``z`` (or of ``x`` without an inner
loop), ``m`` momentum, ``s`` scratch space of the same shape as ``y``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor


def _nesterov_update(
    param: Tensor, direction: Tensor, buf: Tensor, *, lr: float, momentum: float, nesterov: bool
) -> None:
    """``buf = m buf + d``; ``param -= lr (d + m buf)`` (Nesterov) or ``lr buf`` (heavy ball).

    The same arithmetic as ``torch.optim.SGD`` with zero dampening; ``direction`` is overwritten.
    """
    if momentum == 0.0:
        param.add_(direction, alpha=-lr)
        return
    buf.mul_(momentum).add_(direction)
    if nesterov:
        param.add_(direction.add_(buf, alpha=momentum), alpha=-lr)
    else:
        param.add_(buf, alpha=-lr)


def inner_step(
    ys: Sequence[Tensor],
    grads: Sequence[Tensor],
    xs: Sequence[Tensor],
    vs: Sequence[Tensor],
    scratch: Sequence[Tensor],
    *,
    lr: float,
    momentum: float,
    nesterov: bool,
    weight_decay: float,
    gamma: float,
    couple_after_momentum: bool = False,
) -> None:
    """``g = grad + wd y + gamma (y - x)``; ``v = m v + g``; ``y -= lr' (g + m v)``.

    Memory traffic is what a step costs, so terms are folded into as few passes as the algebra
    allows: ``(wd + gamma) y - gamma x`` in two, ``m v + g`` in one.

    ``couple_after_momentum``: the Entropy-SGD authors' order (ucla-vision/entropy-sgd,
    ``python/optim.py``): momentum acts on ``g = grad + wd y`` alone and the coupling joins after
    it, ``y -= lr' (g + m v + gamma (y - x))``.
    """
    if couple_after_momentum:
        _inner_step_coupled_after(
            ys, grads, xs, vs, scratch, lr, momentum, nesterov, weight_decay, gamma
        )
        return
    for y, grad, x, v, s in zip(ys, grads, xs, vs, scratch):
        if weight_decay + gamma != 0.0:
            torch.add(grad, y, alpha=weight_decay + gamma, out=s)
        else:
            s.copy_(grad)
        if gamma != 0.0:
            s.sub_(x, alpha=gamma)
        if momentum == 0.0:
            y.add_(s, alpha=-lr)
            continue
        torch.add(s, v, alpha=momentum, out=v)
        if nesterov:
            y.add_(s.add_(v, alpha=momentum), alpha=-lr)
        else:
            y.add_(v, alpha=-lr)


def _inner_step_coupled_after(
    ys: Sequence[Tensor],
    grads: Sequence[Tensor],
    xs: Sequence[Tensor],
    vs: Sequence[Tensor],
    scratch: Sequence[Tensor],
    lr: float,
    momentum: float,
    nesterov: bool,
    weight_decay: float,
    gamma: float,
) -> None:
    """``g = grad + wd y``; ``v = m v + g``; ``y -= lr' ((g + m v) + gamma (y - x))``."""
    for y, grad, x, v, s in zip(ys, grads, xs, vs, scratch):
        if weight_decay != 0.0:
            torch.add(grad, y, alpha=weight_decay, out=s)
        else:
            s.copy_(grad)
        if momentum != 0.0:
            torch.add(s, v, alpha=momentum, out=v)
            if nesterov:
                s.add_(v, alpha=momentum)
            else:
                s.copy_(v)
        if gamma != 0.0:
            s.add_(y, alpha=gamma).sub_(x, alpha=gamma)
        y.add_(s, alpha=-lr)


def add_noise(ys: Sequence[Tensor], noises: Sequence[Tensor], *, lr: float, noise: float) -> None:
    """Langevin term ``y += eps sqrt(2 lr') xi`` for standard normal ``xi`` (temperature eps^2)."""
    scale = noise * (2.0 * lr) ** 0.5
    for y, xi in zip(ys, noises):
        y.add_(xi, alpha=scale)


def ema_update(zs: Sequence[Tensor], ys: Sequence[Tensor], *, alpha: float) -> None:
    """``z = alpha z + (1 - alpha) y``; alpha weighs the *old* average (0.75 in the papers)."""
    for z, y in zip(zs, ys):
        z.lerp_(y, 1.0 - alpha)


def outer_step(
    xs: Sequence[Tensor],
    zs: Sequence[Tensor],
    us: Sequence[Tensor],
    rs: Sequence[Tensor | None],
    scratch: Sequence[Tensor],
    *,
    lr: float,
    momentum: float,
    nesterov: bool,
    rho: float,
    weight_decay: float = 0.0,
) -> None:
    """``d = (x - z) + rho (x - r)``; ``u = m u + d``; ``x -= lr (d + m u)``.

    ``r`` (broadcast over the replica rows) is the mean over all replicas of ``z``; ``None`` when
    ``rho`` is zero, where it is not needed. ``weight_decay`` adds ``wd x`` to ``d`` (the
    Entropy-SGD authors' outer step does; Parle's does not).
    """
    for x, z, u, r, s in zip(xs, zs, us, rs, scratch):
        torch.sub(x, z, out=s)
        if weight_decay != 0.0:
            s.add_(x, alpha=weight_decay)
        if rho != 0.0:
            assert r is not None
            s.add_(x, alpha=rho).sub_(r, alpha=rho)
        _nesterov_update(x, s, u, lr=lr, momentum=momentum, nesterov=nesterov)


def elastic_step(
    xs: Sequence[Tensor],
    grads: Sequence[Tensor],
    us: Sequence[Tensor],
    rs: Sequence[Tensor | None],
    scratch: Sequence[Tensor],
    *,
    lr: float,
    momentum: float,
    nesterov: bool,
    weight_decay: float,
    rho: float,
) -> None:
    """No inner loop: ``d = grad + wd x + rho (x - r)`` with ``r`` the mean of the anchors."""
    for x, grad, u, r, s in zip(xs, grads, us, rs, scratch):
        if weight_decay != 0.0:
            torch.add(grad, x, alpha=weight_decay, out=s)
        else:
            s.copy_(grad)
        if rho != 0.0 and r is not None:
            s.add_(x, alpha=rho).sub_(r, alpha=rho)
        _nesterov_update(x, s, u, lr=lr, momentum=momentum, nesterov=nesterov)
