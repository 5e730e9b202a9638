"""Model description, parameter count and size (the seed's show_model_info)."""
from __future__ import annotations

from orchestrator.config import ExperimentConfig
from orchestrator.data import load_dataset, load_stop_words
from trainables.models import build_model
from trainables.text.encoders import build_text_encoder


def model_info(cfg: ExperimentConfig) -> dict:
    """Build the configured model (no training) and measure it; small models need the data for their vocabulary."""
    dataset = load_dataset(cfg.data, cfg.seed)
    stop_words = load_stop_words(cfg.data.stop_words) if cfg.data.stop_words else []
    encoder = build_text_encoder(cfg.model, dataset.train.texts, stop_words)
    model = build_model(cfg.model, len(dataset.classes), encoder, classes=dataset.classes)
    params = sum(p.numel() for p in model.parameters())
    size = sum(p.numel() * p.element_size() for p in model.parameters()) + sum(b.numel() * b.element_size() for b in model.buffers())
    what = cfg.model.arch if cfg.model.kind == "small" else cfg.model.name
    return {"description": f"{cfg.model.kind}:{what} ({type(model).__name__}), {len(dataset.classes)} classes",
            "parameters": params, "trainable_parameters": sum(p.numel() for p in model.parameters() if p.requires_grad),
            "size_mb": size / 2**20}
