"""``orchestrator info``: the configured model, built (no training) and measured."""
from __future__ import annotations

from orchestrator.config import ExperimentConfig
from orchestrator.data import load_stop_words
from orchestrator.evaluate.measure import model_figures
from orchestrator.stream.source import streaming
from orchestrator.validate import validate
from trainables.models import build_model
from trainables.text.encoders import build_text_encoder


def model_info(cfg: ExperimentConfig) -> dict:
    """Description, parameters and fp32 size of the configured model (after ``validate``: small models
    need the data for their vocabulary)."""
    if streaming(cfg):  # counted on Ray Data, never read into this process
        from orchestrator.stream.run import checked_counts

        counted = checked_counts(cfg)
        classes, encoder = counted.classes, counted.encoder
    else:
        dataset = validate(cfg)
        stop_words = load_stop_words(cfg.data.stop_words) if cfg.data.stop_words else []
        classes, encoder = dataset.classes, build_text_encoder(cfg.model, dataset.train.texts, stop_words)
    model = build_model(cfg.model, len(classes), encoder, classes=classes)
    what = cfg.model.arch if cfg.model.kind == "small" else cfg.model.name
    return {"description": f"{cfg.model.kind}:{what} ({type(model).__name__}), {len(classes)} classes",
            **model_figures(model)}
