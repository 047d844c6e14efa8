"""Launching for real: the torchrun scripts, and a one-node SLURM cluster (Debian's slurmctld,
slurmd and munge, installed and started by ``slurm_setup.sh``) running the project's sbatch
scripts with 2 tasks over gloo: jobs that finish, a job requeued twice mid-run (USR1, then
``scontrol requeue``) that resumes from its checkpoints, the torchrun variant preempted and
resumed, a ``scancel`` that must stay final, and a 2-point sweep through Hydra's submitit launcher.
The daemons are stopped by their pids at the end.

The commands of the README's launch sections run exactly as written there, from a folder that
holds ``launch/`` (a link to the repository's).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO, cli_env, free_port

# a cold start installs Debian's packages first
pytestmark = pytest.mark.timeout(600)

SETUP = Path(__file__).with_name("slurm_setup.sh")

# the commands of the README sections, as a user types them; JOBID stands for a job's id
TORCHRUN_SINGLE = (
    "EE_NPROC=2 launch/torchrun_single_node.sh "
    "cluster.replicas_per_process=2 model=mlp data=digits max_steps=50"
)
TORCHRUN_MULTI = (
    "EE_NNODES=1 EE_NPROC=2 EE_RDZV_ENDPOINT=127.0.0.1:29400 EE_RDZV_ID=cpu-try "
    "launch/torchrun_multi_node.sh "
    "cluster.replicas_per_process=2 model=mlp data=digits max_steps=50"
)
SBATCH = (
    "sbatch --ntasks=2 launch/slurm/train.sbatch "
    "cluster.replicas_per_process=2 model=mlp data=digits max_steps=200"
)
SBATCH_TORCHRUN = (
    "EE_NPROC=2 sbatch --nodes=1 --cpus-per-task=2 launch/slurm/train_torchrun.sbatch "
    "cluster.replicas_per_process=2 model=mlp data=digits max_steps=200"
)
PREEMPT = "scancel --batch --signal=USR1 JOBID"
REQUEUE = "scontrol requeue JOBID"
SWEEP = (
    "elastic-entropy -m 'seed=0,1' hydra/launcher=submitit_slurm hydra.launcher.tasks_per_node=2 "
    "cluster.replicas_per_process=2 model=mlp data=digits max_steps=50"
)
TESTED = {TORCHRUN_SINGLE, TORCHRUN_MULTI, SBATCH, SBATCH_TORCHRUN, PREEMPT, REQUEUE, SWEEP}
ENDED = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "BOOT_FAIL"}


def _shell(command: str, cwd: Path, env: dict[str, str], timeout: float = 240):
    return subprocess.run(
        ["bash", "-c", command], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )


def _workdir(tmp_path: Path) -> Path:
    """A user's folder: ``launch/`` in it, runs and SLURM's output files written there."""
    (tmp_path / "launch").symlink_to(REPO / "launch")
    return tmp_path


def _results(run_dir: Path) -> dict:
    return json.loads((run_dir / "results.json").read_text())


def _metrics(run_dir: Path) -> list[dict]:
    path = run_dir / "metrics.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _run_dir(stdout: str) -> Path:
    found = re.findall(r"run directory: (\S+)", stdout)
    assert len(found) == 1, stdout[-3000:]  # rank 0 alone reports
    return Path(found[0])


def _commands(text: str) -> list[str]:
    """Lines of the ```sh blocks (the README's own ```bash blocks are test_readme.py's)."""
    blocks = re.findall(r"```sh\n(.*?)```", text, flags=re.S)
    return [line.strip() for block in blocks for line in block.splitlines() if line.strip()]


# ------------------------------------------------------------------------------------ the docs
def test_every_command_of_the_launch_sections_is_run_here() -> None:
    from tests.distributed.test_elastic_resume import TESTED as ELASTIC_TESTED
    from tests.integration.test_docker import TESTED as DOCKER_TESTED
    from tests.integration.test_local_entropy_cli import TESTED as LOCAL_ENTROPY_TESTED
    from tests.integration.test_own_components import TESTED as OWN_TESTED
    from tests.integration.test_presets import TESTED as PRESETS_TESTED

    commands = _commands((REPO / "README.md").read_text())
    assert commands, "no ```sh block found"
    tested = TESTED | DOCKER_TESTED | ELASTIC_TESTED | OWN_TESTED | PRESETS_TESTED
    tested |= LOCAL_ENTROPY_TESTED
    untested = [c for c in commands if c not in tested]
    assert not untested, f"commands no test runs: {untested}"


