"""Model factory and the on-disk model directory.

Every model obeys one contract: ``model(input_ids=..., attention_mask=...) -> logits [B, C]`` and
``model.get_input_embeddings() -> nn.Embedding``. A model directory holds ``model.pt`` (state dict),
``model.json`` (kind, model options, classes) and the text encoder, which is all ``load_model_dir``
needs. ``model_cfg`` is any object with the attributes of ``orchestrator.config.ModelConfig``.
"""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Optional, Sequence

import torch
from torch import nn

from trainables.tokenization import HFTextEncoder, TextEncoder, load_text_encoder

MODEL_FILE = "model.pt"
META_FILE = "model.json"
HF_CONFIG_DIR = "hf_config"


def build_text_encoder(model_cfg: Any, train_texts: Sequence[str], stop_words: Sequence[str] = ()) -> TextEncoder:
    """The tokenizer of a pretrained model, or a vocabulary built from the training texts."""
    if model_cfg.kind in ("hf", "t5"):
        from trainables.models.hf import resolve_pretrained

        return HFTextEncoder.from_pretrained(resolve_pretrained(model_cfg.name), model_cfg.max_length)
    from trainables.vocab import VocabTextEncoder

    return VocabTextEncoder.build(
        train_texts, tokens=model_cfg.tokens, max_length=model_cfg.max_length, vocab_size=model_cfg.vocab_size,
        min_freq=model_cfg.min_freq, stop_words=stop_words,
    )


def build_model(model_cfg: Any, num_classes: int, text_encoder: TextEncoder, hf_config: Any = None) -> nn.Module:
    """A fresh model. hf: pretrained weights unless ``hf_config`` is given (then random init from it)."""
    if model_cfg.kind == "hf":
        from trainables.models.hf import HFClassifier

        kwargs = dict(dropout=model_cfg.dropout, samples=model_cfg.multi_sample_dropout, pooling=model_cfg.pooling)
        if hf_config is not None:
            return HFClassifier.from_config(hf_config, num_classes, **kwargs)
        return HFClassifier.from_pretrained(model_cfg.name, num_classes, **kwargs)
    if model_cfg.kind == "small":
        from trainables.models.small import build_small_model

        return build_small_model(model_cfg, num_classes, text_encoder)
    raise ValueError(f"model.kind: {model_cfg.kind!r} has no classifier factory here")


def _atomic_torch_save(obj: Any, path: Path) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    os.close(fd)
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_model_dir(directory: str | Path, model: nn.Module, text_encoder: TextEncoder, model_cfg: Any, meta: dict,
                   state_dict: Optional[dict[str, torch.Tensor]] = None) -> None:
    """Write weights (``state_dict`` or the model's own), options and tokenizer so
    ``load_model_dir`` can rebuild the model offline."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    cfg = model_cfg.model_dump(mode="json") if hasattr(model_cfg, "model_dump") else dict(vars(model_cfg))
    encoder = getattr(model, "encoder", None)
    if cfg["kind"] == "hf" and encoder is not None:
        encoder.config.save_pretrained(directory / HF_CONFIG_DIR)
    text_encoder.save(directory)
    weights = state_dict if state_dict is not None else model.state_dict()
    _atomic_torch_save({k: v.detach().cpu() for k, v in weights.items()}, directory / MODEL_FILE)
    (directory / META_FILE).write_text(json.dumps({**meta, "model": cfg}, indent=2))


def load_model_dir(directory: str | Path, device: Optional[str] = None) -> tuple[nn.Module, TextEncoder, dict]:
    """(model in eval mode, text encoder, meta) from a model directory."""
    directory = Path(directory)
    meta = json.loads((directory / META_FILE).read_text())
    # the state dict carries every weight: pretrained vectors need not be read again
    model_cfg = SimpleNamespace(**{**meta["model"], "pretrained_vectors": None})
    text_encoder = load_text_encoder(directory)
    hf_config = None
    if model_cfg.kind == "hf":
        from transformers import AutoConfig

        hf_config = AutoConfig.from_pretrained(directory / HF_CONFIG_DIR)
    model = build_model(model_cfg, len(meta["classes"]), text_encoder, hf_config=hf_config)
    model.load_state_dict(torch.load(directory / MODEL_FILE, map_location="cpu", weights_only=True))
    model.eval()
    if device:
        model.to(device)
    return model, text_encoder, meta
