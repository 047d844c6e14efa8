"""``algorithm.replica_init``: each replica its own initialisation (the authors'), keyed by its
global index so that every layout starts from the same bits; or one initialisation for all."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from elastic_entropy.data import load_dataset
from elastic_entropy.distributed import DistInfo
from elastic_entropy.optim import Parle, replica_param_groups
from elastic_entropy.training.run import _replicas
from tests.conftest import compose_config

DATA = load_dataset("digits")
CPU = torch.device("cpu")


def _weights(model: nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in model.parameters()]


def _built(per: int, rank: int, *overrides: str) -> list[list[torch.Tensor]]:
    cfg = compose_config(
        "model=mlp", "data=digits", f"cluster.replicas_per_process={per}", *overrides
    )
    info = DistInfo(rank=rank, world_size=4 // per, local_rank=rank, device=CPU, backend=None)
    return [_weights(m) for m in _replicas(cfg, DATA, info)]


def _same(a: list[torch.Tensor], b: list[torch.Tensor]) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a, b))


def test_independent_replicas_differ_and_are_the_same_in_any_layout() -> None:
    one = _built(4, 0)
    assert not any(_same(one[a], one[b]) for a in range(4) for b in range(a))
    two = _built(2, 0) + _built(2, 1)  # ranks 0 and 1 of 2x2: global replicas 0, 1 and 2, 3
    four = [w for rank in range(4) for w in _built(1, rank)]
    assert all(_same(one[g], two[g]) and _same(one[g], four[g]) for g in range(4))


def test_shared_replicas_are_copies_of_one_draw() -> None:
    replicas = _built(4, 0, "algorithm.replica_init=shared")
    assert all(_same(replicas[0], w) for w in replicas[1:])
    # and the draw does not depend on the choice: it is the independent build's discarded first
    assert not _same(replicas[0], _built(4, 0)[0])


def test_the_reference_starts_at_the_mean_of_the_anchors() -> None:
    cfg = compose_config("model=mlp", "data=digits", "cluster.replicas_per_process=3")
    info = DistInfo(rank=0, world_size=1, local_rank=0, device=CPU, backend=None)
    models = _replicas(cfg, DATA, info)
    before = [_weights(m) for m in models]
    params = replica_param_groups(m.parameters() for m in models)
    opt = Parle(params, lr=0.1, num_inner_steps=2, same_init=False)
    for a in range(3):
        assert _same(before[a], opt.anchors(a))  # the optimizer kept each replica's own start
    for i, ref in enumerate(opt.reference()):
        torch.testing.assert_close(ref, torch.stack([w[i] for w in before]).mean(dim=0))


@pytest.mark.parametrize("name", ["dp_sgd", "ddp"])
def test_copies_must_start_as_copies(name: str) -> None:
    assert compose_config(f"algorithm={name}").algorithm.replica_init == "shared"
    with pytest.raises(ValueError, match=f"algorithm={name} keeps its replicas copies"):
        compose_config(f"algorithm={name}", "algorithm.replica_init=independent")
