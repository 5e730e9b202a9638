"""Structured pruning of an ``HFClassifier`` with TextPruner on transformers 5: attention heads and
FFN neurons (``TransformerPruner``, iterative, importance = |gradient x weight| of the task loss) and
the vocabulary (``VocabularyPruner``, tokens seen in the data).

transformers 5 removed ``PreTrainedModel.prune_heads``, which TextPruner calls for its final,
shape-changing step. ``prune_heads`` / ``prune_ffn`` here do that work and are lent to TextPruner
while it runs. A pruned encoder no longer matches the uniform sizes of its config, so the per-layer
sizes go into ``config.pruned_layout`` (saved with the config) and ``restore_pruned_shapes`` rebuilds
them on a freshly built model before its state dict is loaded.

Supported: encoders with BERT's layer layout (BERT, MiniLM, RoBERTa, XLM-R, ELECTRA); vocabulary
pruning also needs a WordPiece tokenizer (BERT, MiniLM, ELECTRA). No Ray, no orchestrator.
"""
from __future__ import annotations

import contextlib
import tempfile
from functools import partial
from pathlib import Path
from typing import Iterable, Mapping, Optional, Sequence

import numpy as np
import torch
from textpruner import GeneralConfig, TransformerPruner, TransformerPruningConfig, VocabularyPruner
from textpruner.tokenizer_utils import SubwordTokenizer
from tokenizers.models import WordPiece
from torch import nn
from torch.nn import functional as F
from transformers import AutoTokenizer

from trainables.batching import collate
from trainables.models.pruned_shapes import (LAYOUT_KEY, PruneError, encoder_layers, prune_attention_heads, prune_ffn_neurons,
                                             pruned_layout)

BERT_LAYOUT = ("bert", "roberta", "xlm-roberta", "electra")  # encoder.layer[i].attention.self / .output, intermediate, output
WORDPIECE = ("bert", "electra")  # TextPruner collects their vocabulary with its WordPiece helper
MODES = ("vocabulary", "transformer", "pipeline")


# ---- the shim: what transformers 4's prune_heads did, plus FFN neurons ----------------------------

def prune_heads(encoder: nn.Module, heads_to_prune: Mapping[int, Iterable[int]]) -> None:
    """transformers 4's ``PreTrainedModel.prune_heads`` ({layer: heads}), as TextPruner calls it;
    records the new layout in the config."""
    for index, heads in heads_to_prune.items():
        prune_attention_heads(encoder_layers(encoder)[index].attention, heads)
    setattr(encoder.config, LAYOUT_KEY, pruned_layout(encoder))


def prune_ffn(encoder: nn.Module, neurons_to_prune: Mapping[int, Iterable[int]]) -> None:
    """FFN neurons per layer ({layer: neurons}); records the new layout in the config."""
    for index, neurons in neurons_to_prune.items():
        prune_ffn_neurons(encoder_layers(encoder)[index], neurons)
    setattr(encoder.config, LAYOUT_KEY, pruned_layout(encoder))


# ---- TextPruner ----------------------------------------------------------------------------------

def unsupported_reason(model: nn.Module, mode: str, tokenizer=None) -> Optional[str]:
    """Why ``model`` (and ``tokenizer``, for vocabulary pruning) cannot be pruned in ``mode``, or None."""
    if mode not in MODES:
        return f"unknown pruning mode {mode!r} (expected one of {MODES})"
    model_type = getattr(getattr(getattr(model, "encoder", None), "config", None), "model_type", None)
    if model_type not in BERT_LAYOUT:
        return f"TextPruner (with the transformers-5 shim) prunes {', '.join(BERT_LAYOUT)} encoders, not {model_type or type(model).__name__}"
    if mode == "transformer":
        return None
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if model_type not in WORDPIECE or not isinstance(getattr(backend, "model", None), WordPiece):
        return f"vocabulary pruning needs a WordPiece tokenizer ({', '.join(WORDPIECE)} models), not {model_type} with {type(tokenizer).__name__}"
    return None


def _require(model: nn.Module, mode: str, tokenizer=None) -> None:
    reason = unsupported_reason(model, mode, tokenizer)
    if reason:
        raise PruneError(reason)


def _general_config(model: nn.Module, scratch: str):
    """TextPruner's GeneralConfig on the model's own device; its files (importance cache) go to scratch."""
    return GeneralConfig(use_device=str(next(model.parameters()).device), output_dir=scratch)


class _LossModel(nn.Module):
    """The classifier with its task loss as output: TextPruner scores importance by loss gradients."""

    base_model_prefix = "encoder"  # where TextPruner looks for the transformer

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    @property
    def encoder(self) -> nn.Module:
        return self.model.encoder

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        logits = self.model(input_ids, attention_mask)
        if labels.ndim == 2:  # multi-hot rows: multilabel
            return F.binary_cross_entropy_with_logits(logits, labels.float())
        return F.cross_entropy(logits, labels)


