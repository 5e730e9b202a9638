"""The Python API: ``run`` an experiment, ``load`` a run's model and predict in this process.

    import orchestrator
    summary = orchestrator.run("experiments/smoke.yaml", **{"train.epochs": 1})   # or train__epochs=1
    model = orchestrator.load(summary.run.root)                                   # or "fold:0", "student", "onnx"
    model.predict(["some text"])        # [{"labels": [...], "probabilities": {...}, "truncated": False}]
    model.predict_proba(["some text"])  # numpy [N, C], columns in model.classes order

``load`` starts no Ray: the models run in the calling process (torch, or ONNX Runtime for "onnx").
Its predictions are the CLI's and the HTTP service's: the same models, weights and combination rule.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Optional, Sequence, Union

import numpy as np

from orchestrator.config import ExperimentConfig, load_config, with_overrides


def run(config: Union[str, Path, ExperimentConfig, dict], *, resume: bool = False, overwrite: bool = False,
        address: Optional[str] = None, log=print, **overrides: Any):
    """Run an experiment (a YAML path, a parsed config or its dict) on Ray and return its RunSummary.
    ``overrides`` are dotted config keys (``**{"train.epochs": 1}``), or the same with ``__`` for the
    dots (``train__epochs=1``)."""
    from orchestrator.pipeline import run_experiment

    flat = {key.replace("__", "."): value for key, value in overrides.items()}
    if isinstance(config, (str, Path)):
        cfg = load_config(config, flat)
    else:
        cfg = with_overrides(config if isinstance(config, ExperimentConfig) else ExperimentConfig.model_validate(config), flat)
    return run_experiment(cfg, resume=resume, overwrite=overwrite, address=address, log=log)


class Predictor:
    """A run's model in this process; ``predict`` answers as ``POST /predict`` does."""

    def __init__(self, model, name: str):
        self.model, self.name = model, name

    @property
    def classes(self) -> list[str]:
        return list(self.model.classes)

    @property
    def multilabel(self) -> bool:
        return self.model.multilabel

    def predict_proba(self, texts: Union[str, Sequence[str]], batch_size: int = 64) -> np.ndarray:
        """[N, C] probabilities (softmax, or per-class sigmoid for multi-label) in ``classes`` order."""
        return self.model.predict_proba(_texts(texts), batch_size)

    def predict(self, texts: Union[str, Sequence[str]], top_k: Optional[int] = None, batch_size: int = 64) -> list[dict]:
        """Per text: ``labels`` (the argmax, or every class over its threshold), ``probabilities`` (the
        ``top_k`` most probable classes, all by default, most probable first) and ``truncated``."""
        from orchestrator.evaluate.ensemble import render

        pred = self.model.predict(_texts(texts), batch_size)
        return [render(labels, probs, truncated, self.model.classes, top_k)
                for labels, probs, truncated in zip(pred.labels, pred.probs, pred.truncated)]

    def __repr__(self) -> str:
        return f"Predictor({self.name}, {len(self.classes)} classes)"


def _texts(texts: Union[str, Sequence[str]]) -> list[str]:
    items = [texts] if isinstance(texts, str) else list(texts)
    bad = next((i for i, t in enumerate(items) if not isinstance(t, str)), None)
    if bad is not None:
        raise TypeError(f"texts[{bad}] is {type(items[bad]).__name__}, not str")
    return items


def load(run_dir: Union[str, Path], model: str = "ensemble", device: Optional[str] = None) -> Predictor:
    """A Predictor for ``model`` of the run at ``run_dir``: "ensemble" (the run's ensemble), "fold:<k>",
    "student", "pruned" or "onnx" (the ensemble's ONNX exports; int8 only within export.max_int8_drop)."""
    from orchestrator.evaluate.loading import load_model
    from orchestrator.rundir import RunDir

    run_ = RunDir.open(run_dir)
    return Predictor(load_model(run_, model, device), f"{run_.root}:{model}")
