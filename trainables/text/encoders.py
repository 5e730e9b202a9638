"""Every model kind's text encoder: built from the model config (a pretrained tokenizer, or a
vocabulary counted on the training texts) and loaded back from a model directory by its ``kind``."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

from trainables.config import ModelConfig
from trainables.pretrained import resolve_pretrained
from trainables.text.base import ENCODER_FILE, TextEncoder
from trainables.text.hf import HFTextEncoder
from trainables.text.t5 import T5TextEncoder
from trainables.text.vocab import VocabTextEncoder


def build_text_encoder(model_cfg: ModelConfig, train_texts: Sequence[str], stop_words: Sequence[str] = ()) -> TextEncoder:
    """The tokenizer of a pretrained model, or a vocabulary built from the training texts."""
    if model_cfg.kind == "t5":
        return T5TextEncoder.from_pretrained(resolve_pretrained(model_cfg.name), model_cfg.max_length, model_cfg.prefix)
    if model_cfg.kind == "hf":
        return HFTextEncoder.from_pretrained(resolve_pretrained(model_cfg.name), model_cfg.max_length)
    return VocabTextEncoder.build(
        train_texts, tokens=model_cfg.tokens, max_length=model_cfg.max_length, vocab_size=model_cfg.vocab_size,
        min_freq=model_cfg.min_freq, stop_words=stop_words,
    )


def load_text_encoder(directory: str | Path) -> TextEncoder:
    """Rebuild the encoder that ``save`` wrote into directory."""
    directory = Path(directory)
    meta = json.loads((directory / ENCODER_FILE).read_text())
    if meta["kind"] == "hf":
        return HFTextEncoder.from_pretrained(str(directory / "tokenizer"), meta["max_length"])
    if meta["kind"] == "t5":
        return T5TextEncoder.load(directory)
    return VocabTextEncoder.load(directory)
