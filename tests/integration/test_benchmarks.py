"""The benchmarks run and write their table, JSON and ratio line (tiny sizes: never timings)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.conftest import REPO, cli_env

CASES = [
    (
        "optimizer_step",
        ["--quick", "--repeats", "1"],
        ["parle_inner/sgd_foreach", "parle_inner/sgd_fused"],
    ),
    ("communication", ["--steps", "10"], ["parle_L5/ddp", "parle_L25/ddp"]),
    (
        "throughput",
        ["--quick", "--steps", "10"],
        [
            "parle_1x1/sgd_1x1",
            "parle_2x2/parle_1x4",
            "threads:auto/one_alone",
            "wrn16_4:parle_1x1/sgd_1x1",
            "lenet:parle_1x1/sgd_1x1",
        ],
    ),
    ("replicas_per_device", ["--quick", "--device", "cpu"], ["plain4/one", "app4/one"]),
    ("data_pipeline", ["--quick"], ["gather_augment/gather", "loader_2/gather"]),
    ("text", ["--quick"], ["diloco_H50:bytes/dp", "diloco_H50:ppl/dp", "parle_adamw_L10:ppl/dp"]),
    (
        "exposed_comm",
        ["--quick", "--num-inner-steps", "3", "--outer", "1"],
        ["exposed_sync", "exposed_overlap"],
    ),
]


def _run_benchmark(name: str, args: list[str], out: Path) -> str:
    """``python -m benchmarks.NAME ARGS --out OUT`` as a user runs it; its last line."""
    done = subprocess.run(
        [sys.executable, "-m", f"benchmarks.{name}", *args, "--out", str(out)],
        cwd=REPO,
        env=cli_env(),
        capture_output=True,
        text=True,
        # a hang, not a slow machine: the quick runs take 10-150 s alone, several times that on
        # two cores shared with other jobs
        timeout=840,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout.strip().splitlines()[-1]


# the suite's 300 s limit is for one test; a benchmark's quick run is several runs of the app
@pytest.mark.timeout(900)
@pytest.mark.parametrize(("name", "args", "ratios"), CASES, ids=[c[0] for c in CASES])
def test_benchmark_writes_its_results(
    tmp_path: Path, name: str, args: list[str], ratios: list[str]
) -> None:
    last = _run_benchmark(name, args, tmp_path)
    assert last.startswith("ratios: ") and all(f"{r}=" in last for r in ratios), last
    figures = json.loads((tmp_path / f"{name}.json").read_text())
    assert figures["benchmark"] == name and f"benchmarks.{name}" in figures["command"]
    assert set(ratios) <= set(figures["ratios"])
    assert all(isinstance(v, float) for v in figures["ratios"].values())
    table = (tmp_path / f"{name}.md").read_text()
    assert figures["command"] in table


def test_accuracy_benchmark_quick_writes_records(tmp_path: Path) -> None:
    last = _run_benchmark("accuracy", ["--quick"], tmp_path)
    assert last.startswith("ratios: digits:parle n=3-sgd=")
    records = json.loads((tmp_path / "accuracy.json").read_text())
    keys = {
        "dataset",
        "model",
        "algorithm",
        "num_replicas",
        "budget",
        "seed",
        "test_acc",
        "train_acc",
        "wall_s",
        "grad_evals_per_replica",
    }
    assert len(records) == 4 and all(keys <= set(r) for r in records)
    assert {r["budget"] for r in records} == {"evals", "wall"}
    assert all(0.0 <= r["test_acc"] <= 1.0 for r in records)
    assert "mean ± std" in (tmp_path / "accuracy_summary.md").read_text()
    for plot in ("accuracy.png", "accuracy_signature.png"):
        assert (tmp_path / plot).stat().st_size > 10_000


@pytest.mark.skipif(torch.cuda.is_available(), reason="the refusal, on a machine without CUDA")
def test_readme_gpu_check_refuses_clearly_without_cuda() -> None:
    """The README's GPU command as written, without CUDA: one line, nothing written."""
    readme = (REPO / "README.md").read_text()
    command = re.search(r"```shell\n(bash benchmarks/gpu_check\.sh [^\n]+)\n```", readme)
    assert command, "the README's GPU section lost its gpu_check.sh command"
    out = REPO / command.group(1).split()[-1]
    before = sorted(out.rglob("*")) if out.exists() else None
    done = subprocess.run(
        ["bash", "-c", command.group(1)],
        cwd=REPO,
        env=cli_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode != 0
    assert done.stderr.strip().splitlines() == [
        "gpu_check.sh: CUDA is not available here; run it on a machine with a GPU"
    ]
    assert (sorted(out.rglob("*")) if out.exists() else None) == before


@pytest.mark.timeout(900)  # four invocations of the benchmark, one run trained again
def test_claims_benchmark_quick_writes_the_claim_lines(tmp_path: Path) -> None:
    """``python -m benchmarks.claims --quick``: three tiny runs, one line per claim, records;
    run again on its workdir, or with ``--reuse`` of its results file and the workdir gone, it
    trains nothing and reports the same claims."""
    work = tmp_path / "work"
    last = _run_benchmark("claims", ["--quick", "--workdir", str(work)], tmp_path)
    assert last.startswith("verdicts: claim 1="), last
    figures = json.loads((tmp_path / "claims.json").read_text())
    assert figures["benchmark"] == "claims" and "benchmarks.claims" in figures["command"]
    verdicts = {"holds", "does not hold", "inconclusive", "not run", "mixed"}
    for claim in ("1", "2", "2b", "3", "4", "5", "6", "7"):
        # claim 6 has one verdict per method: "parle n=3: holds; entropy_sgd: mixed"
        for part in figures[f"claim {claim}"]["verdict"].split("; "):
            assert part.split(": ")[-1].split(" or ")[0] in verdicts, part
    records = figures["records"]
    assert {r["method"] for r in records} == {"sgd", "parle n=3", "entropy_sgd"}
    assert all(0.0 <= r["test_acc"] <= 1.0 and r["curve"] for r in records)
    assert {"top_eigenvalue", "hessian_trace"} <= {k for r in records for k in r}
    table = (tmp_path / "claims.md").read_text()
    assert figures["command"] in table and "claim 7:" in table and "benchmark wall time" in table
    assert "3 runs, 2 at a time" in table and "3 of the runs trained by it" in table
    assert 0 < figures["span_s"] <= figures["wall_s"]
    again = tmp_path / "again"
    assert _run_benchmark("claims", ["--quick", "--workdir", str(work)], again) == last
    redone = json.loads((again / "claims.json").read_text())
    assert redone["records"] == records and redone["trained_runs"] == 0
    # the time with runs going, not the pause between the two invocations
    assert redone["span_s"] == pytest.approx(figures["span_s"])
    assert "0 of the runs trained by it" in (again / "claims.md").read_text()
    # the workdir gone: the records of the first invocation stand for its runs
    reused = tmp_path / "reused"
    args = [
        "--quick",
        "--workdir",
        str(tmp_path / "empty"),
        "--reuse",
        str(tmp_path / "claims.json"),
    ]
    assert _run_benchmark("claims", args, reused) == last
    taken = json.loads((reused / "claims.json").read_text())
    assert taken["records"] == records and taken["trained_runs"] == 0
    assert taken["span_s"] == pytest.approx(figures["span_s"])
    assert "3 taken from --reuse" in (reused / "claims.md").read_text()
    # a record whose settings have changed since (another digest in its run's name) is retrained
    figures["records"][0]["run"] = figures["records"][0]["run"][:-10] + "0123456789"
    (tmp_path / "changed.json").write_text(json.dumps(figures))
    args[-1] = str(tmp_path / "changed.json")
    _run_benchmark("claims", args, tmp_path / "changed")
    changed = json.loads((tmp_path / "changed" / "claims.json").read_text())
    assert changed["trained_runs"] == 1 and len(changed["records"]) == 3


def test_claims_runs_an_equal_wall_clock_sgd_at_each_asked_budget(tmp_path: Path) -> None:
    """SGD's passes at Parle's wall time (the ratio of the two chosen seed-0 runs), its lr and
    schedule chosen on validation, then its seeds; and the result files named apart."""
    from benchmarks import claims

    plan = claims.Plan(
        workload="digits",
        seeds=[0, 1],
        budgets=[20.0, 125.0],
        sgd_grid=[(0.1, "cosine"), (0.3, "step")],
        schedules=("step",),
        methods_small=["sgd", "parle n=3"],
        methods_large=["sgd", "parle n=3"],
        wall_at=[125.0],
    )
    bench = claims.Bench(tmp_path, [], None)
    parle = claims.Job("digits", "parle n=3", "evals", 125.0, 0, "step")
    sgd = claims.Job("digits", "sgd", "evals", 125.0, 0, "cosine", 0.1)
    plan.chosen[("parle n=3", "evals", 125.0)], plan.chosen[("sgd", "evals", 125.0)] = parle, sgd
    bench.results[parle], bench.results[sgd] = {"wall_s": 30.0}, {"wall_s": 10.0}
    assert claims.wall_candidates(bench, plan, 20.0) == []  # not asked for at 20 passes
    jobs = claims.wall_candidates(bench, plan, 125.0)
    assert {(j.budget, j.passes, j.lr, j.schedule, j.seed) for j in jobs} == {
        ("wall", 375.0, 0.1, "cosine", 0),
        ("wall", 375.0, 0.3, "step", 0),
    }
    for job in jobs:  # validation prefers lr 0.3; test accuracy would prefer 0.1
        val, test = (0.95, 0.90) if job.lr == 0.3 else (0.90, 0.99)
        bench.results[job] = {"reference": {"val_acc": val, "test_acc": test}}
    assert [(j.seed, j.lr, j.passes) for j in claims.wall_seeds(bench, plan, 125.0)] == [
        (0, 0.3, 375.0),
        (1, 0.3, 375.0),
    ]
    assert claims.result_name(plan, False, [20.0, 125.0]) == "claims.digits-20-125"
    assert claims.result_name(plan, False, None) == "claims.digits"
    plan.workload = "mnist1d"
    assert claims.result_name(plan, False, None) == "claims"
    assert claims.result_name(plan, False, [125.0]) == "claims.mnist1d-125"


def test_gpu_check_runs_its_tests_without_pytest_xdist() -> None:
    """The GPU machines have no pytest-xdist: gpu_check.sh's pytest line, as written there, with
    the plugin absent, still runs the tests (the suite's ``-n auto`` and its hook stay out)."""
    script = (REPO / "benchmarks" / "gpu_check.sh").read_text()
    line = next(x for x in script.splitlines() if x.startswith("python3 -m pytest "))
    args = line.split()[3:]
    assert "-o" in args and "addopts=" in args
    files = [a for a in args if a.startswith("tests/")]
    assert files and all((REPO / f).is_file() for f in files)
    options = [a for a in args if a not in files]
    done = subprocess.run(
        [sys.executable, "-m", "pytest", *options, "-p", "no:xdist", "tests/unit/test_scoping.py"],
        cwd=REPO,
        env=cli_env(),
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert " passed" in done.stdout and "workers" not in done.stdout


def test_claims_wall_time_is_the_union_of_the_runs_intervals() -> None:
    """Overlapping runs count once, a run inside another not at all, a pause between not at all."""
    from benchmarks.claims import busy_seconds

    assert busy_seconds([]) == 0.0
    assert busy_seconds([(5.0, 6.0), (0.0, 2.0), (1.0, 3.0)]) == 4.0
    assert busy_seconds([(0.0, 10.0), (2.0, 3.0), (100.0, 101.0)]) == 11.0


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("{not json", "not a claims results file"),
        ('{"benchmark": "throughput"}', "not a claims results file"),
        ('{"records": [{"workload": "mnist1d"}]}', "records are of workload mnist1d"),
        ('{"records": [{"workload": "digits", "method": "sgd"}]}', "record 0 lacks 'lr'"),
    ],
    ids=["not_json", "no_records", "other_workload", "incomplete_record"],
)
def test_claims_reuse_refuses_a_file_that_is_not_this_workloads_records(
    tmp_path: Path, text: str, says: str
) -> None:
    """``--reuse FILE``: a file that is not a claims results file of this workload is refused
    with one line naming it, before anything is trained."""
    (tmp_path / "bad.json").write_text(text)
    done = subprocess.run(
        [
            *(sys.executable, "-m", "benchmarks.claims", "--quick", "--out", str(tmp_path / "out")),
            *("--workdir", str(tmp_path / "work"), "--reuse", str(tmp_path / "bad.json")),
        ],
        cwd=REPO,
        env=cli_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2
    assert done.stderr.strip().splitlines()[-1].startswith(f"claims.py: error: --reuse {tmp_path}")
    assert says in done.stderr and not (tmp_path / "out").exists()
    assert not list((tmp_path / "work").glob("*"))


def test_claims_reuse_keeps_the_span_of_records_from_before_they_carried_their_times(
    tmp_path: Path,
) -> None:
    """A results file whose older records have no start and end (and newer ones do) gives back
    its span, and every record as it was written."""
    from benchmarks import claims

    def rec(seed: int, **times: float) -> dict:
        return {
            "workload": "digits", "method": "sgd", "budget": "evals", "passes": 20.0,
            "seed": seed, "schedule": "step", "lr": 0.1, "num_replicas": 1, "test_acc": 0.9,
            "train_acc": 1.0, "val_acc": 0.95, "wall_s": 60.0, "grad_evals_per_replica": 100,
            "curve": [[1.0, 0.2], [2.0, 0.1]], "top_eigenvalue": 0.5, "hessian_trace": 2.0,
            "flatness_loss": 0.01, "rise_0.05": 1e-4, "rise_0.1": 4e-4, **times,
        }  # fmt: skip

    found = [rec(0), rec(1), rec(2, started=1000.0, ended=1060.0)]
    (tmp_path / "claims.json").write_text(json.dumps({"records": found, "span_s": 180.0}))
    bench = claims.Bench(tmp_path / "work", [], None)
    assert claims.reuse(bench, "digits", tmp_path / "claims.json") == 0
    assert len(bench.reused) == 3
    assert claims.runs_span(bench) == (pytest.approx(180.0), 180.0)
    written = json.loads(json.dumps(claims.records(bench)))
    assert [{k: v for k, v in r.items() if k != "run"} for r in written] == found
    # written again with their run folders, and reused from that: the same span and records
    (tmp_path / "again.json").write_text(json.dumps({"records": written, "span_s": 180.0}))
    again = claims.Bench(tmp_path / "work", [], None)
    assert claims.reuse(again, "digits", tmp_path / "again.json") == 0
    assert claims.runs_span(again)[0] == pytest.approx(180.0)
    assert json.loads(json.dumps(claims.records(again))) == written
