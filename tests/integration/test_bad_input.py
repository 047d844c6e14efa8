"""Bad input, table-driven: one clear line (the problem and the fix), a non-zero exit, no
traceback, and nothing already written lost or overwritten."""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import run_cli

Setup = Callable[[Path, Path], list[str]]  # (tmp_path, interrupted run) -> extra arguments


def _none(tmp: Path, interrupted: Path) -> list[str]:
    return []


def _copy_run(tmp: Path, interrupted: Path) -> Path:
    target = tmp / "run"
    shutil.copytree(interrupted, target)
    return target


def _run_args(run: Path) -> list[str]:
    return [SMALL, f"hydra.run.dir={run}"]


def _damage_all(tmp: Path, interrupted: Path, how: str) -> list[str]:
    run = _copy_run(tmp, interrupted)
    for rank_file in run.glob("checkpoints/step-*/rank-*.pt"):
        data = rank_file.read_bytes()
        if how == "truncate":
            rank_file.write_bytes(data[: len(data) // 2])
        else:
            middle = len(data) // 2
            rank_file.write_bytes(data[:middle] + bytes(64) + data[middle + 64 :])
    return _run_args(run)


def _garbage_with_matching_manifest(tmp: Path, interrupted: Path) -> list[str]:
    """Damaged before its checksum was taken: the manifest agrees, torch.load does not."""
    run = _copy_run(tmp, interrupted)
    for directory in run.glob("checkpoints/step-*"):
        (directory / "rank-0.pt").write_bytes(b"not a checkpoint")
        manifest = json.loads((directory / "MANIFEST.json").read_text())
        manifest["sha256"][0] = hashlib.sha256(b"not a checkpoint").hexdigest()
        (directory / "MANIFEST.json").write_text(json.dumps(manifest))
    return _run_args(run)


def _interrupted_with(*args: str) -> Setup:
    return lambda tmp, interrupted: [*_run_args(_copy_run(tmp, interrupted)), *args]


def _finished_run(tmp: Path, interrupted: Path) -> list[str]:
    run = _copy_run(tmp, interrupted)
    (run / "results.json").write_text("{}\n")
    return _run_args(run)


def _file_as_run_dir_parent(tmp: Path, interrupted: Path) -> list[str]:
    (tmp / "a-file").write_text("x")
    return [f"hydra.run.dir={tmp / 'a-file' / 'run'}"]


CASES: list[tuple[str, list[str], str, Setup]] = [
    (
        "negative lr",
        ["algorithm.lr=-0.1"],
        "Invalid algorithm.lr: -0.1 (must be finite and >= 0)",
        _none,
    ),
    (
        "alpha = 1",
        ["algorithm.alpha=1.0"],
        "Invalid algorithm.alpha: 1.0 (must be in [0, 1))",
        _none,
    ),
    (
        "negative L",
        ["algorithm.num_inner_steps=-1"],
        "Invalid algorithm.num_inner_steps: -1",
        _none,
    ),
    ("L = 0 for parle", ["algorithm.num_inner_steps=0"], "use algorithm=elastic_sgd or sgd", _none),
    (
        "local SGD never averaging",
        ["algorithm=local_sgd", "algorithm.num_local_steps=0"],
        "Invalid algorithm.num_local_steps: 0 (must be >= 1",
        _none,
    ),
    (
        "torch DDP with several replicas in a process",
        ["algorithm=ddp", "cluster.replicas_per_process=2"],
        "algorithm=ddp wraps one model per process: start N processes with torchrun",
        _none,
    ),
    (
        "unknown CUDA-graph mode",
        ["cluster.cuda_graphs=maybe"],
        "Invalid cluster.cuda_graphs: 'maybe' (choose auto, on or off)",
        _none,
    ),
    (
        "CUDA graphs on a CPU",
        ["cluster.device=cpu", "cluster.cuda_graphs=on"],
        "CUDA graphs need cluster.device=cuda (or auto on a GPU); use auto or off on CPUs",
        _none,
    ),
    (
        "CUDA graphs around torch DDP",
        ["algorithm=ddp", "cluster.replicas_per_process=1", "cluster.cuda_graphs=on"],
        "algorithm=ddp runs torch's DistributedDataParallel, which is not captured",
        _none,
    ),
    (
        "unknown lr schedule",
        ["lr_schedule=linear"],
        "unknown lr_schedule 'linear'; choose one of constant, cosine, step",
        _none,
    ),
    ("negative gamma", ["algorithm.gamma=-1"], "Invalid algorithm.gamma: -1.0", _none),
    ("negative rho", ["algorithm.rho=-1"], "Invalid algorithm.rho: -1.0", _none),
    ("negative noise", ["algorithm.noise=-1"], "Invalid algorithm.noise: -1.0", _none),
    ("momentum 1", ["algorithm.momentum=1.0"], "Invalid algorithm.momentum: 1.0", _none),
    ("negative wd", ["algorithm.weight_decay=-1"], "Invalid algorithm.weight_decay: -1.0", _none),
    ("negative inner lr", ["algorithm.inner_lr=-1"], "Invalid algorithm.inner_lr: -1.0", _none),
    (
        "empty training subset",
        ["data.train_fraction=0"],
        "Invalid data.train_fraction: 0.0 (must be in (0, 1])",
        _none,
    ),
    ("batch size 0", ["data.batch_size=0"], "Invalid data.batch_size: 0 (must be >= 1)", _none),
    (
        "unstable lr*rho",
        ["algorithm.lr=0.3", "scoping.rho_max=10"],
        "Unstable elastic coupling",
        _none,
    ),
    (
        "gamma above its cap",
        ["algorithm.gamma=5"],
        "scoping.gamma_max=1.0 is below algorithm.gamma=5.0",
        _none,
    ),
    ("negative scoping rate", ["scoping.gamma_rate=-1"], "Invalid scoping.gamma_rate: -1.0", _none),
    ("negative rho cap", ["scoping.rho_max=-1"], "Invalid scoping.rho_max: -1.0", _none),
    ("zero epochs", ["epochs=0"], "Invalid epochs: 0.0 (must be > 0)", _none),
    ("zero max_steps", ["max_steps=0"], "Invalid max_steps: 0 (must be >= 1)", _none),
    ("zero eval_every", ["eval_every=0"], "Invalid eval_every: 0.0", _none),
    (
        "no replicas",
        ["cluster.replicas_per_process=0"],
        "Invalid cluster.replicas_per_process: 0",
        _none,
    ),
    ("unknown backend", ["cluster.backend=mpi"], "choose auto, gloo or nccl", _none),
    ("unknown device", ["cluster.device=tpu"], "choose auto, cpu or cuda", _none),
    (
        "cuda without a GPU",
        ["cluster.device=cuda"],
        "CUDA is not available; use cluster.device=cpu",
        _none,
    ),
    ("zero timeout", ["cluster.timeout_s=0"], "Invalid cluster.timeout_s: 0.0", _none),
    (
        "unknown data policy",
        ["data.policy=random"],
        "Invalid data.policy: 'random' (choose full, shard or frac)",
        _none,
    ),
    ("zero loss scale", ["precision=fp16", "loss_scale=0"], "Invalid loss_scale: 0.0", _none),
    (
        "CUDA graphs under fp16",
        ["precision=fp16", "cluster.cuda_graphs=on"],
        "Invalid cluster.cuda_graphs: 'on' (precision=fp16 scales the loss",
        _none,
    ),
    (
        "CUDA graphs under compile",
        ["compile=true", "cluster.cuda_graphs=on"],
        "Invalid cluster.cuda_graphs: 'on' (compile=true compiles the forward instead)",
        _none,
    ),
    (
        "unknown input path",
        ["data.pipeline=stream"],
        "Invalid data.pipeline: 'stream' (choose one of auto, tensors, loader)",
        _none,
    ),
    ("negative workers", ["data.num_workers=-1"], "Invalid data.num_workers: -1", _none),
    ("no prefetch", ["data.prefetch_factor=0"], "Invalid data.prefetch_factor: 0", _none),
    (
        "CUDA graphs on loaders",
        ["data.pipeline=loader", "cluster.cuda_graphs=on"],
        "Invalid cluster.cuda_graphs: 'on' (the data is read through loaders",
        _none,
    ),
    (
        "validation fraction 1",
        ["data.validation_fraction=1.0"],
        "Invalid data.validation_fraction: 1.0",
        _none,
    ),
    ("dropout 1", ["model.dropout=1.0"], "Invalid model.dropout: 1.0", _none),
    (
        "checkpoint every 0",
        ["checkpoint.every_outer_steps=0"],
        "Invalid checkpoint.every_outer_steps: 0",
        _none,
    ),
    ("keep no checkpoint", ["checkpoint.keep_last=0"], "Invalid checkpoint.keep_last: 0", _none),
    (
        "unknown algorithm",
        ["algorithm=adam"],
        "unknown algorithm 'adam'; choose one of adamw, ddp, diloco, dp_adamw, dp_sgd, "
        "elastic_sgd, entropy_sgd, local_sgd, parle, sgd",
        _none,
    ),
    (
        "unknown model",
        ["model=resnet"],
        "unknown model 'resnet'; choose one of allcnn, char_lstm, cnn1d, lenet, mlp, resnet18, "
        "transformer, wrn",
        _none,
    ),
    (
        "unknown data set",
        ["data=imagenet"],
        "unknown data 'imagenet'; choose one of cifar10, cifar100, custom, digits, imagefolder,",
        _none,
    ),
    ("unknown key", ["model.widthh=3"], "Key 'widthh' not in 'CNN1DConfig'", _none),
    (
        "not a number",
        ["algorithm.lr=fast"],
        "Value 'fast' of type 'str' could not be converted to Float",
        _none,
    ),
    (
        "missing MNIST folder",
        ["data=mnist", "model=lenet", "data.root=/nonexistent/mnist"],
        "data folder /nonexistent/mnist/MNIST/raw does not exist",
        _none,
    ),
    (
        "missing CIFAR folder",
        ["data=cifar10", "model=lenet", "data.root=/nonexistent"],
        "data folder /nonexistent/cifar-10-batches-py does not exist",
        _none,
    ),
    ("2-D net on 1-D data", ["model=lenet"], "lenet needs image data", _none),
    (
        "language model on signals",
        ["model=transformer"],
        "model=transformer is a language model: it needs text (data=pydoc or data=textfile)",
        _none,
    ),
    (
        "classifier on text",
        ["data=pydoc", "model=mlp"],
        "data=pydoc is text (windows of token ids, a next token per position): choose",
        _none,
    ),
    (
        "missing text corpus",
        ["data=textfile", "model=char_lstm", "data.root=/nonexistent/corpus.txt"],
        "text corpus /nonexistent/corpus.txt does not exist",
        _none,
    ),
    (
        "uneven attention heads",
        ["data=pydoc", "model=transformer", "model.heads=3"],
        "Invalid model.width: 128 (must be a multiple of model.heads=3)",
        _none,
    ),
    ("1-D net on images", ["data=digits"], "cnn1d needs 1-D signals", _none),
    (
        "replicas do not divide the data",
        ["data.policy=shard", "data.batch_size=2001"],
        "replica 0 gets 2000 samples, fewer than data.batch_size=2001",
        _none,
    ),
    ("unwritable run directory", [], "cannot create the run directory", _file_as_run_dir_parent),
    ("finished run directory", [], "already holds a finished run", _finished_run),
    (
        "corrupt checkpoint",
        [],
        "fails its checksum (truncated or damaged)",
        lambda t, i: _damage_all(t, i, "flip"),
    ),
    (
        "truncated checkpoint",
        [],
        "fails its checksum (truncated or damaged)",
        lambda t, i: _damage_all(t, i, "truncate"),
    ),
    ("unreadable checkpoint", [], "cannot read", _garbage_with_matching_manifest),
    (
        "checkpoint of another model",
        [],
        "made with another config (model.channels=8 there, 16 here)",
        _interrupted_with("model.channels=16"),
    ),
    # (another replica count is an elastic resume: tests/distributed/test_elastic_resume.py)
    # a layout that changed with a default (sgd: 1 replica a process) names the key first
    (
        "checkpoint of another algorithm",
        ["algorithm=sgd"],
        "was made with another config (algorithm.name='parle' there, 'sgd' here",
        _interrupted_with("cluster.replicas_per_process=null"),
    ),
    # keys that no component takes, added with + or typed plainly, at any depth
    (
        "added key with a typo",
        ["+algorithm.lrr=0.5"],
        "unknown key algorithm.lrr (Key 'lrr' not in 'ParleConfig'); did you mean algorithm.lr?",
        _none,
    ),
    (
        "plain key with a typo",
        ["algorithm.lrr=0.5"],
        "unknown key algorithm.lrr (Key 'lrr' not in 'ParleConfig'); did you mean algorithm.lr?",
        _none,
    ),
    (
        "added top-level key",
        ["+foo=1"],
        "unknown key foo (Key 'foo' not in 'Config'); the keys at the top level are algorithm, ",
        _none,
    ),
    # Hydra's own keys are held to its schema the same way
    (
        "added hydra key",
        ["+hydra.foo=1"],
        "unknown key hydra.foo (Key 'foo' not in 'HydraConf'); the keys of hydra are ",
        _none,
    ),
    (
        "hydra key with a typo",
        ["hydra.jbo.name=x"],
        "unknown key hydra.jbo (Key 'jbo' not in 'HydraConf'); did you mean hydra.job?",
        _none,
    ),
    (
        "added nested key with a typo",
        ["+logger.wandb.projetc=x"],
        "unknown key logger.wandb.projetc (Key 'projetc' not in 'WandbConfig'); "
        "did you mean logger.wandb.project?",
        _none,
    ),
    (
        "key of another group",
        ["+batch_size=32"],
        "unknown key batch_size (Key 'batch_size' not in 'Config'); did you mean data.batch_size?",
        _none,
    ),
    (
        "key of another algorithm",
        ["algorithm=sgd", "algorithm.gamma=0.1"],
        "unknown key algorithm.gamma (Key 'gamma' not in 'SGDConfig'); the keys of algorithm are "
        "lr, momentum, nesterov, weight_decay, replica_init, fused",
        _none,
    ),
    # numbers no rule of a key names: one walk over every field
    ("infinite epochs", ["epochs=inf"], "Invalid epochs: inf (must be a finite number", _none),
    ("nan epochs", ["epochs=nan"], "Invalid epochs: nan (must be a finite number", _none),
    ("infinite eval_every", ["eval_every=inf"], "Invalid eval_every: inf (must be a finite", _none),
    (
        "infinite timeout",
        ["cluster.timeout_s=inf"],
        "Invalid cluster.timeout_s: inf (must be a finite number of seconds > 0)",
        _none,
    ),
    ("nan lr", ["algorithm.lr=nan"], "Invalid algorithm.lr: nan (must be finite and >= 0)", _none),
    ("nan coupling cap", ["scoping.rho_max=nan"], "Invalid scoping.rho_max: nan", _none),
    (
        "absurd max_steps",
        ["max_steps=100000000000000000000"],
        "Invalid max_steps: 100000000000000000000 (must be a finite number of at most 2**53",
        _none,
    ),
    ("negative seed", ["seed=-1"], "Invalid seed: -1 (must be in [0, 2**32))", _none),
    ("data seed past 2**32", ["data.seed=4294967296"], "Invalid data.seed: 4294967296", _none),
    (
        "ten thousand replicas",
        ["cluster.replicas_per_process=10000"],
        "Invalid cluster.replicas_per_process: 10000 (must be in [1, 1024]; for more replicas "
        "start more processes with torchrun",
        _none,
    ),
    (
        "replicas beyond the memory",
        ["model=mlp", "model.hidden=[100000,100000]"],
        "2 replicas of 10,005,200,010 parameters need about 596.4 GiB, but",
        _none,
    ),
    # Hydra's grammar, hydra.* overrides included
    (
        "unquoted non-ASCII run directory",
        [],
        """quote its value for Hydra, e.g. 'hydra.run.dir="/""",
        lambda tmp, interrupted: [f"hydra.run.dir={tmp}/ünï"],
    ),
    (
        "override without a value",
        ["epochs"],
        "cannot parse 'epochs' (missing EQUAL at '<EOF>'); an override is KEY=VALUE",
        _none,
    ),
    (
        "unclosed list",
        ["model.hidden=[1,"],
        "cannot parse the override model.hidden=[1, (",
        _none,
    ),
    # flatness of the final reference: a count, a coupling, the radii, a temperature, a chain
    ("no flatness samples", ["flatness.num_samples=0"], "Invalid flatness.num_samples: 0", _none),
    ("zero flatness gamma", ["flatness.gamma=0"], "Invalid flatness.gamma: 0.0", _none),
    ("no flatness radii", ["flatness.radii=[]"], "Invalid flatness.radii: [] (must be", _none),
    ("negative flatness noise", ["flatness.noise=-1"], "Invalid flatness.noise: -1.0", _none),
    (
        "flatness chain of one step",
        ["flatness.num_inner_steps=1"],
        "Invalid flatness.num_inner_steps: 1 (must be 0 (no local entropy) or in [2, 100000]",
        _none,
    ),
    # issue 14's keys: replica initialisation, the authors' fractions, units, schedules, variant
    (
        "fused AdamW",
        ["algorithm=adamw", "algorithm.fused=true"],
        "Invalid algorithm.fused: True (algorithm=adamw has no fused step (its AdamW steps are "
        "eager); leave it null)",
        _none,
    ),
    (
        "unknown replica init",
        ["algorithm.replica_init=copies"],
        "Invalid algorithm.replica_init: 'copies' (choose one of independent, shared)",
        _none,
    ),
    (
        "data-parallel replicas of their own",
        ["algorithm=dp_sgd", "algorithm.replica_init=independent"],
        "algorithm=dp_sgd keeps its replicas copies of one another",
        _none,
    ),
    (
        "frac policy without a fraction",
        ["data.policy=frac"],
        "Invalid data.frac: None (data.policy=frac needs each replica's fraction in (0, 1]",
        _none,
    ),
    ("fraction above one", ["data.policy=frac", "data.frac=1.5"], "Invalid data.frac: 1.5", _none),
    ("fraction zero", ["data.policy=frac", "data.frac=0"], "Invalid data.frac: 0.0", _none),
    (
        "fraction without its policy",
        ["data.frac=0.5"],
        "Invalid data.frac: 0.5 (is read only with data.policy=frac (here full); set both)",
        _none,
    ),
    (
        "fraction smaller than a batch",
        ["data.policy=frac", "data.frac=0.01"],
        "replica 0 gets 40 samples, fewer than data.batch_size=64",
        _none,
    ),
    (
        "unknown epoch unit",
        ["epoch_unit=parle"],
        "Invalid epoch_unit: 'parle' (choose one of pass, nb_outer_steps)",
        _none,
    ),
    (
        "unknown scoping period",
        ["scoping.rate_period=epoch"],
        "Invalid scoping.rate_period: 'epoch' (choose one of nb_outer_steps, pass)",
        _none,
    ),
    (
        "unknown inner lr schedule",
        ["lr_schedule.inner_lr=frozen"],
        "Invalid lr_schedule.inner_lr: 'frozen' (choose one of follow, fixed)",
        _none,
    ),
    (
        "unknown Entropy-SGD variant",
        ["algorithm=entropy_sgd", "algorithm.variant=lua"],
        "Invalid algorithm.variant: 'lua' (choose one of parle, iclr2017)",
        _none,
    ),
    # issue 15: torch's intra-op threads
    (
        "zero threads",
        ["cluster.threads=0"],
        "Invalid cluster.threads: '0' (choose auto or a",
        _none,
    ),
    ("threads not a count", ["cluster.threads=abc"], "Invalid cluster.threads: 'abc'", _none),
]
BASE = [
    "max_steps=40",
    "progress=false",
    "cluster.replicas_per_process=2",
    "algorithm.num_inner_steps=5",
]
SMALL = "model.channels=8"  # the interrupted run's model


@pytest.fixture(scope="module")
def interrupted(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run that has checkpoints but no results, as if it had been killed."""
    tmp = tmp_path_factory.mktemp("interrupted")
    done = run_cli(
        [*BASE, SMALL, "checkpoint.every_outer_steps=2", f"hydra.run.dir={tmp / 'run'}"], tmp
    )
    assert done.returncode == 0, done.stderr[-2000:]
    for name in ("results.json", "reference.pt"):
        (tmp / "run" / name).unlink()
    assert len(list((tmp / "run" / "checkpoints").glob("step-*"))) == 3
    return tmp / "run"


def _snapshot(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def test_there_are_at_least_thirty_cases() -> None:
    assert len(CASES) >= 30
    assert len({name for name, *_ in CASES}) == len(CASES)


@pytest.mark.parametrize(("name", "args", "message", "setup"), CASES, ids=[c[0] for c in CASES])
def test_bad_input(
    tmp_path: Path, interrupted: Path, name: str, args: list[str], message: str, setup: Setup
) -> None:
    extra = setup(tmp_path, interrupted)
    before = _snapshot(tmp_path)
    # another algorithm has no num_inner_steps to override
    switched = any(a.startswith("algorithm=") for a in args)
    base = [a for a in BASE if not (switched and a.startswith("algorithm."))]
    done = run_cli([*base, *args, *extra], tmp_path)
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert done.returncode == 2, (done.stdout[-2000:], done.stderr[-2000:])
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("elastic-entropy: error: ") and message in lines[0], lines[0]
    assert "Traceback" not in done.stderr
    after = _snapshot(tmp_path)
    assert {k: v for k, v in after.items() if k in before} == before  # nothing overwritten or lost
    assert not any(k.endswith(("results.json", "reference.pt")) for k in set(after) - set(before))


def test_a_quoted_non_ascii_run_directory_is_the_one_used(tmp_path: Path) -> None:
    """The fix the grammar error proposes works: Hydra takes the quoted value verbatim, and the
    precheck looks for a writable parent of that value (not of the quoted text)."""
    run = tmp_path / "ünï run"
    done = run_cli([*BASE, SMALL, f'hydra.run.dir="{run}"'], tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    assert (run / "results.json").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == [run.name]  # no folder named '"…'
