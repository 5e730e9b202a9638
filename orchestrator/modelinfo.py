"""``orchestrator info``: the configured model, built (no training) and measured."""
from __future__ import annotations

from orchestrator.config import ExperimentConfig
from orchestrator.data import load_stop_words
from orchestrator.evaluate.measure import model_figures
from orchestrator.validate import validate
from trainables.models import build_model
from trainables.text.encoders import build_text_encoder


def model_info(cfg: ExperimentConfig) -> dict:
    """Description, parameters and fp32 size of the configured model (after ``validate``: small models
    need the data for their vocabulary)."""
    dataset = validate(cfg)
    stop_words = load_stop_words(cfg.data.stop_words) if cfg.data.stop_words else []
    encoder = build_text_encoder(cfg.model, dataset.train.texts, stop_words)
    model = build_model(cfg.model, len(dataset.classes), encoder, classes=dataset.classes)
    what = cfg.model.arch if cfg.model.kind == "small" else cfg.model.name
    return {"description": f"{cfg.model.kind}:{what} ({type(model).__name__}), {len(dataset.classes)} classes",
            **model_figures(model)}
