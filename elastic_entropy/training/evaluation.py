"""Evaluation of the reference (the replicas' mean) and of the replicas.

The reference gets averaged weights, so before it is evaluated its BatchNorm statistics are
recomputed on training data with dropout off: the papers' "dry feed", done by
``torch.optim.swa_utils.update_bn``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor, nn
from torch.optim.swa_utils import update_bn

from elastic_entropy.distributed import gather_objects
from elastic_entropy.training.metrics import per_replica
from elastic_entropy.training.run import Run

BATCH_SIZE = 1024


@torch.no_grad()
def evaluate_batches(
    model: nn.Module, batches: Iterable[tuple[Tensor, Tensor]]
) -> dict[str, float]:
    """Mean cross-entropy and accuracy of ``model`` (in eval mode) over ``batches``."""
    was_training = model.training
    model.eval()
    loss_sum, correct, count = 0.0, 0, 0
    for x, target in batches:
        out = model(x)
        logits, flat = out.flatten(0, -2), target.flatten()  # a class, or each next token
        loss_sum += nn.functional.cross_entropy(logits, flat, reduction="sum").item()
        correct += (logits.argmax(dim=1) == flat).sum().item()
        count += flat.numel()
    model.train(was_training)
    return {"loss": loss_sum / count, "acc": correct / count}


def evaluate(
    model: nn.Module, x: Tensor, y: Tensor, batch_size: int = BATCH_SIZE
) -> dict[str, float]:
    """:func:`evaluate_batches` over tensors held whole."""
    batches = ((x[i : i + batch_size], y[i : i + batch_size]) for i in range(0, len(y), batch_size))
    return evaluate_batches(model, batches)


def evaluate_split(
    run: Run, model: nn.Module, split: str, limit: int | None = None
) -> dict[str, float]:
    """``model`` on the data's ``split`` (its first ``limit`` samples), by either input path."""
    return evaluate_batches(model, run.data.batches(split, BATCH_SIZE, limit))


class _DropoutOff(nn.Module):
    """``model`` with its dropout held in eval mode: ``update_bn`` puts the whole module in
    train mode, and the dry feed must not see dropout's noise in its statistics."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def train(self, mode: bool = True) -> _DropoutOff:
        super().train(mode)
        for m in self.model.modules():
            if isinstance(m, nn.modules.dropout._DropoutNd):
                m.eval()
        return self

    def forward(self, x: Tensor) -> Tensor:
        return self.model(x)


def recompute_batchnorm(model: nn.Module, batches: Iterable[Any]) -> None:
    """Fresh BatchNorm statistics for averaged weights: a cumulative average over one pass of
    ``batches`` (inputs, or ``(input, label)`` pairs)."""
    update_bn(batches, _DropoutOff(model))
    model.eval()


def load_reference(run: Run) -> nn.Module:
    """Copy the reference (a collective call) into the run's reference model, with fresh
    BatchNorm statistics."""
    model = run.reference_model
    with torch.no_grad():
        for p, ref in zip(model.parameters(), run.optimizer.reference()):
            p.copy_(ref)
    recompute_batchnorm(model, run.data.batches("train", BATCH_SIZE))
    return model


def _reference_distances(run: Run) -> list[float]:
    """``|x^a - xbar|`` for the replicas of this process, against the reference just loaded
    (its parameters are the all-reduced mean of the anchors: no further communication)."""
    reference = list(run.reference_model.parameters())
    distances = []
    with torch.no_grad():
        for a in range(run.replicas_per_process):
            square = sum(
                float((x - r).double().square().sum())
                for x, r in zip(run.optimizer.anchors(a), reference)
            )
            distances.append(math.sqrt(square))
    return distances


def _splits(run: Run) -> dict[str, int | None]:
    """Test, validation when there is one, and the first samples of the training set, as many
    as the test split has: each split's name and how many of its samples are evaluated."""
    data = run.data
    splits: dict[str, int | None] = {
        "test": None,
        "train": min(data.num_train, data.size("test")),
    }
    if data.has_val:
        splits["val"] = None
    return splits


def eval_metrics(run: Run) -> dict[str, Any]:
    """The reference (a collective) on every split of :func:`_splits`; each replica's distance
    to it and, with ``logger.eval_replicas``, each replica on the held-out split (validation,
    else test); gathered to rank 0."""
    reference = load_reference(run)
    splits = _splits(run)
    record: dict[str, Any] = {}
    for split, limit in splits.items():
        if run.info.is_main:  # the same reference on every rank: one of them evaluates it
            result = evaluate_split(run, reference, split, limit)
            record[f"reference/{split}_loss"] = result["loss"]
            record[f"reference/{split}_acc"] = result["acc"]
            if run.data.label_shape:  # a language model: its next-token loss as perplexity
                record[f"reference/{split}_perplexity"] = math.exp(min(result["loss"], 700.0))
    held = "val" if "val" in splits else "test"
    distances = _reference_distances(run)
    scores = (
        [evaluate_split(run, model, held, splits[held]) for model in run.models]
        if run.cfg.logger.eval_replicas
        else []
    )
    parts = gather_objects((distances, scores), run.info)
    if not run.info.is_main:
        return {}
    record |= per_replica("reference_distance", [d for part in parts for d in part[0]])
    scores = [score for part in parts for score in part[1]]
    if scores:
        record |= per_replica(f"{held}_loss", [r["loss"] for r in scores])
        record |= per_replica(f"{held}_acc", [r["acc"] for r in scores])
    return record


def final_evaluation(run: Run) -> tuple[dict[str, dict[str, float]], list[tuple[int, float]]]:
    """The reference on the whole test and training sets (and validation), and every replica of
    the job's test accuracy as ``(global replica, acc)``, gathered to rank 0."""
    reference_model = load_reference(run)
    splits = ["test", "train", "val"] if run.data.has_val else ["test", "train"]
    reference = {split: evaluate_split(run, reference_model, split) for split in splits}
    local = [
        (run.comm.replica_offset + a, evaluate_split(run, m, "test")["acc"])
        for a, m in enumerate(run.models)
    ]
    replicas = [item for part in gather_objects(local, run.info) for item in part]
    return reference, replicas
