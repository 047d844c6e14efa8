"""The couplings the app logs, held to the authors' scoping rule (issue 14).

``DistESGD`` (pratikac/distributed-ensembles) grows its couplings by ``(1 + 0.5 / nb)`` per outer
step, ``nb`` the minibatches in one pass over a replica's own data: ``gamma_t = min(gamma_0
(1 + 0.5 / nb)^t, gamma_max)`` and the same for ``rho``. Each case runs the real app and reads
``gamma`` and ``rho`` from every record of ``metrics.jsonl``; ``nb`` is worked out here from the
data set's size, the batch and the data policy, not asked of the app.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from elastic_entropy.data import load_dataset
from tests.conftest import run_cli

GAMMA0, RHO0 = 0.02, 0.5
BASE = [
    "data=digits",
    "model=mlp",
    "model.hidden=[8]",
    f"algorithm.gamma={GAMMA0}",
    f"algorithm.rho={RHO0}",
    "eval_every=1000",
    "progress=false",
    "logger.plots=false",
]


def _num_train() -> int:
    return len(load_dataset("digits").y_train)


def _own_samples(policy: str, num_replicas: int, frac: float | None) -> int:
    """How many samples global replica 0 draws from, by the policies' definitions."""
    n = _num_train()
    if policy == "frac":
        assert frac is not None
        return int(n * frac)  # the authors' cut: [0, int(N frac)) of one shuffle
    if policy == "shard":
        return math.ceil(n / num_replicas)  # the first of n near-equal shards is the largest
    return n


def _records(run_dir: Path) -> list[dict]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if "gamma" in r]


def _expected(initial: float, rate: float, cap: float, t: int) -> float:
    return min(initial * (1.0 + rate) ** t, cap)


# (batch, L, replicas, policy, frac, rho cap): nb = 44, 22, 11 and 22 against L = 5, 3, 4, 7,
# so that nb is not a multiple of L in any of them; the low rho caps are reached within the run
CASES = [
    (32, 5, 2, "full", None, 0.6),
    (64, 3, 2, "full", None, math.inf),
    (32, 4, 4, "shard", None, 0.55),
    (32, 7, 3, "frac", 0.5, 0.56),
]


@pytest.mark.parametrize(("batch", "L", "replicas", "policy", "frac", "rho_max"), CASES)
def test_logged_couplings_follow_the_authors_rate(
    tmp_path: Path,
    batch: int,
    L: int,
    replicas: int,
    policy: str,
    frac: float | None,
    rho_max: float,
) -> None:
    nb = _own_samples(policy, replicas, frac) // batch
    assert nb % L != 0
    outer_steps = 2 * nb // L + 3  # past the caps in the capped cases
    args = [
        *BASE,
        f"data.batch_size={batch}",
        f"algorithm.num_inner_steps={L}",
        f"cluster.replicas_per_process={replicas}",
        f"data.policy={policy}",
        f"max_steps={outer_steps * L}",
        f"scoping.rho_max={rho_max}",
        f"hydra.run.dir={tmp_path / 'run'}",
    ]
    if frac is not None:
        args.append(f"data.frac={frac}")
    done = run_cli(args, tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    records = _records(tmp_path / "run")
    assert [r["outer_step"] for r in records] == list(range(1, outer_steps + 1))
    rate = 0.5 / nb
    for record in records:
        # a record after outer step k holds the couplings that step ran with: t = k - 1
        t = record["outer_step"] - 1
        assert record["gamma"] == pytest.approx(_expected(GAMMA0, rate, 1.0, t), rel=1e-12)
        assert record["rho"] == pytest.approx(_expected(RHO0, rate, rho_max, t), rel=1e-12)
    if math.isfinite(rho_max):
        assert records[-1]["rho"] == rho_max and records[0]["rho"] < rho_max


def test_the_earlier_rate_per_pass_is_still_there(tmp_path: Path) -> None:
    """``scoping.rate_period=pass``: ``0.5 / (passes' minibatches // L)``, what runs made before
    the authors' rate grew by (their checkpoints resume with it)."""
    batch, L = 32, 5
    outer_steps = 6
    done = run_cli(
        [
            *BASE,
            f"data.batch_size={batch}",
            f"algorithm.num_inner_steps={L}",
            "scoping.rate_period=pass",
            f"max_steps={outer_steps * L}",
            f"hydra.run.dir={tmp_path / 'run'}",
        ],
        tmp_path,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    rate = 0.5 / ((_num_train() // batch) // L)
    records = _records(tmp_path / "run")
    assert len(records) == outer_steps
    for record in records:
        t = record["outer_step"] - 1
        assert record["rho"] == pytest.approx(_expected(RHO0, rate, 10.0, t), rel=1e-12)


@pytest.mark.parametrize("inner_lr", ["fixed", "follow"])
def test_a_step_in_the_authors_epochs_drops_lr_with_inner_lr_fixed_or_following(
    tmp_path: Path, inner_lr: str
) -> None:
    """``epoch_unit=nb_outer_steps``: an epoch is ``nb`` outer steps of ``L`` minibatches; their
    ``--lrs [[1,0.1],[2,0.01]]`` drops lr after the first, the inner rate staying or following."""
    batch, L = 128, 3
    nb = _num_train() // batch
    done = run_cli(
        [
            *BASE,
            f"data.batch_size={batch}",
            f"algorithm.num_inner_steps={L}",
            "algorithm.inner_lr=0.1",
            "epoch_unit=nb_outer_steps",
            "epochs=2",
            "lr_schedule=step",
            "lr_schedule.milestones=[1]",
            "lr_schedule.factors=[0.1]",
            f"lr_schedule.inner_lr={inner_lr}",
            f"hydra.run.dir={tmp_path / 'run'}",
        ],
        tmp_path,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads((tmp_path / "run" / "results.json").read_text())
    assert result["steps_per_replica"] == 2 * nb * L
    records = _records(tmp_path / "run")
    assert len(records) == 2 * nb
    for record in records:
        dropped = record["outer_step"] > nb  # its minibatches are in the second epoch
        assert record["lr"] == pytest.approx(0.01 if dropped else 0.1, rel=1e-12)
        following = 0.01 if dropped and inner_lr == "follow" else 0.1
        assert record["inner_lr"] == pytest.approx(following, rel=1e-12)
