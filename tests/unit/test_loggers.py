"""Loggers in one process: the optimizer's coupling diagnostics against the equations, wandb's
mode and credentials, TensorBoard's files read back, the plots and the report command."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from torch import nn

from elastic_entropy import report
from elastic_entropy.config import CONFIG_MODULE, register_configs
from elastic_entropy.loggers import (
    MetricsLogger,
    RunLogger,
    TensorBoardSink,
    check_wandb,
    resolve_wandb_mode,
    wandb_credentials,
)
from elastic_entropy.optim import ElasticSGD, Parle, replica_param_groups
from elastic_entropy.scoping import Schedule


# ---------------------------------------------------------------------------------- diagnostics
def _replicas(n: int, seed: int = 0) -> list[nn.Module]:
    torch.manual_seed(seed)
    models = [nn.Linear(3, 2) for _ in range(n)]
    for m in models[1:]:
        m.load_state_dict(models[0].state_dict())
    return models


def _flat(tensors: list[torch.Tensor]) -> torch.Tensor:
    return torch.cat([t.detach().reshape(-1).double() for t in tensors])


def _step(models: list[nn.Module], opt: torch.optim.Optimizer, generator: torch.Generator) -> None:
    for m in models:
        x = torch.randn(8, 3, generator=generator)
        nn.functional.cross_entropy(m(x), (x[:, 0] > 0).long()).backward()
    opt.step()
    opt.zero_grad()


def test_parle_diagnostics_are_the_norms_of_the_equations() -> None:
    """distance |z - r|, elastic rho_t |x - r|, proximal gamma_t |y - x|, entropy gamma_t |x - z|,
    with r = mean_a z^a, measured as the outer step starts (before the anchors move)."""
    models = _replicas(3)
    gamma = Schedule(0.05, rate=0.5, max_value=1.0)  # grows: the step's own value must be used
    rho = Schedule(0.5, rate=0.5, max_value=5.0)
    opt = Parle(
        replica_param_groups(m.parameters() for m in models),
        lr=0.1,
        num_inner_steps=4,
        gamma_schedule=gamma,
        rho_schedule=rho,
    )
    generator = torch.Generator().manual_seed(1)
    seen: dict[str, list[torch.Tensor]] = {}
    couplings: list[float] = []
    outer_step = opt._outer_step

    def spy() -> None:  # the state the outer step starts from, per replica, by public views
        seen["x"] = [_flat([opt.state[p]["anchor"] for p in m.parameters()]) for m in models]
        seen["z"] = [_flat([opt.state[p]["ema"] for p in m.parameters()]) for m in models]
        seen["y"] = [_flat(list(m.parameters())) for m in models]
        couplings[:] = [gamma.value, rho.value]
        outer_step()

    opt._outer_step = spy  # type: ignore[method-assign]
    for _ in range(4):  # one outer step without diagnostics: nothing is measured
        _step(models, opt, generator)
    assert opt.pop_diagnostics() is None
    opt.request_diagnostics()
    for _ in range(4):
        _step(models, opt, generator)
    measured = opt.pop_diagnostics()
    assert measured is not None and opt.pop_diagnostics() is None  # read once
    g, r_ = couplings
    assert (measured["gamma"], measured["rho"]) == (g, r_) and g > 0.05  # scoped, step 2's value
    x, z, y = (torch.stack(seen[k]) for k in ("x", "z", "y"))
    r = z.mean(dim=0)
    expected = {
        "distance": (z - r).norm(dim=1),
        "elastic_force": r_ * (x - r).norm(dim=1),
        "prox_force": g * (y - x).norm(dim=1),
        "entropy_grad": g * (x - z).norm(dim=1),
    }
    for name, values in expected.items():
        assert measured[name].shape == (3,)
        torch.testing.assert_close(measured[name], values, rtol=1e-5, atol=1e-7)
        assert bool((values > 0).all()), name  # the replicas moved: none of these is trivially 0


def test_elastic_sgd_diagnostics_measure_the_distance_to_the_reference() -> None:
    """No inner loop: z = x, so distance = |x - mean_a x^a| and there is no proximal pull."""
    models = _replicas(2)
    opt = ElasticSGD(replica_param_groups(m.parameters() for m in models), lr=0.1, rho=0.7)
    generator = torch.Generator().manual_seed(2)
    _step(models, opt, generator)  # the replicas drift apart (their own minibatches)
    x = torch.stack([_flat(list(m.parameters())) for m in models])
    opt.request_diagnostics()
    _step(models, opt, generator)
    measured = opt.pop_diagnostics()
    assert measured is not None
    distance = (x - x.mean(dim=0)).norm(dim=1)
    torch.testing.assert_close(measured["distance"], distance)
    torch.testing.assert_close(measured["elastic_force"], 0.7 * distance)
    assert measured["prox_force"].tolist() == [0.0, 0.0]
    assert measured["entropy_grad"].tolist() == [0.0, 0.0]


# ---------------------------------------------------------------------------------- wandb's mode
@pytest.fixture
def no_wandb_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    for name in (
        "WANDB_API_KEY",
        "WANDB_IDENTITY_TOKEN_FILE",
        "WANDB_MODE",
        "WANDB_DISABLED",
        "WANDB_BASE_URL",
    ):
        monkeypatch.delenv(name, raising=False)
    netrc = tmp_path / "netrc"
    monkeypatch.setenv("NETRC", str(netrc))
    return netrc


def test_wandb_mode_follows_the_config_then_wandb_mode_then_credentials(
    no_wandb_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert wandb_credentials() is None
    assert resolve_wandb_mode("auto") == "offline"  # no key: never blocks, never fails
    assert resolve_wandb_mode("disabled") == "disabled"
    monkeypatch.setenv("WANDB_MODE", "disabled")
    assert resolve_wandb_mode("auto") == "disabled"
    assert resolve_wandb_mode("offline") == "offline"  # the config's explicit choice wins
    monkeypatch.setenv("WANDB_MODE", "dryrun")  # wandb's old spelling
    assert resolve_wandb_mode("auto") == "offline"
    monkeypatch.setenv("WANDB_MODE", "sometimes")
    with pytest.raises(ValueError, match="Invalid WANDB_MODE: 'sometimes'"):
        resolve_wandb_mode("auto")
    monkeypatch.delenv("WANDB_MODE")
    no_wandb_env.write_text("machine api.wandb.ai login user password 0123456789abcdef\n")
    assert wandb_credentials() == str(no_wandb_env)
    assert resolve_wandb_mode("auto") == "online"
    monkeypatch.setenv("WANDB_BASE_URL", "https://wandb.example.org")  # a key for another host
    assert wandb_credentials() is None
    monkeypatch.setenv("WANDB_API_KEY", "0123456789abcdef")
    assert wandb_credentials() == "WANDB_API_KEY"


def test_online_without_credentials_is_refused_by_the_config(
    no_wandb_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(ValueError, match=r"logger\.wandb\.mode=online needs wandb credentials"):
        check_wandb("online")
    monkeypatch.setenv("WANDB_MODE", "online")
    with pytest.raises(ValueError, match="WANDB_MODE=online needs wandb credentials"):
        check_wandb("auto")
    check_wandb("offline")
    from hydra import compose, initialize_config_module

    from elastic_entropy.train import _to_config

    register_configs()
    with initialize_config_module(CONFIG_MODULE, version_base="1.3"):
        with pytest.raises(ValueError, match="run `wandb login` or set WANDB_API_KEY"):
            _to_config(compose("config", overrides=["logger=wandb"]))
        config = _to_config(
            compose("config", overrides=["logger=all", "logger.wandb.mode=offline"])
        )
    assert config.logger.sinks == ["console", "jsonl", "tensorboard", "wandb"]
    with initialize_config_module(CONFIG_MODULE, version_base="1.3"):
        with pytest.raises(ValueError, match=r"Invalid logger\.sinks"):
            _to_config(compose("config", overrides=["logger.sinks=[jsonl,mlflow]"]))


# ---------------------------------------------------------------------------------- sinks
def _scalars(log_dir: Path, tag: str) -> list[tuple[int, float]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(log_dir))
    events.Reload()
    return [(e.step, e.value) for e in events.Scalars(tag)]


def test_tensorboard_scalars_read_back_and_a_resume_hides_the_lost_steps(tmp_path: Path) -> None:
    first = TensorBoardSink(tmp_path, purge_step=1)
    for step in (10, 20, 30):
        first.log({"step": step, "train_loss": 1.0 / step, "gamma": 0.1}, step)
    first.close(0, False)
    # the checkpoint was at step 20: the resumed run writes 30 again, differently
    again = TensorBoardSink(tmp_path, purge_step=21)
    again.log({"step": 30, "train_loss": 0.5, "gamma": 0.1}, 30)
    again.close(0, False)
    read = _scalars(tmp_path, "train_loss")  # float32 on disk
    assert [step for step, _ in read] == [10, 20, 30]
    assert [value for _, value in read] == pytest.approx([0.1, 0.05, 0.5], rel=1e-6)


def test_run_logger_on_other_ranks_writes_nothing(tmp_path: Path) -> None:
    from elastic_entropy.config import AllLoggerConfig

    quiet = RunLogger(AllLoggerConfig(wandb=_offline()), tmp_path, is_main=False)
    quiet.start(0, {})
    quiet.log({"step": 1, "train_loss": 1.0})
    quiet.close()
    assert list(tmp_path.iterdir()) == []


def _offline() -> object:
    from elastic_entropy.config import WandbConfig

    return WandbConfig(mode="offline")


def test_metrics_logger_truncates_what_an_interrupted_attempt_wrote(tmp_path: Path) -> None:
    path = tmp_path / "metrics.jsonl"
    logger = MetricsLogger(path)
    for step in (10, 20, 30):
        logger.log({"step": step, "train_loss": math.inf if step == 30 else 1.0})
    logger.truncate_after(20)
    logger.log({"event": "resume", "step": 20})
    logger.close()
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert [line["step"] for line in lines] == [10, 20, 20] and lines[-1]["event"] == "resume"


# ---------------------------------------------------------------------------------- report
def _fake_run(run_dir: Path, rho: float, replicas: int = 2, steps: int = 6) -> Path:
    """A run directory as the trainer writes it, with made-up but plausible numbers."""
    run_dir.mkdir(parents=True)
    lines = []
    for outer in range(1, steps + 1):
        step = 5 * outer
        record = {
            "step": step,
            "epoch": step / 50,
            "outer_step": outer,
            "gamma": 0.03 * 1.1**outer,
            "rho": rho * 1.1**outer,
            "lr": 0.1,
            "bytes_per_replica": 1000 * outer,
            "dp_bytes_per_replica": 10000 * outer,
            "collectives": outer,
            "elapsed_s": 0.5 * outer,
            "samples_per_s": 900.0 + outer,
            "comm_wait_s": 0.01 * outer,
        }
        for name, value in (
            ("train_loss", 2.0 / outer),
            ("train_acc", 0.1 * outer),
            ("distance", 1.0 / outer),
            ("elastic_force", rho / outer),
            ("prox_force", 0.01),
            ("entropy_grad", "nan" if outer == 1 else 0.02),
        ):
            values = [
                value if isinstance(value, str) else value * (1 + 0.1 * a) for a in range(replicas)
            ]
            record[name] = values[0]
            record |= {f"{name}/replica_{a}": v for a, v in enumerate(values)}
        if outer % 3 == 0:
            record |= {"reference/test_acc": 0.5 + 0.05 * outer, "reference/test_loss": 1.0 / outer}
            record |= {"test_acc/replica_0": 0.4, "test_acc/replica_1": 0.45, "test_acc": 0.425}
            record |= {"reference_distance": 0.1, "reference_distance/replica_0": 0.1}
        lines.append(json.dumps(record))
        if outer == 3:
            lines.append(json.dumps({"event": "resume", "step": 15, "checkpoint": "x"}))
    (run_dir / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    (run_dir / "overrides.yaml").write_text(f"- algorithm.rho={rho}\n- max_steps=30\n")
    (run_dir / "config.yaml").write_text("algorithm:\n  name: parle\n")
    return run_dir


def _is_png(path: Path) -> bool:
    from matplotlib.image import imread

    data = path.read_bytes()
    return data[:8] == b"\x89PNG\r\n\x1a\n" and imread(str(path)).shape[0] > 100


def test_plots_of_a_run_are_non_empty_pngs(tmp_path: Path) -> None:
    run = _fake_run(tmp_path / "run", rho=1.0)
    paths = report.plot_run(run)
    assert [p.name for p in paths] == list(report.PLOTS)
    assert all(p.parent == run / "plots" and _is_png(p) for p in paths)


def test_report_compares_a_sweep_side_by_side(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    sweep = tmp_path / "multirun"
    _fake_run(sweep / "0", rho=0.5)
    _fake_run(sweep / "1", rho=2.0)
    (sweep / "multirun.yaml").write_text("{}\n")
    assert report.main([str(sweep)]) == 0
    table = (sweep / "report.md").read_text()
    rows = [line for line in table.splitlines() if line.startswith("| algorithm.rho=")]
    # labelled by the override that tells them apart; the last reference accuracy, the traffic
    assert [row.split(" | ")[0] for row in rows] == [
        "| algorithm.rho=0.5 (unfinished)",
        "| algorithm.rho=2.0 (unfinished)",
    ]
    assert all("| parle | 2 | 30 | 0.6 | 0.8000 | 0.8000 |" in row for row in rows)
    assert all("| 0.01 | 0.100 |" in row for row in rows)  # 6000 B = 0.01 MB, 1/10 of DP-SGD
    assert _is_png(sweep / "report.png")
    assert "![runs side by side](report.png)" in table and "](0/plots/curves.png)" in table
    assert all(_is_png(sweep / job / "plots" / name) for job in "01" for name in report.PLOTS)
    assert "2 run(s); report:" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda d: None, "no such run directory"),
        (lambda d: d.mkdir(), "holds no metrics.jsonl"),
        (
            lambda d: (d.mkdir(), (d / "metrics.jsonl").write_text('{"event": "resume"}\n')),
            "has no metrics yet",
        ),
    ],
)
def test_report_refuses_bad_input_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], make: object, message: str
) -> None:
    run = tmp_path / "run"
    make(run)  # type: ignore[operator]
    assert report.main([str(run)]) == 2
    err = capsys.readouterr().err
    assert (
        err.count("\n") == 1
        and err.startswith("elastic-entropy report: error: ")
        and message in err
    )
