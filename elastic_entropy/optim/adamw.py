"""The AdamW inner step of the Parle family: Entropy-Adam's inner loop and DiLoCo's.

The Entropy-SGD paper trained its language models with Entropy-Adam: the inner loop's gradient
is the minibatch gradient plus the proximal coupling ``gamma (y - x)``, and that sum goes into
Adam's moments, as the gradient of the inner problem. Weight decay is decoupled (AdamW,
Loshchilov and Hutter): it shrinks ``y`` directly, outside the moments. DiLoCo (Douillard et al.
2023) runs the same step with ``gamma = 0``. The arithmetic is ``torch.optim.AdamW``'s
single-tensor path, operation for operation, so that with ``gamma = 0`` one replica's steps are
those of ``torch.optim.AdamW(foreach=False)`` bit for bit (a parity test holds it).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch import Tensor

ADAM_STATE = ("adam_avg", "adam_avg_sq")  # Adam's moments, per replica, in the checkpoint


def adamw_step(
    ys: Sequence[Tensor],
    grads: Sequence[Tensor],
    xs: Sequence[Tensor] | None,
    avgs: Sequence[Tensor],
    avg_sqs: Sequence[Tensor],
    scratch: Sequence[Tensor],
    *,
    step: int,
    lr: float,
    betas: tuple[float, float],
    eps: float,
    weight_decay: float,
    gamma: float,
) -> None:
    """``g = grad + gamma (y - x)``; ``m = b1 m + (1 - b1) g``; ``v = b2 v + (1 - b2) g^2``;
    ``y = (1 - lr wd) y - lr m_hat / (sqrt(v_hat) + eps)`` with the bias corrections of step
    ``step`` (1-based). ``xs`` (the anchors) only when ``gamma > 0``; ``grads`` is left as it
    is (the coupled gradient is formed in ``scratch``)."""
    beta1, beta2 = betas
    correction1 = 1.0 - beta1**step
    correction2_sqrt = (1.0 - beta2**step) ** 0.5  # torch's own rounding, not math.sqrt's
    for i, y in enumerate(ys):
        g = grads[i]
        if gamma != 0.0:
            assert xs is not None
            g = scratch[i].copy_(y).sub_(xs[i]).mul_(gamma).add_(grads[i])
        y.mul_(1.0 - lr * weight_decay)
        avgs[i].lerp_(g, 1.0 - beta1)
        avg_sqs[i].mul_(beta2).addcmul_(g, g, value=1.0 - beta2)
        denom = (avg_sqs[i].sqrt() / correction2_sqrt).add_(eps)
        y.addcdiv_(avgs[i], denom, value=-lr / correction1)


def adamw_inner_step(
    storage: Any, group: dict[str, Any], cols: slice, step: int, lr: float, gamma: float
) -> None:
    """:func:`adamw_step` on the columns ``cols`` of one flat storage (all its replica rows),
    with the parameter group's betas, eps and weight decay."""
    adamw_step(
        [storage.live[:, cols]],
        [storage.grad[:, cols]],
        [storage.state["anchor"][:, cols]] if gamma != 0.0 else None,
        [storage.state[ADAM_STATE[0]][:, cols]],
        [storage.state[ADAM_STATE[1]][:, cols]],
        [storage.scratch[:, cols]],
        step=step,
        lr=lr,
        betas=group["betas"],
        eps=group["eps"],
        weight_decay=group["weight_decay"],
        gamma=gamma,
    )


def check_adam(lr: float, betas: tuple[float, float], eps: float, name: str = "lr") -> None:
    """AdamW's hyper-parameters, each bad one a one-line ValueError as torch.optim's."""
    if not lr >= 0.0:
        raise ValueError(f"Invalid {name} value: {lr} (AdamW's rate: must be >= 0)")
    if len(betas) != 2 or not all(0.0 <= b < 1.0 for b in betas):
        raise ValueError(f"Invalid betas value: {list(betas)} (two numbers in [0, 1))")
    if not eps > 0.0:
        raise ValueError(f"Invalid eps value: {eps} (must be > 0)")
