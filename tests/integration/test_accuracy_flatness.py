"""The accuracy benchmark records the reference's flatness per run and tables it: one real run
through the benchmark's own ``Bench.run`` (a fresh CLI process), small sizes."""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks.accuracy import FLATNESS, METHODS, Bench, flatness_table

SMALL = [
    "flatness.num_samples=128",
    "flatness.probes=4",
    "flatness.iterations=20",
    "flatness.draws=2",
    "flatness.num_inner_steps=10",
    "flatness.num_nodes=2",
]


def test_records_and_table_hold_the_flatness_of_each_run(tmp_path: Path) -> None:
    bench = Bench(tmp_path, epochs=0.1, seeds=[0], sgd_grid=[])
    args = [*METHODS["sgd"], *FLATNESS, *SMALL]
    result = bench.run("digits evals sgd 0", "digits", args, 0.1, 0)
    bench.record(result, "digits", "sgd", "evals", seed=0, epochs=0.1, settings=args)
    plain = bench.run("digits evals parle 0", "digits", ["algorithm=sgd"], 0.1, 0)
    bench.record(plain, "digits", "parle n=3", "evals", seed=0, epochs=0.1, settings=[])
    found = result["flatness"]
    record, other = bench.records
    assert record["top_eigenvalue"] == found["top_eigenvalue"]
    assert record["hessian_trace"] == found["trace"]
    assert record["rise_0.1"] == found["rises"][2]["mean"]
    assert record["local_entropy"] == found["local_entropy"]["local_entropy"]
    assert "top_eigenvalue" not in other  # a run without flatness.enabled
    table = flatness_table(bench, ["digits"], ["sgd", "parle n=3"]).splitlines()
    assert len(table) == 3 and "parle n=3" not in table[2]
    cells = table[2].split()
    assert cells[:3] == ["digits", "sgd", "evals"]
    assert float(cells[3]) == pytest.approx(found["top_eigenvalue"], rel=1e-3)
    assert float(cells[6]) == pytest.approx(found["trace"], rel=1e-3)
