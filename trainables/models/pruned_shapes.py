"""Shrinking a BERT-layout encoder's layers in place: attention heads and FFN neurons.

A pruned encoder no longer matches the uniform sizes of its config, so its per-layer sizes are kept
in ``config.pruned_layout``; ``restore_pruned_shapes`` rebuilds them on a freshly built model before
its state dict is loaded. Used by TextPruner's shim (trainables/prune.py) and by every model load,
without importing TextPruner.
"""
from __future__ import annotations

from typing import Iterable

import torch
from torch import nn
from transformers.pytorch_utils import prune_linear_layer

LAYOUT_KEY = "pruned_layout"


class PruneError(ValueError):
    """A model, tokenizer or target that these pruners cannot handle."""


def _kept(size: int, removed: set[int], group: int = 1) -> torch.Tensor:
    """Indices of the rows that stay when the groups ``removed`` (``group`` rows each) go."""
    return torch.tensor([i for i in range(size) if i // group not in removed], dtype=torch.long)


def _check_removal(what: str, removed: set[int], size: int) -> None:
    if not removed <= set(range(size)):
        raise PruneError(f"{what}: {sorted(removed - set(range(size)))} out of range 0..{size - 1}")
    if len(removed) == size:
        raise PruneError(f"{what}: cannot remove all {size}; keep at least one")


def _slice(layer: nn.Linear, index: torch.Tensor, dim: int = 0) -> nn.Linear:
    # prune_linear_layer builds its new Linear in the default dtype: keep the layer's own (fp16, bf16)
    return prune_linear_layer(layer, index, dim).to(layer.weight.dtype)


def prune_attention_heads(attention: nn.Module, heads: Iterable[int]) -> None:
    """Remove ``heads`` (current indices) from a BERT-style attention block in place: their rows of
    query/key/value, their columns of ``output.dense``, and them from the head counts."""
    heads, self_attn = set(heads), attention.self
    if not heads:
        return
    _check_removal("heads", heads, self_attn.num_attention_heads)
    index = _kept(self_attn.all_head_size, heads, self_attn.attention_head_size)
    for name in ("query", "key", "value"):
        setattr(self_attn, name, _slice(getattr(self_attn, name), index))
    attention.output.dense = _slice(attention.output.dense, index, dim=1)
    # The 5.24 forward reshapes to (-1 heads, attention_head_size) and scales by ``scaling``, both
    # unchanged; the counts are bookkeeping that pruned_layout and TextPruner read.
    self_attn.num_attention_heads -= len(heads)
    self_attn.all_head_size = self_attn.num_attention_heads * self_attn.attention_head_size


def prune_ffn_neurons(layer: nn.Module, neurons: Iterable[int]) -> None:
    """Remove FFN ``neurons`` of a transformer layer in place: rows of ``intermediate.dense`` and
    columns of ``output.dense``."""
    neurons = set(neurons)
    if not neurons:
        return
    _check_removal("FFN neurons", neurons, layer.intermediate.dense.out_features)
    index = _kept(layer.intermediate.dense.out_features, neurons)
    layer.intermediate.dense = _slice(layer.intermediate.dense, index)
    layer.output.dense = _slice(layer.output.dense, index, dim=1)


def encoder_layers(encoder: nn.Module) -> nn.ModuleList:
    return encoder.encoder.layer


def pruned_layout(encoder: nn.Module) -> dict[str, list[int]]:
    """Heads and FFN size of every layer, as they are now."""
    return {"num_heads": [layer.attention.self.num_attention_heads for layer in encoder_layers(encoder)],
            "intermediate_sizes": [layer.intermediate.dense.out_features for layer in encoder_layers(encoder)]}


def restore_pruned_shapes(model: nn.Module) -> None:
    """Shrink a model freshly built from a pruned config to the recorded per-layer sizes, so the
    pruned state dict loads; no-op for unpruned configs and models without an HF encoder. Call it
    between building the model and ``load_state_dict``."""
    config = getattr(getattr(model, "encoder", None), "config", None)
    layout = getattr(config, LAYOUT_KEY, None)
    if not layout:
        return
    for layer, heads, ffn in zip(encoder_layers(model.encoder), layout["num_heads"], layout["intermediate_sizes"]):
        # Which rows go does not matter: the state dict overwrites every weight.
        prune_attention_heads(layer.attention, range(heads, layer.attention.self.num_attention_heads))
        prune_ffn_neurons(layer, range(ffn, layer.intermediate.dense.out_features))
