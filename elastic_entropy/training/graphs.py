"""Every replica's forward and backward of a process in one CUDA graph.

A small network's training step on a GPU is bound by kernel launches, not by arithmetic: R
replicas run one after another cost about R times one, and CUDA streams do not help. Captured
together in one graph the launches go, and R replicas cost little more than one (the numbers are in
issue 3 and ``benchmarks/replicas_per_device.py``).

What is captured: the forward pass, the loss and the backward pass of every
replica of the process, from static input buffers into the optimizer's flat gradient buffer (the
parameters' ``.grad`` are views of it, so the graph's in-place accumulation lands there). What is
not: the optimizer's step. It is a handful of kernels over one flat ``[replicas, N]`` buffer
whatever the number of tensors, so launches are not its cost; its scalars (lr, gamma, rho) change
under scoping and ``lr_schedule``, which a graph would freeze; and its outer step talks to other
processes.

The first ``warmup`` calls run eagerly on a side stream (as torch asks before a capture); they
are real training steps. The next call captures, replays, and checks the replay against an eager
pass of the same minibatch from the same state: gradients, losses and normalisation statistics
must agree to tolerance, or the graph is dropped with a warning and training goes on eagerly. The
eager result is the one kept, so the step that checks is the plain path's step.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TypeAlias

import torch
from torch import Tensor, nn

from elastic_entropy.training.passes import Augment, forward_backward

log = logging.getLogger(__name__)

# makes the replay function of a pass
Capture: TypeAlias = Callable[[Callable[[], Tensor]], Callable[[], Tensor]]

# A replay runs the kernels the eager pass runs, but cuDNN's atomics may sum in another order: the
# check is normwise (largest difference against the largest value of each tensor), loose enough for
# that and far tighter than a miscaptured pass (stale inputs, lost accumulation), which is O(1) off
_TOLERANCE = {torch.float32: 1e-3, torch.float64: 1e-6}
_LOW_PRECISION_TOLERANCE = 3e-2  # bf16, fp16


class GraphedPasses:
    """Forward and backward of every replica on its minibatch: eagerly, then from a CUDA graph.

    ``capture`` makes the replay function of a pass; the default records a CUDA graph. On a
    CPU the object can still run (``capture=None``): every call is then the eager pass from the
    static buffers, which is how the CPU tests hold its bookkeeping to the plain path.
    """

    def __init__(
        self,
        models: list[nn.Module],
        x_train: Tensor,
        y_train: Tensor,
        batch_size: int,
        *,
        warmup: int = 3,
        capture: Capture | None = None,
        strict: bool = False,
        augment: Augment | None = None,
    ) -> None:
        self.models = models
        self.augment = augment  # outside the graph: one fresh draw per step
        self.x_train, self.y_train = x_train, y_train
        # one allocation per replica, not slices of one: a slice's alignment depends on its
        # index, and cuBLAS/cuDNN pick kernels (and so roundings) by alignment, as for the
        # fresh minibatch tensors of the plain path
        shape, device = (batch_size, *x_train.shape[1:]), x_train.device
        self.x = [torch.empty(shape, dtype=x_train.dtype, device=device) for _ in models]
        self.y = [torch.empty(batch_size, dtype=y_train.dtype, device=device) for _ in models]
        self.warmup = warmup
        self.capture = capture
        self.strict = strict  # cluster.cuda_graphs=on: a graph that cannot be used is an error
        self.calls = 0
        self.replay: Callable[[], Tensor] | None = None
        self.is_dropped = capture is None  # no graph will be made
        # the largest difference the check found when the replay failed it; None otherwise
        self.max_difference: float | None = None

    @property
    def is_active(self) -> bool:
        """Whether the coming calls replay a graph."""
        return self.replay is not None

    def _load(self, indices: list[Tensor]) -> None:
        for a, index in enumerate(indices):
            index = index.to(self.x_train.device)
            torch.index_select(self.x_train, 0, index, out=self.x[a])
            torch.index_select(self.y_train, 0, index, out=self.y[a])
            if self.augment is not None:
                self.x[a].copy_(self.augment(self.x[a], a))

    def _pass(self) -> Tensor:
        """The plain path's arithmetic from the static buffers: ``[2, replicas]`` loss, accuracy."""
        return torch.stack(
            [forward_backward(m, x, y) for m, x, y in zip(self.models, self.x, self.y)], dim=1
        )

    def __call__(self, indices: list[Tensor]) -> Tensor:
        self._load(indices)
        self.calls += 1
        if self.replay is not None:
            return self.replay().clone()  # the graph's output is overwritten by the next replay
        if self.is_dropped or self.calls <= self.warmup:
            return self._warm_pass()
        return self._capture_and_check()

    def _warm_pass(self) -> Tensor:
        device = self.x_train.device
        if device.type != "cuda":
            return self._pass()
        side = torch.cuda.Stream(device)
        side.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(side):
            stats = self._pass()
        torch.cuda.current_stream(device).wait_stream(side)
        return stats

    # ------------------------------------------------------------------------------ the check
    def _buffers(self) -> list[Tensor]:
        # normalisation statistics, and BatchNorm's step counter, which a pass moves on too
        return [b for m in self.models for b in m.buffers()]

    def _grads(self) -> list[Tensor]:
        grads = []
        for model in self.models:
            for p in model.parameters():
                if p.grad is None:  # a step has to keep gradients where a graph finds them
                    raise RuntimeError("a parameter has no .grad buffer to accumulate into")
                grads.append(p.grad)
        return grads

    def _grad_addresses(self) -> list[int]:
        return [g.data_ptr() for g in self._grads()]

    def _capture_and_check(self) -> Tensor:
        assert self.capture is not None
        before = [b.clone() for b in self._buffers()]
        addresses = self._grad_addresses()
        try:
            replay = self.capture(self._pass)
            graphed = replay().clone()
        except Exception as error:  # an op that cannot be captured: train on without a graph
            self._drop(f"capture failed ({type(error).__name__}: {error})", before)
            return self._pass()
        if self._grad_addresses() != addresses:
            # the optimizer reads its flat buffer: gradients written elsewhere would never reach it
            self._drop("its gradients are not the optimizer's buffer", before)
            return self._pass()
        graph_grads = [g.clone() for g in self._grads()]
        graph_buffers = [b.clone() for b in self._buffers()]
        self._rewind(before)
        eager = self._pass()
        difference = _max_difference(
            [graphed, *graph_grads, *graph_buffers], [eager, *self._grads(), *self._buffers()]
        )
        self.max_difference = difference
        if difference is None:
            self.replay = replay
            log.info(
                "CUDA graph of %d replicas' forward+backward captured and checked against "
                "the eager pass",
                len(self.models),
            )
        else:
            self._drop(f"its replay differs from the eager pass by {difference:.3g}", None)
        return eager

    def _rewind(self, buffers: list[Tensor]) -> None:
        """Back to the state before the pass: gradients zero (a pass begins there), buffers."""
        for grad in self._grads():
            grad.zero_()
        for saved, b in zip(buffers, self._buffers()):
            b.copy_(saved)

    def _drop(self, why: str, before: list[Tensor] | None) -> None:
        if self.strict:
            raise ValueError(
                f"cluster.cuda_graphs=on but the CUDA graph cannot be used: {why}; "
                "use cluster.cuda_graphs=auto to step eagerly instead"
            )
        log.warning("CUDA graphs off for this run: %s; the replicas step eagerly", why)
        self.is_dropped = True
        self.replay = None
        if before is not None:
            self._rewind(before)


