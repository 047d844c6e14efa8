"""Language models from the command line: the embedded corpus and a corpus of yours, Parle on a
char-LSTM, perplexity in the results; both input paths give the same bits on text too."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from pathlib import Path

import torch

from elastic_entropy.text import pydoc_corpus
from tests.conftest import cli_env, newest_checkpoint, run_cli

SMALL = [
    "model=char_lstm",
    "model.hidden=32",
    "model.embedding=16",
    "data.seq_len=32",
    "max_steps=60",
    "algorithm.num_inner_steps=5",
    "cluster.replicas_per_process=2",
    "deterministic=true",
    "eval_every=100",
]


def _result(run_dir: Path) -> dict:
    return json.loads((run_dir / "results.json").read_text())


def test_parle_trains_a_char_lstm_on_the_embedded_corpus_and_reports_perplexity(
    tmp_path: Path,
) -> None:
    runs = {"held": [], "loaded": ["data.pipeline=loader", "data.num_workers=1"]}
    for name, extra in runs.items():
        done = run_cli(["data=pydoc", *SMALL, *extra, f"hydra.run.dir={tmp_path / name}"], tmp_path)
        assert done.returncode == 0, done.stderr[-3000:]
    reference = _result(tmp_path / "held")["reference"]
    vocab = len(set(pydoc_corpus()[: int(0.9 * len(pydoc_corpus()))])) + 1
    # better than guessing uniformly over the characters, after 60 minibatches
    assert reference["test_perplexity"] < vocab / 3
    assert reference["test_bits_per_char"] == reference["test_loss"] / 0.6931471805599453
    assert "perplexity" in done.stdout and "val_perplexity" in reference
    held, loaded = (
        torch.load(tmp_path / name / "reference.pt", weights_only=True) for name in runs
    )
    assert all(torch.equal(held[k], loaded[k]) for k in held)


def test_a_corpus_of_yours_from_a_folder_of_text_files(tmp_path: Path) -> None:
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for i in range(3):  # a short text of 28 distinct characters, repeated
        (corpus / f"part{i}.txt").write_text("the quick brown fox jumps over the lazy dog. " * 60)
    done = run_cli(
        [
            "data=textfile",
            f"data.root={corpus}",
            *SMALL,
            "max_steps=200",
            f"hydra.run.dir={tmp_path / 'run'}",
        ],
        tmp_path,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = _result(tmp_path / "run")
    # 28 characters; their frequencies alone give a perplexity of 21: the model has learned words
    assert result["data"] == "textfile" and result["reference"]["test_perplexity"] < 10


def test_diloco_on_text_resumes_bitwise_after_a_preemption(tmp_path: Path) -> None:
    """The Adam moments, the outer momentum and x are in the checkpoint: a DiLoCo run stopped by
    SIGTERM mid-round and resumed ends with the uninterrupted run's bits."""
    job = [
        "data=pydoc",
        "model=transformer",
        "model.width=16",
        "model.heads=2",
        "data.seq_len=16",
        "algorithm=diloco",
        "algorithm.num_inner_steps=5",
        "cluster.replicas_per_process=2",
        "max_steps=60",
        "checkpoint.every_outer_steps=2",
        "deterministic=true",
        "eval_every=100",
        "progress=false",
    ]
    done = run_cli([*job, f"hydra.run.dir={tmp_path / 'full'}"], tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    run = tmp_path / "cut"
    proc = subprocess.Popen(
        ["elastic-entropy", *job, f"hydra.run.dir={run}"],
        cwd=tmp_path,
        env=cli_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.time() + 120
    while newest_checkpoint(run) < 20 and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 75, err[-2000:]
    done = run_cli([*job, f"hydra.run.dir={run}"], tmp_path)
    assert done.returncode == 0 and "resumed from step" in done.stdout, done.stderr[-2000:]
    full, cut = (
        torch.load(d / "reference.pt", weights_only=True) for d in (tmp_path / "full", run)
    )
    assert all(torch.equal(full[k], cut[k]) for k in full)
    assert _result(run)["communication"]["collectives"] >= 12  # one mean per 5 steps
