"""Elastic restarts, the state alone: cutting a checkpoint of one layout into another (one process).

The end-to-end runs (SIGKILL, torchrun, bitwise continuation) are in
``tests/distributed/test_elastic_resume.py``; here the cut itself: nothing of a replica is lost
on a round trip, new replicas start from the reference with zero momenta, copies copy.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import nn

from elastic_entropy.comm import LocalCommunicator
from elastic_entropy.comm.base import tree_sum
from elastic_entropy.data import ReplicaSampler
from elastic_entropy.optim import Parle, replica_param_groups
from elastic_entropy.training.passes import ReplicaRandomness
from elastic_entropy.training.relayout import Change, Layout, relayout


def _components(per: int, offset: int = 0, streams: bool = True) -> dict[str, Any]:
    torch.manual_seed(0)
    models = nn.ModuleList(
        nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 2)) for _ in range(per)
    )
    opt = Parle(
        replica_param_groups(m.parameters() for m in models),
        lr=0.1,
        num_inner_steps=2,
        noise=0.01 if streams else 0.0,
        seed=1,
        comm=LocalCommunicator(per),
    )
    samplers = [
        ReplicaSampler(40, 4, replica=offset + a, num_replicas=4, seed=2) for a in range(per)
    ]
    seeds = [9 + offset + a for a in range(per)]
    randomness = ReplicaRandomness(seeds, torch.device("cpu"), enabled=streams)
    return {"models": models, "optimizer": opt, "samplers": samplers, "randomness": randomness}


def _state(parts: dict[str, Any], window: list[torch.Tensor] | None = None) -> dict[str, Any]:
    return {
        "models": parts["models"].state_dict(),
        "optimizer": parts["optimizer"].state_dict(),
        "samplers": {"items": [s.state_dict() for s in parts["samplers"]]},
        "randomness": parts["randomness"].state_dict(),
        "progress": {"step": 4, "wall_s": 1.0, "window": window or []},
        "step": 4,
    }


def _trained(per: int, streams: bool = True) -> dict[str, Any]:
    parts = _components(per, streams=streams)
    models, opt = parts["models"], parts["optimizer"]
    for m in models:  # each replica its own weights, so that a mix-up shows
        with torch.no_grad():
            for p in m.parameters():
                p.add_(torch.randn_like(p))
    for _ in range(4):
        for m, sampler in zip(models, parts["samplers"]):
            sampler.next()
            m(torch.randn(5, 3)).square().sum().backward()
        opt.step()
        opt.zero_grad()
    return _state(parts, window=[torch.arange(2.0 * per).view(2, per)])


def _equal(a: Any, b: Any) -> bool:
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_equal(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(_equal(x, y) for x, y in zip(a, b))
    return a == b


def _cut(
    files: list[dict[str, Any]], old: Layout, new: Layout, streams: bool = True, **kwargs: Any
) -> list[dict]:
    change = Change(old, new)
    return [
        relayout(
            lambda r: files[r],
            change,
            rank,
            _state(_components(new.replicas_per_process, rank * new.replicas_per_process, streams)),
            is_copy=kwargs.get("is_copy", False),
            reshards=kwargs.get("reshards", False),
        )
        for rank in range(new.world_size)
    ]


def test_a_round_trip_through_2x2_and_4x1_gives_back_every_replica_bit_for_bit() -> None:
    original = _trained(4)
    two = _cut([original], Layout(1, 4), Layout(2, 2))
    four = _cut(two, Layout(2, 2), Layout(4, 1))
    (back,) = _cut(four, Layout(4, 1), Layout(1, 4))
    for name in ("models", "samplers", "randomness"):
        assert _equal(back[name], original[name]), name
    assert _equal(back["progress"]["window"], original["progress"]["window"])
    for key in ("state", "param_groups"):
        assert _equal(back["optimizer"][key], original["optimizer"][key]), key
    parle, saved = back["optimizer"]["parle"], original["optimizer"]["parle"]
    assert _equal(parle["generators"], saved["generators"])
    assert parle["num_steps"] == saved["num_steps"] == 4
    # and it loads: the optimizer of a 1x4 run takes it
    fresh = _components(4)
    fresh["optimizer"].load_state_dict(back["optimizer"])
    fresh["models"].load_state_dict(back["models"])


def test_the_middle_of_a_round_trip_holds_each_replica_where_it_moved() -> None:
    original = _trained(4)
    two = _cut([original], Layout(1, 4), Layout(2, 2))
    assert two[1]["rank"] == 1 and two[1]["world_size"] == 2
    for key, value in original["models"].items():
        a, rest = key.split(".", 1)
        rank, b = divmod(int(a), 2)
        assert torch.equal(two[rank]["models"][f"{b}.{rest}"], value)
    assert [g["replica"] for g in two[1]["optimizer"]["param_groups"]] == [0, 1]
    assert two[1]["optimizer"]["parle"]["replicas_per_process"] == 2
    assert torch.equal(two[1]["progress"]["window"][0], torch.tensor([[2.0, 3.0], [6.0, 7.0]]))


def test_new_replicas_start_from_the_reference_with_zero_momenta_and_their_own_streams() -> None:
    original = _trained(4)
    (six,) = _cut([original], Layout(1, 4), Layout(1, 6))
    weights = original["models"]
    for rest in ("0.weight", "1.running_mean", "2.bias"):
        mean = tree_sum(torch.stack([weights[f"{a}.{rest}"] for a in range(4)])) / 4
        assert torch.equal(six["models"][f"4.{rest}"], mean)
        assert torch.equal(six["models"][f"5.{rest}"], mean)
    assert torch.equal(six["models"]["4.1.num_batches_tracked"], weights["0.1.num_batches_tracked"])
    groups = six["optimizer"]["param_groups"]
    state = six["optimizer"]["state"]
    new_params = [i for g in groups if g["replica"] >= 4 for i in g["params"]]
    for i in new_params:
        assert not state[i]["inner_momentum"].any() and not state[i]["outer_momentum"].any()
        assert torch.equal(state[i]["anchor"], state[i]["ema"])
    # their streams are the ones a fresh 1x6 run gives replicas 4 and 5, not copies of others'
    fresh = _state(_components(6))
    assert _equal(six["samplers"]["items"][4:], fresh["samplers"]["items"][4:])
    assert _equal(six["randomness"]["states"][4:], fresh["randomness"]["states"][4:])
    gens = six["optimizer"]["parle"]["generators"]
    assert not torch.equal(gens[4], gens[0]) and torch.equal(
        gens[0], original["optimizer"]["parle"]["generators"][0]
    )
    assert six["progress"]["window"] == []  # a window over other replicas does not carry over
    fresh_opt = _components(6)["optimizer"]
    fresh_opt.load_state_dict(six["optimizer"])


def test_fewer_replicas_keep_the_first_ones_and_copies_copy() -> None:
    original = _trained(4)
    (three,) = _cut([original], Layout(1, 4), Layout(1, 3))
    assert _equal(three["models"], {k: v for k, v in original["models"].items() if k[0] in "012"})
    (five,) = _cut([original], Layout(1, 4), Layout(1, 5), is_copy=True)
    zero = {k[2:]: v for k, v in original["models"].items() if k.startswith("0.")}
    assert _equal({k[2:]: v for k, v in five["models"].items() if k.startswith("4.")}, zero)


@pytest.mark.parametrize("reshards", [False, True])
def test_shards_are_dealt_again_only_when_the_number_of_replicas_changes(reshards: bool) -> None:
    original = _trained(4)
    (three,) = _cut([original], Layout(1, 4), Layout(1, 3), reshards=reshards)
    fresh = _state(_components(3))["samplers"]["items"]
    kept = original["samplers"]["items"][:3]
    assert _equal(three["samplers"]["items"], fresh if reshards else kept)


def test_replicas_without_noise_or_dropout_streams_move_and_grow_too() -> None:
    """No dropout and no Langevin noise: the per-replica stream lists are empty."""
    original = _trained(2, streams=False)
    four = _cut([original], Layout(1, 2), Layout(2, 2), streams=False)
    assert [f["randomness"]["states"] for f in four] == [[], []]
    assert four[1]["optimizer"]["parle"]["generators"] == []
    back = _cut(four, Layout(2, 2), Layout(1, 2), streams=False)[0]
    assert _equal(back["models"], original["models"])
    assert _equal(back["optimizer"]["state"], original["optimizer"]["state"])
