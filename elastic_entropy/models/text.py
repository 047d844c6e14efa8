"""Language models over windows of token ids ``[B, T]`` -> next-token logits ``[B, T, V]``:
``char_lstm`` (the char-rnn shape: two LSTM layers of 128) and ``transformer`` (a small
decoder-only transformer, causal attention through ``scaled_dot_product_attention``).
``input_shape`` is ``(T,)`` and ``num_classes`` the vocabulary's size."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn


def _sequence_length(name: str, input_shape: tuple[int, ...]) -> int:
    if len(input_shape) != 1:
        raise ValueError(
            f"{name} needs windows of token ids (T,), got samples of shape {input_shape}; use a "
            "text data set (data=pydoc or data=textfile)"
        )
    return input_shape[0]


class CharLSTM(nn.Module):
    def __init__(
        self, vocab: int, embedding: int, hidden: int, layers: int, dropout: float
    ) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, embedding)
        # dropout between the LSTM layers (torch's), and on the last layer's output
        self.lstm = nn.LSTM(
            embedding, hidden, layers, batch_first=True, dropout=dropout if layers > 1 else 0.0
        )
        self.drop = nn.Dropout(dropout)
        self.head = nn.Linear(hidden, vocab)

    def forward(self, tokens: Tensor) -> Tensor:
        out, _ = self.lstm(self.embed(tokens))
        return self.head(self.drop(out))


def char_lstm(
    input_shape: tuple[int, ...],
    num_classes: int,
    *,
    embedding: int = 64,
    hidden: int = 128,
    layers: int = 2,
    dropout: float = 0.0,
) -> nn.Module:
    """Embedding, ``layers`` LSTM layers of ``hidden`` units, a linear read-out per position."""
    _sequence_length("char_lstm", input_shape)
    return CharLSTM(num_classes, embedding, hidden, layers, dropout)


class _Block(nn.Module):
    """Pre-norm: ``x + attention(LN x)``, then ``x + MLP(LN x)``."""

    def __init__(self, width: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.heads = heads
        self.dropout = dropout
        self.norm1 = nn.LayerNorm(width)
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)
        self.norm2 = nn.LayerNorm(width)
        self.mlp = nn.Sequential(
            nn.Linear(width, 4 * width), nn.GELU(), nn.Linear(4 * width, width)
        )
        self.drop = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        batch, length, width = x.shape
        q, k, v = self.qkv(self.norm1(x)).split(width, dim=2)
        q, k, v = (t.view(batch, length, self.heads, -1).transpose(1, 2) for t in (q, k, v))
        attended = nn.functional.scaled_dot_product_attention(
            q, k, v, is_causal=True, dropout_p=self.dropout if self.training else 0.0
        )
        x = x + self.drop(self.proj(attended.transpose(1, 2).reshape(batch, length, width)))
        return x + self.drop(self.mlp(self.norm2(x)))


class Transformer(nn.Module):
    def __init__(
        self, vocab: int, length: int, width: int, layers: int, heads: int, dropout: float
    ) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, width)
        self.position = nn.Embedding(length, width)
        self.blocks = nn.ModuleList(_Block(width, heads, dropout) for _ in range(layers))
        self.norm = nn.LayerNorm(width)
        self.head = nn.Linear(width, vocab)
        self.drop = nn.Dropout(dropout)
        for name, p in self.named_parameters():  # GPT-2's scale: the residual sums stay O(1)
            if name.endswith("proj.weight") or name.endswith("mlp.2.weight"):
                nn.init.normal_(p, std=0.02 / math.sqrt(2 * layers))

    def forward(self, tokens: Tensor) -> Tensor:
        positions = torch.arange(tokens.shape[1], device=tokens.device)
        x = self.drop(self.embed(tokens) + self.position(positions))
        for block in self.blocks:
            x = block(x)
        return self.head(self.norm(x))


def transformer(
    input_shape: tuple[int, ...],
    num_classes: int,
    *,
    width: int = 128,
    layers: int = 2,
    heads: int = 4,
    dropout: float = 0.0,
) -> nn.Module:
    """A decoder-only transformer of ``layers`` pre-norm blocks, learned positions up to the
    window's length."""
    length = _sequence_length("transformer", input_shape)
    if width % heads != 0:
        raise ValueError(
            f"transformer: model.width={width} is not a multiple of model.heads={heads}; choose "
            "a width that the heads divide"
        )
    return Transformer(num_classes, length, width, layers, heads, dropout)
