r"""The local-entropy toolkit: the Deep Relaxation PDE in 1-D (and 2-D), and its pictures.

``f_t(x) = -(1/beta) log( G_{t/beta} * exp(-beta f) )(x)`` solves
``u_t = -1/2 |grad u|^2 + 1/(2 beta) Lap u``; ``grad f_t(x) = (x - <y>) / t`` with ``<y>`` the mean
of ``exp(-beta [f(y) + |x - y|^2 / (2 t)])``; as ``beta -> infinity`` it becomes the Hopf-Lax
formula (Moreau envelope). Here ``t`` is the PDE time (variance); the optimizers' coupling strength
is ``gamma = 1 / t``, and their Langevin temperature ``noise^2`` is ``1 / beta``.

Pictures: ``python -m elastic_entropy.local_entropy plots --out DIR``.
"""

from elastic_entropy.local_entropy.pde import (
    gibbs_mean,
    hopf_lax,
    local_entropy,
    local_entropy_2d,
    local_entropy_grad,
    prox,
)

__all__ = [
    "gibbs_mean",
    "hopf_lax",
    "local_entropy",
    "local_entropy_2d",
    "local_entropy_grad",
    "prox",
]