# -------------------------------------------------------------------------------- torchrun
def test_torchrun_single_node_script_two_processes(tmp_path: Path) -> None:
    workdir = _workdir(tmp_path)
    done = _shell(TORCHRUN_SINGLE, workdir, cli_env())
    assert done.returncode == 0, done.stderr[-3000:]
    run_dir = _run_dir(done.stdout)
    assert run_dir.is_relative_to(workdir / "outputs" / "torchrun")
    result = _results(run_dir)
    assert result["processes"] == 2 and result["num_replicas"] == 4
    assert result["steps_per_replica"] == 50


def test_torchrun_multi_node_script_one_node_local_endpoint(tmp_path: Path) -> None:
    workdir = _workdir(tmp_path)
    done = _shell(TORCHRUN_MULTI, workdir, cli_env())
    assert done.returncode == 0, done.stderr[-3000:]
    # the run directory is named by the rendezvous id: the same on every node and every restart
    run_dir = _run_dir(done.stdout)
    assert run_dir == workdir / "outputs" / "torchrun" / "cpu-try"
    assert _results(run_dir)["processes"] == 2


@pytest.mark.parametrize(
    ("command", "message"),
    [
        ("EE_NPROC=two launch/torchrun_single_node.sh", "EE_NPROC=two must be a number"),
        ("EE_MAX_RESTARTS=-1 launch/torchrun_single_node.sh", "EE_MAX_RESTARTS=-1 must be"),
        ("EE_PYTHON=nopython launch/torchrun_single_node.sh", "EE_PYTHON=nopython is not a"),
        ("launch/torchrun_multi_node.sh", "EE_NNODES='' must be the number of nodes"),
        (
            "EE_NNODES=2 EE_RDZV_ENDPOINT=node0 launch/torchrun_multi_node.sh",
            "EE_RDZV_ENDPOINT='node0' must be host:port",
        ),
        (
            "EE_NNODES=2 EE_RDZV_ENDPOINT=node0:29400 launch/torchrun_multi_node.sh",
            "set EE_RDZV_ID",
        ),
        ("bash launch/slurm/train.sbatch", "not inside a SLURM job; submit it: sbatch"),
        ("bash launch/slurm/train_torchrun.sbatch", "not inside a SLURM job; submit it"),
    ],
)
def test_launch_scripts_refuse_bad_input_in_one_line(
    command: str, message: str, tmp_path: Path
) -> None:
    env = {k: v for k, v in cli_env().items() if not k.startswith("SLURM_")}
    done = _shell(command, _workdir(tmp_path), env, timeout=60)
    assert done.returncode == 2, done.stderr
    assert message in done.stderr and len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert not (tmp_path / "outputs").exists()


