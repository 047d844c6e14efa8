"""Entropy-SGD: Parle without the elastic coupling (``rho = 0``)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from torch import Tensor

from elastic_entropy.comm.base import Communicator
from elastic_entropy.defaults import NUM_INNER_STEPS
from elastic_entropy.optim.parle import Parle
from elastic_entropy.scoping import Schedule

VARIANTS = ("parle", "iclr2017")


class EntropySGD(Parle):
    r"""Entropy-SGD (Chaudhari et al., ICLR 2017): gradient descent on the local entropy.

    The inner loop (``L`` Langevin steps pulled towards the anchor by ``gamma``, averaged into
    ``z``) estimates ``<y>`` under ``exp(-f(y) - gamma |x - y|^2 / 2)``, so that ``x - z`` is
    ``grad f_gamma(x) / gamma``; the outer step is Nesterov on it. Several replicas (``comm``) are
    independent: without ``rho`` nothing couples them.

    ``variant="parle"``: :class:`Parle`'s steps with ``rho = 0`` (the Parle code's inner loop:
    the coupling inside the inner momentum, which persists across outer steps). ``"iclr2017"``:
    the Entropy-SGD authors' own update (ucla-vision/entropy-sgd, ``python/optim.py``; the Lua
    ``entropyoptim.lua`` orders its inner step alike)::

        y <- x ; z <- x ; v <- 0                       (the inner momentum restarts)
        repeat L times:  g = grad f_B(y) + wd y ;  v = m v + g
                         y = y - lr' (g + m v + gamma_t (y - x)) + noise sqrt(2 lr') xi
                         z = alpha z + (1 - alpha) y
        d = (x - z) + wd x ;  u = m u + d ;  x = x - lr (d + m u)

    so momentum acts on the gradient alone, the coupling and the noise join after it, and weight
    decay enters the outer step too. What is not copied: their outer momentum starts at the first
    minibatch's gradient rather than 0, each outer step spends one more minibatch on a gradient at
    ``x`` that ``L > 0`` discards, and their PyTorch port never advanced its scoping counter.

    Example::

        opt = EntropySGD(model.parameters(), lr=1.0, inner_lr=0.1, num_inner_steps=20,
                         noise=1e-4, variant="iclr2017")
    """

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]],
        lr: float,
        *,
        inner_lr: float | None = None,
        momentum: float = 0.9,
        nesterov: bool = True,
        num_inner_steps: int = NUM_INNER_STEPS,
        gamma: float = 0.03,
        alpha: float = 0.75,
        noise: float = 0.0,
        weight_decay: float = 0.0,
        gamma_schedule: Schedule | None = None,
        comm: Communicator | None = None,
        seed: int | None = None,
        same_init: bool = True,
        inner_lr_follows_lr: bool = True,
        variant: str = "parle",
        inner_optimizer: str = "sgd",
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        fused: bool | None = None,
    ) -> None:
        if num_inner_steps < 1:
            raise ValueError(
                f"Invalid num_inner_steps value: {num_inner_steps} (Entropy-SGD needs an inner "
                "loop, >= 1; use SGD for none)"
            )
        if variant not in VARIANTS:
            raise ValueError(f"Invalid variant: {variant!r} (choose one of {', '.join(VARIANTS)})")
        self.variant = variant
        is_iclr2017 = variant == "iclr2017"
        self._couple_after_momentum = is_iclr2017
        self._resets_inner_momentum = is_iclr2017
        self._outer_weight_decay = is_iclr2017
        super().__init__(
            params,
            lr,
            inner_lr=inner_lr,
            momentum=momentum,
            nesterov=nesterov,
            num_inner_steps=num_inner_steps,
            gamma=gamma,
            rho=0.0,
            alpha=alpha,
            noise=noise,
            weight_decay=weight_decay,
            gamma_schedule=gamma_schedule,
            comm=comm,
            seed=seed,
            same_init=same_init,
            inner_lr_follows_lr=inner_lr_follows_lr,
            inner_optimizer=inner_optimizer,  # adamw: Entropy-Adam
            betas=betas,
            eps=eps,
            fused=fused,
        )