def _max_difference(got: list[Tensor], expected: list[Tensor]) -> float | None:
    """None when every pair agrees to its dtype's tolerance; otherwise the largest difference."""
    worst, agree = 0.0, True
    for g, e in zip(got, expected):
        if not torch.equal(g.isnan(), e.isnan()):
            return float("nan")
        # counters (BatchNorm's num_batches_tracked) must agree exactly
        tolerance = (
            _TOLERANCE.get(e.dtype, _LOW_PRECISION_TOLERANCE) if e.is_floating_point() else 0
        )
        g, e = g.double().nan_to_num(), e.double().nan_to_num()
        difference = float((g - e).abs().max()) if g.numel() else 0.0
        scale = float(e.abs().max()) if e.numel() else 0.0
        agree = agree and difference <= tolerance * scale + 1e-12
        worst = max(worst, difference)
    return None if agree else worst


def cuda_graph_capture(device: torch.device) -> Capture:
    """Record ``fn`` in a CUDA graph; its returned tensor is the graph's static output."""

    def capture(fn: Callable[[], Tensor]) -> Callable[[], Tensor]:
        graph = torch.cuda.CUDAGraph()
        stream = torch.cuda.current_stream(device)
        torch.cuda.synchronize(device)
        try:
            # thread_local: CUDA calls of other threads (NCCL's watchdog, loggers) may go on
            with torch.cuda.graph(graph, capture_error_mode="thread_local"):
                out = fn()
        finally:
            # a capture that fails raises before torch restores the stream: the eager steps
            # after it must run where they always do
            torch.cuda.set_stream(stream)
            torch.cuda.synchronize(device)

        def replay() -> Tensor:
            graph.replay()
            return out

        return replay

    return capture


def graphed_passes(
    mode: str,
    models: list[nn.Module],
    x_train: Tensor,
    y_train: Tensor,
    batch_size: int,
    *,
    has_hooks: bool,
    augment: Augment | None = None,
) -> GraphedPasses | None:
    """The CUDA-graph path when ``cluster.cuda_graphs`` (``mode``) asks for it and it can be
    taken; None for the plain path. ``on`` where it cannot be taken is a ValueError."""
    if mode == "off":
        return None
    device = x_train.device
    why_not = None
    if device.type != "cuda":
        why_not = f"the device is {device.type}, not CUDA"
    elif has_hooks:
        # dropout swaps each replica's random stream around its forward, DDP all-reduces in
        # backward hooks: neither can live inside a graph
        why_not = "the model has dropout or runs under DistributedDataParallel"
    if why_not is None:
        capture = cuda_graph_capture(device)
        return GraphedPasses(
            models,
            x_train,
            y_train,
            batch_size,
            capture=capture,
            strict=mode == "on",
            augment=augment,
        )
    if mode == "on":
        raise ValueError(
            f"Invalid cluster.cuda_graphs: 'on' ({why_not}); use cluster.cuda_graphs=auto or off"
        )
    return None