# ----------------------------------------------------------------------------- real SLURM
@pytest.fixture(scope="session")
def slurm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """Install (if missing) and start munged, slurmctld and slurmd; stop them by pid at the end."""
    if os.geteuid() != 0:
        pytest.skip("a real SLURM needs root here (CI runs as root): slurmd starts the jobs")
    state = tmp_path_factory.mktemp("slurm")
    env = cli_env()
    env["SLURM_TEST_CTLD_PORT"] = str(free_port())
    env["SLURM_TEST_SLURMD_PORT"] = str(free_port())
    env["SLURM_TEST_KILL_WAIT"] = "30"  # the app's checkpoint on SIGTERM must fit in it

    def stop() -> None:
        subprocess.run(["bash", str(SETUP), "stop", str(state)], env=env, timeout=120)

    started = subprocess.run(
        ["bash", str(SETUP), "start", str(state)],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    if started.returncode != 0:
        stop()
        pytest.fail(f"slurm_setup.sh start failed:\n{started.stdout}\n{started.stderr}")
    env["SLURM_CONF"] = str(state / "slurm.conf")
    yield env
    stop()


def _job(env: dict[str, str], job: str) -> dict[str, str]:
    shown = subprocess.run(
        ["scontrol", "show", "job", "-o", job], env=env, capture_output=True, text=True
    )
    return dict(re.findall(r"(\w+)=(\S*)", shown.stdout))


def _wait(
    condition: Callable[[], bool], timeout: float, what: str, log: Path, env: dict[str, str]
) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            jobs = subprocess.run(["squeue", "-o", "%i %T %r"], env=env, capture_output=True)
            tail = log.read_text()[-4000:] if log.exists() else "(no output file yet)"
            pytest.fail(
                f"timed out after {timeout:.0f} s waiting for {what}; queue:\n"
                f"{jobs.stdout.decode()}job output:\n{tail}"
            )
        time.sleep(0.2)


def _submit(command: str, workdir: Path, env: dict[str, str]) -> str:
    done = _shell(command, workdir, env, timeout=60)
    assert done.returncode == 0, done.stderr
    match = re.fullmatch(r"Submitted batch job (\d+)", done.stdout.strip())
    assert match, done.stdout
    return match.group(1)


def _finish(env: dict[str, str], job: str, log: Path, timeout: float = 180) -> dict[str, str]:
    _wait(lambda: _job(env, job).get("JobState") in ENDED, timeout, f"job {job} to end", log, env)
    return _job(env, job)


def test_sbatch_two_tasks_over_gloo(slurm: dict[str, str], tmp_path: Path) -> None:
    workdir = _workdir(tmp_path)
    job = _submit(SBATCH, workdir, slurm)
    log = workdir / f"slurm-elastic-entropy-{job}.out"
    info = _finish(slurm, job, log)
    output = log.read_text()
    assert info["JobState"] == "COMPLETED" and info["ExitCode"] == "0:0", output[-3000:]
    run_dir = _run_dir(output)
    assert run_dir == workdir / "runs" / "slurm" / job  # keyed by the job id
    result = _results(run_dir)
    assert result["processes"] == 2 and result["num_replicas"] == 4
    assert result["steps_per_replica"] == 200
    assert _metrics(run_dir)[-1]["step"] == 200
    assert (run_dir / "reference.pt").is_file()
    assert list((run_dir / "checkpoints").glob("step-*/MANIFEST.json")), "no checkpoint"
    assert "resumed from step" not in output


def test_sbatch_torchrun_one_node_two_processes(slurm: dict[str, str], tmp_path: Path) -> None:
    workdir = _workdir(tmp_path)
    job = _submit(SBATCH_TORCHRUN, workdir, slurm)
    log = workdir / f"slurm-elastic-entropy-torchrun-{job}.out"
    info = _finish(slurm, job, log)
    output = log.read_text()
    assert info["JobState"] == "COMPLETED", output[-3000:]
    assert f"rendezvous {info['BatchHost']}:" in output
    result = _results(_run_dir(output))
    assert result["processes"] == 2 and result["steps_per_replica"] == 200


def test_sbatch_job_requeued_twice_resumes_from_its_checkpoints(
    slurm: dict[str, str], tmp_path: Path
) -> None:
    """USR1 (the time-limit warning, sent by hand) makes the script requeue the job; then an
    admin's `scontrol requeue` (TERM); each start resumes where the last checkpoint left off."""
    workdir = _workdir(tmp_path)
    max_steps = 4000  # about 10 s of training on 2 cores: long enough to interrupt twice
    job = _submit(
        f"sbatch --ntasks=2 launch/slurm/train.sbatch cluster.replicas_per_process=2 "
        f"model=mlp data=digits max_steps={max_steps} eval_every=2 progress=false",
        workdir,
        slurm,
    )
    log = workdir / f"slurm-elastic-entropy-{job}.out"
    run_dir = workdir / "runs" / "slurm" / job

    def progressed_beyond(step: int) -> Callable[[], bool]:
        return lambda: any(m.get("step", 0) > step for m in _metrics(run_dir))

    def resumed(times: int) -> Callable[[], bool]:
        return lambda: log.exists() and log.read_text().count("resumed from step") >= times

    _wait(progressed_beyond(300), 120, "training to start", log, slurm)
    assert _shell(PREEMPT.replace("JOBID", job), workdir, slurm).returncode == 0
    _wait(resumed(1), 120, "the first resume", log, slurm)
    first = int(re.findall(r"resumed from step (\d+)", log.read_text())[0])
    _wait(progressed_beyond(first + 300), 120, "training after the first resume", log, slurm)
    assert _shell(REQUEUE.replace("JOBID", job), workdir, slurm).returncode == 0
    _wait(resumed(2), 120, "the second resume", log, slurm)
    info = _finish(slurm, job, log)

    output = log.read_text()
    assert info["JobState"] == "COMPLETED" and info["Restarts"] == "2", output[-4000:]
    steps = [int(n) for n in re.findall(r"resumed from step (\d+)", output)]
    assert len(steps) == 2 and 0 < steps[0] < steps[1] < max_steps, output[-4000:]
    # the USR1 start requeued itself; after scontrol requeue, Slurm did
    assert output.count(f"train.sbatch: requeueing job {job}") == 1
    for start in (1, 2, 3):
        assert f"train.sbatch: job {job}, start {start}," in output
    events = [m for m in _metrics(run_dir) if m.get("event") == "resume"]
    assert [e["step"] for e in events] == steps
    result = _results(run_dir)
    assert result["steps_per_replica"] == max_steps and result["processes"] == 2
    assert sorted(p.name for p in (workdir / "runs" / "slurm").iterdir()) == [job]


def test_scancel_ends_the_job_without_requeue(slurm: dict[str, str], tmp_path: Path) -> None:
    """scancel sends TERM like scontrol requeue does: the script must not revive the job."""
    workdir = _workdir(tmp_path)
    job = _submit(
        "sbatch --ntasks=2 launch/slurm/train.sbatch cluster.replicas_per_process=2 "
        "model=mlp data=digits max_steps=100000 eval_every=2 progress=false",
        workdir,
        slurm,
    )
    log = workdir / f"slurm-elastic-entropy-{job}.out"
    run_dir = workdir / "runs" / "slurm" / job
    _wait(lambda: bool(_metrics(run_dir)), 120, "training to start", log, slurm)
    assert _shell(f"scancel {job}", workdir, slurm).returncode == 0
    ended = re.compile(r"train\.sbatch: (step exit|requeueing)")
    _wait(lambda: bool(ended.search(log.read_text())), 60, "the script's end", log, slurm)
    time.sleep(2)  # a requeue from the script would show by now
    info = _job(slurm, job)
    output = log.read_text()
    assert info["JobState"] == "CANCELLED" and info["Restarts"] == "0", output[-3000:]
    assert "requeueing" not in output and "SIGTERM" in output


def test_sbatch_torchrun_preempted_resumes_from_its_checkpoint(
    slurm: dict[str, str], tmp_path: Path
) -> None:
    """USR1 to the torchrun script becomes TERM to the agents and workers (an agent dies of
    USR1); the workers checkpoint, the script requeues, the next start resumes."""
    workdir = _workdir(tmp_path)
    max_steps = 4000
    job = _submit(
        "EE_NPROC=2 sbatch --nodes=1 --cpus-per-task=2 launch/slurm/train_torchrun.sbatch "
        f"cluster.replicas_per_process=2 model=mlp data=digits max_steps={max_steps} "
        "eval_every=2 progress=false",
        workdir,
        slurm,
    )
    log = workdir / f"slurm-elastic-entropy-torchrun-{job}.out"
    run_dir = workdir / "runs" / "slurm" / job
    _wait(
        lambda: any(m.get("step", 0) > 300 for m in _metrics(run_dir)),
        120,
        "training to start",
        log,
        slurm,
    )
    assert _shell(PREEMPT.replace("JOBID", job), workdir, slurm).returncode == 0
    info = _finish(slurm, job, log)
    output = log.read_text()
    assert info["JobState"] == "COMPLETED" and info["Restarts"] == "1", output[-4000:]
    assert f"train_torchrun.sbatch: requeueing job {job}" in output
    (step,) = [int(n) for n in re.findall(r"resumed from step (\d+)", output)]
    assert 0 < step < max_steps
    result = _results(run_dir)
    assert result["steps_per_replica"] == max_steps and result["processes"] == 2


def test_submitit_sweep_two_points(slurm: dict[str, str], tmp_path: Path) -> None:
    done = _shell(SWEEP, tmp_path, slurm, timeout=300)
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
    (sweep_dir,) = (tmp_path / "multirun").glob("*/*")
    for point, seed in ((0, 0), (1, 1)):
        run_dir = sweep_dir / str(point)
        result = _results(run_dir)
        assert result["processes"] == 2 and result["num_replicas"] == 4, result
        assert yaml.safe_load((run_dir / "config.yaml").read_text())["seed"] == seed
    # one SLURM job per point (an array), two tasks each: one result file per task
    results = sorted(p.name for p in (sweep_dir / ".submitit").glob("*/*_result.pkl"))
    assert len(results) == 4, results
