"""The replicas' training passes: forward, loss and backward of every replica of a process on its
own minibatch, eagerly (here) or from one CUDA graph (:mod:`.graphs`).

Replica ``a`` of a process draws its dropout masks from a random stream of its own (keyed by its
global index), so that a replica's randomness does not depend on its neighbours or the layout.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import torch
from torch import Tensor, nn

from elastic_entropy.training.loss_scale import LossScale

# a replica's minibatch and its local index -> the minibatch augmented (crops, flips)
Augment = Callable[[Tensor, int], Tensor]


def forward_backward(model: nn.Module, x: Tensor, y: Tensor, scale: float = 1.0) -> Tensor:
    """One replica's training pass: backward of its cross-entropy (times ``scale``, the fp16
    loss scale); ``[loss, accuracy]``."""
    out = model(x)
    # [B, C] logits of classes, or [B, T, V] of each position's next token (flattened: the
    # mean over every token of the minibatch)
    loss = nn.functional.cross_entropy(out.flatten(0, -2), y.flatten())
    (loss * scale if scale != 1.0 else loss).backward()
    return torch.stack([loss.detach(), (out.detach().argmax(dim=-1) == y).float().mean()])


PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


class Autocast(nn.Module):
    """``model``'s forward under ``torch.autocast`` (bf16 or fp16 matmuls and convolutions), its
    logits back in float32 for the loss; the parameters, their gradients and the optimizer stay
    float32 (the flat buffers are not touched)."""

    def __init__(self, model: nn.Module, dtype: torch.dtype) -> None:
        super().__init__()
        self.model = model
        self.dtype = dtype

    def forward(self, x: Tensor) -> Tensor:
        with torch.autocast(device_type=x.device.type, dtype=self.dtype):
            out = self.model(x)
        return out.float()


def with_precision(models: list[nn.Module], precision: str) -> list[nn.Module]:
    """The forward models for ``precision`` (``fp32``: as they are)."""
    dtype = PRECISIONS[precision]
    return models if dtype is None else [Autocast(m, dtype) for m in models]


def has_dropout(model: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.dropout._DropoutNd) for m in model.modules())


class ReplicaRandomness:
    """Per-replica state of torch's default generator (dropout masks), swapped in around each
    replica's forward so that a replica's randomness does not depend on its neighbours."""

    def __init__(self, seeds: list[int], device: torch.device, enabled: bool) -> None:
        self.enabled = enabled
        self.device = device
        self.states: list[tuple[Tensor, Tensor | None]] = []
        if not enabled:
            return
        with torch.random.fork_rng(devices=self._cuda_devices()):
            for seed in seeds:
                torch.manual_seed(seed)
                self.states.append(self._get())

    def _cuda_devices(self) -> list[int]:
        return [self.device.index or 0] if self.device.type == "cuda" else []

    def _get(self) -> tuple[Tensor, Tensor | None]:
        cuda = torch.cuda.get_rng_state(self.device) if self.device.type == "cuda" else None
        return torch.get_rng_state(), cuda

    def _set(self, state: tuple[Tensor, Tensor | None]) -> None:
        torch.set_rng_state(state[0])
        if state[1] is not None:
            torch.cuda.set_rng_state(state[1], self.device)

    def state_dict(self) -> dict[str, list[list[Tensor | None]]]:
        return {"states": [list(state) for state in self.states]}

    def load_state_dict(self, state: dict[str, list[list[Tensor | None]]]) -> None:
        states = state["states"]
        if len(states) != len(self.states):
            raise ValueError("replica randomness saved for another number of replicas")
        self.states = [(cpu, cuda) for cpu, cuda in states]

    @contextlib.contextmanager
    def use(self, replica: int) -> Iterator[None]:
        if not self.enabled:
            yield
            return
        saved = self._get()
        self._set(self.states[replica])
        try:
            yield
        finally:
            self.states[replica] = self._get()
            self._set(saved)


# a replica's minibatch indices and its local index -> the minibatch (x, y) on the device
Source = Callable[[Tensor, int], tuple[Tensor, Tensor]]


class TensorBatches:
    """Minibatches gathered by index from the training set held on the device (the tensors
    path; :class:`elastic_entropy.loaders.ReplicaLoaders` is the loader path)."""

    def __init__(self, x_train: Tensor, y_train: Tensor) -> None:
        self.x_train, self.y_train = x_train, y_train

    def __call__(self, index: Tensor, replica: int) -> tuple[Tensor, Tensor]:
        # index_select, not x[index]: the same copy, 15x faster on CPUs for image batches
        index = index.to(self.x_train.device)
        x = torch.index_select(self.x_train, 0, index)
        return x, torch.index_select(self.y_train, 0, index)

    def close(self) -> None:
        """Nothing to stop."""


class PlainPasses:
    """Every replica's pass, one after another, on fresh minibatch tensors from ``source``."""

    def __init__(
        self,
        models: list[nn.Module],
        source: Source,
        randomness: ReplicaRandomness,
        augment: Augment | None = None,
        loss_scale: LossScale | None = None,
    ) -> None:
        self.models = models  # what the forward runs: the replicas, or DDP around them
        self.source = source
        self.loss_scale = loss_scale  # precision=fp16
        self.randomness = randomness
        self.augment = augment  # training minibatches only: never evaluation or the BN refresh

    def __call__(self, indices: list[Tensor]) -> Tensor:
        """``[2, replicas]``: each replica's minibatch loss and accuracy."""
        stats = []
        scale = 1.0 if self.loss_scale is None else self.loss_scale.scale
        for a, model in enumerate(self.models):
            x, y = self.source(indices[a], a)
            if self.augment is not None:
                x = self.augment(x, a)
            with self.randomness.use(a):  # dropout masks are drawn in forward; backward none
                stats.append(forward_backward(model, x, y, scale))
        return torch.stack(stats, dim=1)

    def close(self) -> None:
        """Stop the source's workers, if it has any."""
        close = getattr(self.source, "close", None)
        if close is not None:
            close()