class _Pruner(TransformerPruner):
    """TransformerPruner whose final FFN step goes through ``prune_ffn``: TextPruner's own replaces
    the weights but leaves ``nn.Linear.in/out_features`` stale and the config unaware."""

    def reorder_ffn_weights(self, ffn_mask, keep_shape=False):
        if keep_shape:  # intermediate iterations only zero the weights
            return super().reorder_ffn_weights(ffn_mask, keep_shape)
        prune_ffn(self.base_model, {i: (row == 0).nonzero().flatten().tolist() for i, row in enumerate(ffn_mask)})


@contextlib.contextmanager
def _lend_prune_heads(encoder: nn.Module):
    """Give the encoder the ``prune_heads`` method TextPruner calls, for the duration only."""
    encoder.prune_heads = partial(prune_heads, encoder)
    try:
        yield
    finally:
        del encoder.prune_heads


def loss_batches(ids: Sequence[Sequence[int]], labels: np.ndarray, pad_id: int, batch_size: int = 32) -> list[dict]:
    """Batches for importance scoring: texts sorted by length (little padding), with their labels
    (class ids [N], or multi-hot rows [N, C] for multilabel)."""
    order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
    chunks = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    return [collate([ids[i] for i in rows], torch.as_tensor(np.asarray(labels)[rows]), pad_id) for rows in chunks]


def prune_transformer(model: nn.Module, batches: Sequence[dict], target_num_heads: int, target_ffn_size: int,
                      iterations: int = 4) -> nn.Module:
    """Prune every layer to ``target_num_heads`` heads and ``target_ffn_size`` FFN neurons in place,
    over ``iterations`` rounds of importance scoring on ``batches`` (see ``loss_batches``; TextPruner
    passes over them once per round). Returns the model in eval mode."""
    _require(model, "transformer")
    config = model.encoder.config
    if getattr(config, LAYOUT_KEY, None):
        raise PruneError("the encoder is already transformer-pruned: prune the unpruned model to the final targets")
    for name, target, size in (("target_num_heads", target_num_heads, config.num_attention_heads),
                               ("target_ffn_size", target_ffn_size, config.intermediate_size)):
        if not 1 <= target <= size:
            raise PruneError(f"{name}: {target} is outside 1..{size} (the model's size per layer)")
    settings = TransformerPruningConfig(target_num_of_heads=target_num_heads, target_ffn_size=target_ffn_size,
                                        pruning_method="iterative", n_iters=iterations)
    with tempfile.TemporaryDirectory() as scratch, _lend_prune_heads(model.encoder):
        pruner = _Pruner(_LossModel(model), settings, _general_config(model, scratch))
        pruner.prune(dataloader=list(batches), save_model=False)
    return model.eval()


def _pruned_tokenizer(tokenizer, kept_ids: list[int], scratch: Path):
    """The tokenizer over ``kept_ids`` (new id = position in the list). TextPruner writes their
    vocab.txt; transformers 5 saves only tokenizer.json (old ids), so that is dropped and the
    tokenizer is rebuilt from vocab.txt with its saved options (lower-casing, special tokens)."""
    tokenizer.save_pretrained(scratch)
    (scratch / "tokenizer.json").unlink(missing_ok=True)
    SubwordTokenizer.save_vocab(tokenizer, kept_ids, str(scratch))
    return AutoTokenizer.from_pretrained(str(scratch))


def prune_vocabulary(model: nn.Module, tokenizer, texts: Iterable[str]):
    """Keep only the special tokens and the tokens ``tokenizer`` produces on ``texts``: a smaller
    embedding matrix (in place) and a new tokenizer that maps those texts to the same tokens, so
    their logits do not change. Returns (model, tokenizer)."""
    _require(model, "vocabulary", tokenizer)
    with tempfile.TemporaryDirectory() as scratch:
        pruner = VocabularyPruner(model, tokenizer, general_config=_general_config(model, scratch), base_model_prefix="encoder")
        pruner.prune(dataiter=list(texts), save_model=False)
        kept = list(pruner.pruned_token_ids)
        new_tokenizer = _pruned_tokenizer(tokenizer, kept, Path(scratch) / "tokenizer")
    config = model.encoder.config
    config.vocab_size = len(kept)
    if config.pad_token_id in kept:  # the pad row moved with the renumbering; a rebuilt embedding reads it here
        config.pad_token_id = kept.index(config.pad_token_id)
        model.get_input_embeddings().padding_idx = config.pad_token_id
    return model.eval(), new_tokenizer


def prune_pipeline(model: nn.Module, tokenizer, batches: Sequence[dict], texts: Iterable[str], target_num_heads: int,
                   target_ffn_size: int, iterations: int = 4):
    """Transformer then vocabulary pruning (the order of TextPruner's PipelinePruner: ``batches`` hold
    ids of the original tokenizer). Returns (model, tokenizer)."""
    _require(model, "pipeline", tokenizer)
    prune_transformer(model, batches, target_num_heads, target_ffn_size, iterations)
    return prune_vocabulary(model, tokenizer, texts)
