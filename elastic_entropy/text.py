"""Text for language modelling, never downloaded: a corpus cut into windows of token ids.

``data=pydoc``: the English text of the Python standard library's own help topics
(``pydoc_data/topics.py``, about 0.46 M characters of prose and grammar, shipped with every
CPython), the topics in the order of their names. ``data=textfile``: a local text file, or every
``*.txt`` file of a folder in the order of their names (``data.root``), for a corpus of yours.

The corpus is split by position (the first 90% of its characters for training, the next 5% for
validation, the last 5% for testing: no window of one split overlaps another's) and read as
characters. The vocabulary is the training split's characters in code-point order, after id 0,
which stands for any character the training split does not have. Each split is cut into
consecutive windows of ``seq_len + 1`` characters that overlap by one: a sample's input is the
window's first ``seq_len`` ids, its target the next ``seq_len`` (the input shifted by one), so
the next-token loss of every position of the split is counted exactly once.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor

from elastic_entropy.readers import DataNotFoundError
from elastic_entropy.splits import DataSplits

TEXT_SETS = ("pydoc", "textfile")
SPLIT = (0.9, 0.05)  # train, validation: the test split is the rest
UNKNOWN = 0  # the id of a character the training split does not have


def pydoc_corpus() -> str:
    """The standard library's help topics, in the order of their names."""
    from pydoc_data.topics import topics

    return "".join(topics[name] for name in sorted(topics))


def read_text(path: Path) -> str:
    """A text file, or the ``*.txt`` files of a folder in the order of their names."""
    if path.is_file():
        files = [path]
    elif path.is_dir():
        files = sorted(path.glob("*.txt"))
        if not files:
            raise DataNotFoundError(
                f"text folder {path} holds no *.txt file; put your corpus there as text files"
            )
    else:
        raise DataNotFoundError(
            f"text corpus {path} does not exist: data=textfile reads a local .txt file or a "
            "folder of them; set data.root to it"
        )
    try:
        return "".join(f.read_text(encoding="utf-8") for f in files)
    except UnicodeDecodeError as error:
        raise DataNotFoundError(
            f"text corpus {path}: a file is not UTF-8 ({error.reason} at byte {error.start}); "
            "convert it to UTF-8"
        ) from None


class CharTokenizer:
    """Characters to ids: the training text's characters in code-point order, from 1."""

    def __init__(self, text: str) -> None:
        self.chars = sorted(set(text))
        self.ids = {c: i + 1 for i, c in enumerate(self.chars)}

    @property
    def vocab_size(self) -> int:
        return len(self.chars) + 1

    def encode(self, text: str) -> Tensor:
        return torch.tensor([self.ids.get(c, UNKNOWN) for c in text], dtype=torch.long)

    def decode(self, ids: Tensor) -> str:
        return "".join(self.chars[i - 1] if i > 0 else "\ufffd" for i in ids.tolist())


def windows(ids: Tensor, seq_len: int) -> tuple[Tensor, Tensor]:
    """``[N, seq_len]`` inputs and their targets (shifted by one) from consecutive windows."""
    count = (len(ids) - 1) // seq_len
    used = ids[: count * seq_len + 1]
    x = used[:-1].reshape(count, seq_len)
    y = used[1:].reshape(count, seq_len)
    return x.contiguous(), y.contiguous()


def text_splits(name: str, root: str | Path, seq_len: int) -> DataSplits:
    """``data=pydoc`` or ``data=textfile``, windowed into train, validation and test."""
    if seq_len < 1:
        raise ValueError(f"Invalid data.seq_len: {seq_len} (must be >= 1)")
    text = pydoc_corpus() if name == "pydoc" else read_text(Path(root).expanduser())
    cut_train = int(SPLIT[0] * len(text))
    cut_val = cut_train + int(SPLIT[1] * len(text))
    parts = text[:cut_train], text[cut_train:cut_val], text[cut_val:]
    tokenizer = CharTokenizer(parts[0])
    shortest = min(len(p) for p in parts)
    if shortest < seq_len + 1:
        raise ValueError(
            f"data.seq_len={seq_len} is longer than the corpus's smallest split ({shortest} "
            "characters, 5% of it); use a smaller data.seq_len or a longer corpus"
        )
    (x_train, y_train), (x_val, y_val), (x_test, y_test) = (
        windows(tokenizer.encode(p), seq_len) for p in parts
    )
    return DataSplits(
        x_train,
        y_train,
        x_test,
        y_test,
        tokenizer.vocab_size,
        (seq_len,),
        x_val=x_val,
        y_val=y_val,
    )
