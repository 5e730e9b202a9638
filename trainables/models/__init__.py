"""Model factory and the on-disk model directory.

Every model obeys one contract: ``model(input_ids=..., attention_mask=...) -> logits [B, C]`` and
``model.get_input_embeddings() -> nn.Embedding``. A model directory holds ``model.pt`` (state dict),
``model.json`` (kind, model options, classes; t5: the class names' token ids) and the text encoder,
which is all ``load_model_dir`` needs. ``model_cfg`` is a ``trainables.config.ModelConfig``.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional, Sequence

import torch
from torch import nn

from trainables.atomic import atomic_output, atomic_write_text
from trainables.config import ModelConfig
from trainables.models.pruned_shapes import restore_pruned_shapes
from trainables.text.base import TextEncoder
from trainables.text.encoders import load_text_encoder

MODEL_FILE = "model.pt"
META_FILE = "model.json"
HF_CONFIG_DIR = "hf_config"


def build_model(model_cfg: ModelConfig, num_classes: int, text_encoder: TextEncoder, hf_config: Any = None,
                classes: Optional[Sequence[str]] = None) -> nn.Module:
    """A fresh model. hf/t5: pretrained weights unless ``hf_config`` is given (then random init from it).
    t5 needs ``classes``, the class names: they are its decoder targets."""
    if model_cfg.kind == "hf":
        from trainables.models.hf import HFClassifier

        kwargs = dict(dropout=model_cfg.dropout, samples=model_cfg.multi_sample_dropout, pooling=model_cfg.pooling)
        if hf_config is not None:
            return HFClassifier.from_config(hf_config, num_classes, **kwargs)
        return HFClassifier.from_pretrained(model_cfg.name, num_classes, **kwargs)
    if model_cfg.kind == "small":
        from trainables.models.small import build_small_model

        return build_small_model(model_cfg, num_classes, text_encoder)
    if model_cfg.kind == "t5":
        from trainables.models.t5 import T5Classifier

        if classes is None or len(classes) != num_classes:
            raise ValueError(f"model.kind 't5': build_model needs the {num_classes} class names (its targets), got {classes!r}")
        class_token_ids = text_encoder.target_ids(classes)
        if hf_config is not None:
            return T5Classifier.from_config(hf_config, class_token_ids)
        return T5Classifier.from_pretrained(model_cfg.name, class_token_ids)
    raise ValueError(f"model.kind: {model_cfg.kind!r} has no classifier factory here")


def save_model_dir(directory: str | Path, model: nn.Module, text_encoder: TextEncoder, model_cfg: ModelConfig, meta: dict,
                   state_dict: Optional[dict[str, torch.Tensor]] = None) -> None:
    """Write weights (``state_dict`` or the model's own), options and tokenizer so
    ``load_model_dir`` can rebuild the model offline."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    cfg = model_cfg.model_dump(mode="json")
    encoder = getattr(model, "encoder", None)
    if cfg["kind"] == "hf" and encoder is not None:
        encoder.config.save_pretrained(directory / HF_CONFIG_DIR)
    extra = {}
    if cfg["kind"] == "t5":
        model.t5.config.save_pretrained(directory / HF_CONFIG_DIR)
        extra["class_token_ids"] = model.class_token_ids
    text_encoder.save(directory)
    weights = state_dict if state_dict is not None else model.state_dict()
    with atomic_output(directory / MODEL_FILE) as tmp:
        torch.save({k: v.detach().cpu() for k, v in weights.items()}, tmp)
    atomic_write_text(directory / META_FILE, json.dumps({**meta, **extra, "model": cfg}, indent=2))


def load_model_dir(directory: str | Path, device: Optional[str] = None) -> tuple[nn.Module, TextEncoder, dict]:
    """(model in eval mode, text encoder, meta) from a model directory."""
    directory = Path(directory)
    meta = json.loads((directory / META_FILE).read_text())
    # the state dict carries every weight: pretrained vectors need not be read again
    model_cfg = ModelConfig.model_validate({**meta["model"], "pretrained_vectors": None})
    text_encoder = load_text_encoder(directory)
    hf_config = None
    if model_cfg.kind in ("hf", "t5"):
        from transformers import AutoConfig

        hf_config = AutoConfig.from_pretrained(directory / HF_CONFIG_DIR)
    model = build_model(model_cfg, len(meta["classes"]), text_encoder, hf_config=hf_config, classes=meta["classes"])
    if model_cfg.kind == "t5" and model.class_token_ids != meta["class_token_ids"]:
        raise ValueError(f"{directory}: its tokenizer now splits the class names differently from training")
    if hf_config is not None:
        restore_pruned_shapes(model)  # a pruned encoder's layers are smaller than its config's uniform sizes
    model.load_state_dict(torch.load(directory / MODEL_FILE, map_location="cpu", weights_only=True))
    model.eval()
    if device:
        model.to(device)
    return model, text_encoder, meta


def count_parameters(models: nn.Module | Sequence[nn.Module]) -> int:
    """Parameters of a model, or of all models of an ensemble."""
    models = [models] if isinstance(models, nn.Module) else models
    return sum(p.numel() for m in models for p in m.parameters())
