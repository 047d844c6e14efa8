"""Text for language models: the corpora, the windows, the tokenizer, the two networks, and the
next-token loss of the training pass and of evaluation."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from torch import nn

from elastic_entropy.loaders import sample_tensors
from elastic_entropy.models import build_model
from elastic_entropy.readers import DataNotFoundError
from elastic_entropy.targets import check_output
from elastic_entropy.text import CharTokenizer, pydoc_corpus, read_text, text_splits, windows
from elastic_entropy.training.evaluation import evaluate_batches
from elastic_entropy.training.passes import forward_backward


def test_windows_predict_every_next_token_of_the_split_once() -> None:
    ids = torch.arange(23)
    x, y = windows(ids, 5)
    assert x.shape == y.shape == (4, 5)
    assert torch.equal(y, x + 1)  # each target is the next id
    assert torch.equal(x.flatten(), ids[:20]) and torch.equal(y.flatten(), ids[1:21])


def test_the_tokenizer_is_the_training_texts_characters_and_unknowns_are_zero() -> None:
    tokenizer = CharTokenizer("banana")
    assert tokenizer.chars == ["a", "b", "n"] and tokenizer.vocab_size == 4
    assert tokenizer.encode("cab").tolist() == [0, 1, 2]
    assert tokenizer.decode(tokenizer.encode("nab")) == "nab"


def test_the_pydoc_corpus_is_split_by_position_into_windows() -> None:
    splits = text_splits("pydoc", "unused", 50)
    corpus = pydoc_corpus()
    assert len(corpus) > 400_000
    assert splits.input_shape == (50,) and splits.label_shape == (50,)
    assert splits.x_train.dtype == torch.long and splits.num_classes > 60
    # 90/5/5 of the characters, less what does not fill a last window
    assert splits.x_train.numel() == pytest.approx(0.9 * len(corpus), abs=51)
    assert splits.x_val is not None and splits.x_val.numel() == pytest.approx(
        0.05 * len(corpus), abs=51
    )
    first = CharTokenizer(corpus[: int(0.9 * len(corpus))]).decode(splits.x_train[0])
    assert first == corpus[:50]


def test_a_text_folder_is_read_in_the_order_of_its_files(tmp_path: Path) -> None:
    (tmp_path / "b.txt").write_text("world")
    (tmp_path / "a.txt").write_text("hello ")
    (tmp_path / "c.md").write_text("not read")
    assert read_text(tmp_path) == "hello world"
    assert read_text(tmp_path / "b.txt") == "world"
    with pytest.raises(DataNotFoundError, match="does not exist"):
        read_text(tmp_path / "missing")
    (tmp_path / "d.txt").write_bytes(b"\xff\xfe bad")
    with pytest.raises(DataNotFoundError, match="is not UTF-8"):
        read_text(tmp_path)
    with pytest.raises(ValueError, match="is longer than the corpus's smallest split"):
        text_splits("textfile", tmp_path / "a.txt", 4)


@pytest.mark.parametrize("name", ["char_lstm", "transformer"])
def test_the_language_models_are_causal_and_give_a_distribution_per_position(name: str) -> None:
    torch.manual_seed(0)
    model = build_model(name, (12,), 30).eval()
    tokens = torch.randint(0, 30, (3, 12))
    check_output(model, tokens, 30, (12,))
    changed = tokens.clone()
    changed[:, 8:] = (changed[:, 8:] + 1) % 30  # only the future of position 7 changes
    with torch.no_grad():
        before, after = model(tokens), model(changed)
    assert before.shape == (3, 12, 30)
    assert torch.allclose(before[:, :8], after[:, :8], atol=1e-6)
    assert not torch.allclose(before[:, 8:], after[:, 8:])


def test_a_language_model_on_images_or_with_uneven_heads_is_one_line() -> None:
    with pytest.raises(ValueError, match=r"needs windows of token ids \(T,\)"):
        build_model("transformer", (1, 8, 8), 10)
    with pytest.raises(ValueError, match=r"not a multiple of model\.heads=3"):
        build_model("transformer", (8,), 10, width=16, heads=3)
    with pytest.raises(ValueError, match=r"must be \[batch, 12, 30\] logits"):
        check_output(
            nn.Sequential(nn.Embedding(30, 30), nn.Flatten()), torch.zeros(2, 12).long(), 30, (12,)
        )


def test_the_next_token_loss_is_the_mean_over_every_token() -> None:
    torch.manual_seed(0)
    model = build_model("char_lstm", (6,), 9, hidden=16, embedding=8)
    x, y = torch.randint(0, 9, (4, 6)), torch.randint(0, 9, (4, 6))
    stats = forward_backward(model, x, y)
    with torch.no_grad():
        out = model(x)
    per_token = nn.functional.cross_entropy(out.reshape(-1, 9), y.reshape(-1), reduction="none")
    assert math.isclose(float(stats[0]), float(per_token.mean()), rel_tol=1e-6)
    assert float(stats[1]) == float((out.argmax(-1) == y).float().mean())
    halves = [(x[:1], y[:1]), (x[1:], y[1:])]  # uneven minibatches: the mean is per token
    assert evaluate_batches(model, halves)["loss"] == pytest.approx(float(per_token.mean()))


def test_a_sample_of_token_windows_keeps_its_ids_as_integers() -> None:
    x, y = sample_tensors((torch.tensor([3, 1, 4]), torch.tensor([1, 4, 1])), "train", 0)
    assert x.dtype == y.dtype == torch.long and y.shape == (3,)
    with pytest.raises(ValueError, match="one next-token id per input token id"):
        sample_tensors((torch.tensor([0.5, 1.0]), torch.tensor([1, 2])), "train", 0)
