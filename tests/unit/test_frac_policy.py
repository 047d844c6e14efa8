"""``data.policy=frac``: the authors' fractions (``get_loaders`` in pratikac/distributed-ensembles'
loader.py): replica ``i`` of ``n`` takes the contiguous ``frac`` of one fixed shuffle from
``int(N i / n)`` on, wrapping past the end; ``nb`` is the fraction's. On an elastic resume that
changes ``n`` the fractions are dealt again, and the couplings' schedules take the new layout's
settings from the job's outer step."""

from __future__ import annotations

import pytest
import torch

from elastic_entropy.data import REDEALT_POLICIES, ReplicaSampler, minibatches_per_pass
from elastic_entropy.data import replica_indices as indices
from elastic_entropy.training.relayout import Change, Layout, relayout
from tests.unit.test_relayout import _components, _state, _trained


def _order(n: int, seed: int) -> torch.Tensor:
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize(("replicas", "frac"), [(3, 0.5), (6, 0.25), (4, 1.0)])
def test_each_replica_takes_the_authors_contiguous_fraction(replicas: int, frac: float) -> None:
    n, seed = 1000, 7
    order = _order(n, seed)
    for i in range(replicas):
        start, end = int(n * i / replicas), int(n * (i / replicas + frac))
        wanted = order[start:end] if end <= n else torch.cat([order[start:], order[: end % n]])
        got = indices(n, replica=i, num_replicas=replicas, policy="frac", seed=seed, frac=frac)
        assert torch.equal(got, wanted.sort().values), i
    # n frac > 1: they overlap and cover everything; every sample is in about n frac of them
    counts = torch.zeros(n)
    for i in range(replicas):
        share = indices(n, replica=i, num_replicas=replicas, policy="frac", seed=seed, frac=frac)
        counts[share] += 1
    assert counts.min() >= 1 and counts.sum() == pytest.approx(replicas * frac * n, abs=replicas)


def test_the_last_fraction_wraps_past_the_end() -> None:
    order = _order(100, 0)
    last = indices(100, replica=2, num_replicas=3, policy="frac", seed=0, frac=0.5)
    # from int(100 * 2/3) = 66 to int(100 * (2/3 + 1/2)) = 116: 66..99 then 0..15
    assert torch.equal(last, torch.cat([order[66:], order[:16]]).sort().values)


def test_a_sampler_draws_only_its_fraction_and_nb_counts_its_minibatches() -> None:
    sampler = ReplicaSampler(1000, 10, replica=1, num_replicas=3, policy="frac", seed=3, frac=0.5)
    mine = set(indices(1000, replica=1, num_replicas=3, policy="frac", seed=3, frac=0.5).tolist())
    drawn = torch.cat([sampler.next() for _ in range(200)])
    assert set(drawn.tolist()) == mine  # 200 minibatches of 10: four passes over the 500
    assert minibatches_per_pass(1000, 10, num_replicas=3, policy="frac", frac=0.5) == 50
    assert minibatches_per_pass(1000, 10, num_replicas=4, policy="shard") == 25
    assert minibatches_per_pass(1000, 10, num_replicas=4, policy="full") == 100


def test_a_bad_fraction_is_refused() -> None:
    with pytest.raises(ValueError, match=r"Invalid data\.frac: 1\.5"):
        indices(10, replica=0, num_replicas=2, policy="frac", frac=1.5)
    with pytest.raises(ValueError, match=r"Invalid data\.policy: 'halves'"):
        indices(10, replica=0, num_replicas=2, policy="halves")


def test_fractions_are_dealt_again_on_a_new_number_of_replicas() -> None:
    assert {"shard", "frac"} <= REDEALT_POLICIES and "full" not in REDEALT_POLICIES


@pytest.mark.parametrize("new", [Layout(1, 3), Layout(2, 2)])
def test_the_schedules_keep_the_outer_step_and_take_this_layouts_rate(new: Layout) -> None:
    """A shard's nb moves with the number of replicas, and so does a null rate: the couplings go
    on from the saved outer step at the new one; a layout of as many replicas keeps the saved."""
    saved = _trained(4)
    saved_schedule = saved["optimizer"]["parle"]["gamma_schedule"]
    fresh = _state(_components(new.replicas_per_process))
    fresh["optimizer"]["parle"]["gamma_schedule"]["rate"] = 0.25  # this layout's own rate
    state = relayout(
        lambda rank: saved, Change(Layout(1, 4), new), 0, fresh, is_copy=False, reshards=True
    )
    schedule = state["optimizer"]["parle"]["gamma_schedule"]
    assert schedule["t"] == saved_schedule["t"] == 2  # four minibatches of two per outer step
    resized = new.num_replicas != 4
    assert schedule["rate"] == (0.25 if resized else saved_schedule["rate"])
