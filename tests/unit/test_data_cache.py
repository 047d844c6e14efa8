"""The MNIST-1D cache: a run reads back exactly the arrays it would have generated."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from elastic_entropy import data_cache
from elastic_entropy.data import load_dataset


def _splits(seed: int) -> list[torch.Tensor]:
    splits = load_dataset("mnist1d", seed=seed)
    return [splits.x_train, splits.y_train, splits.x_test, splits.y_test]


def test_the_cached_data_set_is_the_generated_one_bit_for_bit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ELASTIC_ENTROPY_CACHE", str(tmp_path / "fresh"))
    generated = _splits(seed=3)
    files = list((tmp_path / "fresh").glob("mnist1d-*.npz"))
    assert len(files) == 1  # written by the first load
    read_back = _splits(seed=3)
    assert all(torch.equal(a, b) for a, b in zip(generated, read_back))
    _splits(seed=4)  # another seed, another file: the key holds every argument
    assert len(list((tmp_path / "fresh").glob("mnist1d-*.npz"))) == 2
    assert not torch.equal(_splits(seed=4)[0], generated[0])


def test_a_damaged_or_unwritable_cache_is_no_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ELASTIC_ENTROPY_CACHE", str(tmp_path / "cache"))
    made = {"x": np.arange(6.0)}
    first = data_cache.cached("demo", "k", lambda: made)
    (path,) = (tmp_path / "cache").glob("demo-*.npz")
    path.write_bytes(b"not a zip archive")  # a truncated or foreign file: generated again
    calls: list[int] = []
    again = data_cache.cached("demo", "k", lambda: calls.append(1) or made)
    assert calls == [1] and np.array_equal(again["x"], first["x"])
    assert np.array_equal(np.load(path)["x"], made["x"])  # and the damaged file replaced
    blocker = tmp_path / "a file"
    blocker.write_text("")
    monkeypatch.setenv("ELASTIC_ENTROPY_CACHE", str(blocker / "below"))
    assert np.array_equal(data_cache.cached("demo", "k", lambda: made)["x"], made["x"])
