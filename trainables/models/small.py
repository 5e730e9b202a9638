"""Classifiers trained from scratch on a ``VocabTextEncoder``: FastText, TextCNN, TextRNN, TextRCNN
and a small Transformer.

All share the model contract (``forward(input_ids, attention_mask) -> logits``,
``get_input_embeddings()``) and must export to ONNX with dynamic batch and length, so forward
has no data-dependent Python branches and no ``pack_padded_sequence``: padding is handled with
masks (right padding, as ``collate`` produces). Appending pad positions never changes the logits.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from trainables.config import ModelConfig
from trainables.models.head import ClassifierHead
from trainables.tricks.optim import init_weights


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of ``x [B, T, D]`` over the positions where ``mask [B, T]`` is set; 0 for empty rows."""
    m = mask.unsqueeze(-1).to(x.dtype)
    return (x * m).sum(1) / m.sum(1).clamp(min=1.0)


def masked_max(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Max of ``x [B, T, D]`` over the positions where ``mask [B, T]`` is set; 0 for empty rows."""
    m = mask.unsqueeze(-1).bool()
    pooled = x.masked_fill(~m, torch.finfo(x.dtype).min).amax(1)
    return torch.where(m.any(1), pooled, torch.zeros_like(pooled))


def positions_below(limit: torch.Tensor, width: int) -> torch.Tensor:
    """Bool ``[B, width]``: position t is set where t < limit[b]."""
    return torch.arange(width, device=limit.device).unsqueeze(0) < limit.unsqueeze(1)


def reverse_valid(x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Reverse each row of ``x [B, T, D]`` within its first ``lengths[b]`` positions, pads stay put.

    This lets a forward-running RNN read a right-padded sequence backwards starting at its last
    real token, which is what ``pack_padded_sequence`` would do, in an ONNX-exportable way.
    Applying it twice is the identity.
    """
    t = torch.arange(x.size(1), device=x.device).unsqueeze(0)
    n = lengths.unsqueeze(1)
    index = torch.where(t < n, n - 1 - t, t)
    return x.gather(1, index.unsqueeze(-1).expand_as(x))


class SmallClassifier(nn.Module):
    """Token embedding (pad row zero) + an encoder defined by subclasses + ``ClassifierHead``."""

    def __init__(self, vocab_size: int, embedding_dim: int, pad_id: int):
        super().__init__()
        self.embedding = nn.Embedding(vocab_size, embedding_dim, padding_idx=pad_id)

    def get_input_embeddings(self) -> nn.Embedding:
        return self.embedding

    def embed(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Embeddings zeroed at pad positions, so a perturbed pad row (adversarial training) or any
        id under mask 0 cannot leak into convolutions or pooling."""
        return self.embedding(input_ids) * attention_mask.unsqueeze(-1).to(self.embedding.weight.dtype)


class FastText(SmallClassifier):
    """Joulin et al. 2017: mean of token embeddings -> linear."""

    def __init__(self, vocab_size: int, embedding_dim: int, pad_id: int, num_classes: int, dropout: float, samples: int):
        super().__init__(vocab_size, embedding_dim, pad_id)
        self.head = ClassifierHead(embedding_dim, num_classes, dropout, samples)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.head(masked_mean(self.embed(input_ids, attention_mask), attention_mask))


class TextCNN(SmallClassifier):
    """Kim 2014: parallel convolutions of several widths, ReLU, max over time, concatenated.

    Input is padded by ``max(kernel_sizes) - 1`` zeros so texts shorter than the widest kernel
    still have one window; only windows that start inside the text (or the first one, for short
    texts) enter the max, which keeps the logits independent of the amount of padding.
    """

    def __init__(self, vocab_size: int, embedding_dim: int, pad_id: int, num_classes: int, dropout: float, samples: int,
                 num_filters: int, kernel_sizes: list[int]):
        super().__init__(vocab_size, embedding_dim, pad_id)
        if not kernel_sizes or min(kernel_sizes) < 1:
            raise ValueError(f"model.kernel_sizes: need at least one width >= 1, got {kernel_sizes}")
        self.kernel_sizes = list(kernel_sizes)
        self.convs = nn.ModuleList(nn.Conv1d(embedding_dim, num_filters, k) for k in self.kernel_sizes)
        self.head = ClassifierHead(num_filters * len(self.kernel_sizes), num_classes, dropout, samples)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        x = self.embed(input_ids, attention_mask).transpose(1, 2)
        x = nn.functional.pad(x, (0, max(self.kernel_sizes) - 1))
        lengths = attention_mask.sum(1)
        pooled = []
        for k, conv in zip(self.kernel_sizes, self.convs):
            windows = torch.relu(conv(x)).transpose(1, 2)
            pooled.append(masked_max(windows, positions_below((lengths - k + 1).clamp(min=1), windows.size(1))))
        return self.head(torch.cat(pooled, dim=1))


class MaskedRNN(nn.Module):
    """Stacked LSTM/GRU over right-padded input; the backward direction starts at each row's last
    real token (see ``reverse_valid``). Outputs at pad positions are meaningless: pool with the mask."""

    def __init__(self, input_size: int, hidden_size: int, num_layers: int, rnn_type: str, bidirectional: bool, dropout: float):
        super().__init__()
        cells = {"lstm": nn.LSTM, "gru": nn.GRU}
        if rnn_type not in cells:
            raise ValueError(f"model.rnn_type: {rnn_type!r} is not one of {sorted(cells)}")
        directions = 2 if bidirectional else 1
        self.output_size = hidden_size * directions
        # One single-layer, one-direction RNN per (layer, direction): a stacked bidirectional
        # nn.LSTM would run its backward pass from the pads.
        self.layers = nn.ModuleList(
            nn.ModuleList(cells[rnn_type](input_size if i == 0 else self.output_size, hidden_size, batch_first=True)
                          for _ in range(directions))
            for i in range(num_layers)
        )
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        lengths = attention_mask.sum(1)
        for i, layer in enumerate(self.layers):
            if i > 0:
                x = self.dropout(x)
            outputs = [layer[0](x)[0]]
            if len(layer) == 2:
                outputs.append(reverse_valid(layer[1](reverse_valid(x, lengths))[0], lengths))
            x = torch.cat(outputs, dim=-1)
        return x


class TextRNN(SmallClassifier):
    """(Bi)LSTM/GRU, masked mean of the outputs over the real tokens."""

    def __init__(self, vocab_size: int, embedding_dim: int, pad_id: int, num_classes: int, dropout: float, samples: int,
                 hidden_size: int, num_layers: int, rnn_type: str, bidirectional: bool):
        super().__init__(vocab_size, embedding_dim, pad_id)
        self.rnn = MaskedRNN(embedding_dim, hidden_size, num_layers, rnn_type, bidirectional, dropout)
        self.head = ClassifierHead(self.rnn.output_size, num_classes, dropout, samples)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.rnn(self.embed(input_ids, attention_mask), attention_mask)
        return self.head(masked_mean(hidden, attention_mask))


class TextRCNN(SmallClassifier):
    """Lai et al. 2015: [left/right RNN context; embedding] -> linear + tanh -> max over time."""

    def __init__(self, vocab_size: int, embedding_dim: int, pad_id: int, num_classes: int, dropout: float, samples: int,
                 hidden_size: int, num_layers: int, rnn_type: str, bidirectional: bool):
        super().__init__(vocab_size, embedding_dim, pad_id)
        self.rnn = MaskedRNN(embedding_dim, hidden_size, num_layers, rnn_type, bidirectional, dropout)
        self.project = nn.Linear(self.rnn.output_size + embedding_dim, hidden_size)
        self.head = ClassifierHead(hidden_size, num_classes, dropout, samples)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        x = self.embed(input_ids, attention_mask)
        features = torch.tanh(self.project(torch.cat([self.rnn(x, attention_mask), x], dim=-1)))
        return self.head(masked_max(features, attention_mask))


class EncoderLayer(nn.Module):
    """Pre-norm self-attention + GELU feed-forward block.

    Written out rather than ``nn.TransformerEncoderLayer``: the TorchScript ONNX exporter bakes the
    export-time sequence length into ``nn.MultiheadAttention``'s reshapes (pytorch/pytorch#117209,
    still so in torch 2.13), so the exported model would reject any other length.
    """

    def __init__(self, hidden_size: int, num_heads: int, dropout: float):
        super().__init__()
        self.num_heads = num_heads
        self.scale = (hidden_size // num_heads) ** -0.5
        self.norm1 = nn.LayerNorm(hidden_size)
        self.qkv = nn.Linear(hidden_size, 3 * hidden_size)
        self.out = nn.Linear(hidden_size, hidden_size)
        self.norm2 = nn.LayerNorm(hidden_size)
        self.feed_forward = nn.Sequential(
            nn.Linear(hidden_size, 4 * hidden_size), nn.GELU(), nn.Dropout(dropout), nn.Linear(4 * hidden_size, hidden_size),
        )
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, key_bias: torch.Tensor) -> torch.Tensor:
        """``x [B, T, H]``; ``key_bias [B, 1, 1, T]`` is added to the attention scores."""
        batch, length, width = x.size(0), x.size(1), x.size(2)
        q, k, v = (t.view(batch, length, self.num_heads, -1).transpose(1, 2) for t in self.qkv(self.norm1(x)).chunk(3, -1))
        scores = q @ k.transpose(-1, -2) * self.scale + key_bias
        attended = (self.dropout(scores.softmax(-1)) @ v).transpose(1, 2).reshape(batch, length, width)
        x = x + self.dropout(self.out(attended))
        return x + self.dropout(self.feed_forward(self.norm2(x)))


class Transformer(SmallClassifier):
    """Embedding (projected to ``hidden_size`` if widths differ) + learned positions -> pre-norm
    encoder layers -> final LayerNorm -> masked mean."""

    def __init__(self, vocab_size: int, embedding_dim: int, pad_id: int, num_classes: int, dropout: float, samples: int,
                 hidden_size: int, num_layers: int, num_heads: int, max_length: int):
        super().__init__(vocab_size, embedding_dim, pad_id)
        if hidden_size % num_heads:
            raise ValueError(f"model.hidden_size ({hidden_size}) must be divisible by model.num_heads ({num_heads})")
        self.project = nn.Identity() if embedding_dim == hidden_size else nn.Linear(embedding_dim, hidden_size)
        self.positions = nn.Embedding(max_length, hidden_size)
        self.layers = nn.ModuleList(EncoderLayer(hidden_size, num_heads, dropout) for _ in range(num_layers))
        self.norm = nn.LayerNorm(hidden_size)
        self.head = ClassifierHead(hidden_size, num_classes, dropout, samples)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        positions = torch.arange(input_ids.size(1), device=input_ids.device)
        x = self.project(self.embed(input_ids, attention_mask)) + self.positions(positions)
        # The most negative finite value rather than -inf: pads get weight exactly 0, and a row
        # without tokens softmaxes to uniform weights instead of NaN (its pooled vector is 0 anyway).
        key_bias = (attention_mask == 0).to(x.dtype)[:, None, None, :] * torch.finfo(x.dtype).min
        for layer in self.layers:
            x = layer(x, key_bias)
        return self.head(masked_mean(self.norm(x), attention_mask))


def vector_dim(first_line: str) -> tuple[int, bool]:
    """(vector dimension, whether it is a ``count dim`` header) read from a word-vector file's first line."""
    fields = first_line.rstrip().split(" ")
    header = len(fields) == 2 and all(s.isdigit() for s in fields)
    return (int(fields[1]) if header else len(fields) - 1), header


def load_vectors(embedding: nn.Embedding, path: str | Path, itos: list[str], skip: int) -> int:
    """Copy rows of a word-vector text file (``token v1 v2 ...``, optional ``count dim`` first
    line) into ``embedding`` for tokens of ``itos``, except id ``skip`` (the pad row stays zero).
    Returns how many rows were copied."""
    stoi = {t: i for i, t in enumerate(itos)}
    dim = embedding.embedding_dim
    copied = 0
    with open(path, encoding="utf-8") as f, torch.no_grad():
        for number, line in enumerate(f, 1):
            line = line.rstrip()
            if not line:
                continue
            if number == 1:
                file_dim, header = vector_dim(line)
                if file_dim != dim:
                    raise ValueError(f"model.pretrained_vectors: {path} has {file_dim}-dimensional vectors, "
                                     f"model.embedding_dim is {dim}")
                if header:
                    continue
            # Split from the right so tokens containing spaces (found in some vector files) survive.
            token, *values = line.rsplit(" ", dim)
            index = stoi.get(token)
            if index is None or index == skip:
                continue  # most lines of a large file: skip before parsing numbers
            try:
                if len(values) != dim:
                    raise ValueError
                embedding.weight[index] = torch.tensor([float(v) for v in values], dtype=embedding.weight.dtype)
            except ValueError:
                raise ValueError(f"model.pretrained_vectors: {path} line {number} is not a token and {dim} numbers") from None
            copied += 1
    return copied


ARCHS = {"fasttext": FastText, "textcnn": TextCNN, "textrnn": TextRNN, "textrcnn": TextRCNN, "transformer": Transformer}


def _arch_options(model_cfg: ModelConfig, max_length: int) -> dict[str, Any]:
    """The constructor arguments that differ between architectures."""
    if model_cfg.arch == "textcnn":
        return dict(num_filters=model_cfg.num_filters, kernel_sizes=model_cfg.kernel_sizes)
    if model_cfg.arch in ("textrnn", "textrcnn"):
        return dict(hidden_size=model_cfg.hidden_size, num_layers=model_cfg.num_layers, rnn_type=model_cfg.rnn_type,
                    bidirectional=model_cfg.bidirectional)
    if model_cfg.arch == "transformer":
        return dict(hidden_size=model_cfg.hidden_size, num_layers=model_cfg.num_layers, num_heads=model_cfg.num_heads,
                    max_length=max_length)
    return {}


def build_small_model(model_cfg: ModelConfig, num_classes: int, text_encoder: Any) -> SmallClassifier:
    """A fresh ``model_cfg.arch`` classifier over ``text_encoder``'s vocabulary: weights initialised
    by ``model_cfg.init``, then rows of ``model_cfg.pretrained_vectors`` (if set) copied in."""
    if model_cfg.arch not in ARCHS:
        raise ValueError(f"model.arch: {model_cfg.arch!r} is not one of {sorted(ARCHS)}")
    model = ARCHS[model_cfg.arch](
        len(text_encoder.itos), model_cfg.embedding_dim, text_encoder.pad_id, num_classes, model_cfg.dropout,
        model_cfg.multi_sample_dropout, **_arch_options(model_cfg, text_encoder.max_length),
    )
    init_weights(model, model_cfg.init)  # keeps the pad row at zero
    if model_cfg.pretrained_vectors:
        load_vectors(model.get_input_embeddings(), model_cfg.pretrained_vectors, text_encoder.itos, skip=text_encoder.pad_id)
    return model
