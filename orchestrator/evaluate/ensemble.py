"""The fold ensemble: K model directories that share one text encoder; logits are averaged.

Multiclass: mean of the K logit vectors, then softmax. Multilabel: mean of the K sigmoid
probabilities, then the threshold (averaging logits would let one confident fold dominate). The mean
is weighted when the members carry weights (ensemble selection, orchestrator/evaluate/selection.py).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch

from orchestrator.rundir import RunDir
from trainables.inference import predict_logits
from trainables.metrics import predict_labels, probabilities
from trainables.models import load_model_dir
from trainables.text.base import TextEncoder


@dataclass
class Prediction:
    labels: list[list[str]]           # predicted class names per text (one for multiclass)
    probs: np.ndarray                 # [N, C] probabilities
    truncated: list[bool]             # text longer than the model's max_length


def combine(fold_logits: np.ndarray, multilabel: bool, weights: Optional[Sequence[float]] = None) -> np.ndarray:
    """[N, C] ensemble probabilities from [K, N, C] fold logits (the rule in this module's docstring),
    members weighted by ``weights`` (default: equal)."""
    if multilabel:
        return np.average([probabilities(l, True) for l in fold_logits], axis=0, weights=weights)
    return probabilities(np.average(np.asarray(fold_logits), axis=0, weights=weights), False)


class EnsembleBase:
    """Everything but the fold models: subclasses load them in ``_load`` and run them in
    ``fold_logits``; combining folds and naming classes is shared."""

    def __init__(self, model_dirs: Sequence[str | Path], weights: Optional[Sequence[float]] = None):
        if not model_dirs:
            raise FileNotFoundError("no trained fold models found")
        if weights is not None and len(weights) != len(model_dirs):
            raise ValueError(f"ensemble: {len(weights)} weights for {len(model_dirs)} models")
        self.model_dirs = [str(d) for d in model_dirs]
        self.weights = None if weights is None else [float(w) for w in weights]
        self.encoder, self.meta = self._load(self.model_dirs)
        self.classes: list[str] = self.meta["classes"]
        self.multilabel: bool = self.meta["multilabel"]
        self.threshold: float | list[float] = self.meta.get("threshold", 0.5)  # list: one per class (tuned)

    def _load(self, model_dirs: list[str]) -> tuple[TextEncoder, dict]:
        """Load the fold models; return the (shared) text encoder and the first fold's meta."""
        raise NotImplementedError

    def fold_logits(self, ids: Sequence[Sequence[int]], batch_size: int = 64) -> np.ndarray:
        """[K, N, C] logits of every fold model."""
        raise NotImplementedError

    def encode(self, texts: Sequence[str]) -> list[list[int]]:
        return self.encoder.encode(texts)

    def combine(self, fold_logits: np.ndarray) -> np.ndarray:
        """[N, C] ensemble probabilities from [K, N, C] fold logits."""
        return combine(fold_logits, self.multilabel, self.weights)

    def predict_proba(self, texts: Sequence[str], batch_size: int = 64) -> np.ndarray:
        return self.combine(self.fold_logits(self.encode(texts), batch_size))

    def predict(self, texts: Sequence[str], batch_size: int = 64) -> Prediction:
        ids = self.encode(texts)
        probs = self.combine(self.fold_logits(ids, batch_size))
        return Prediction(self.names(probs), probs, [len(x) >= self.encoder.max_length for x in ids])

    def names(self, probs: np.ndarray) -> list[list[str]]:
        """Class names per row: argmax, or every class over the threshold (multilabel)."""
        picked = predict_labels(probs, self.multilabel, self.threshold)
        if self.multilabel:
            return [[self.classes[j] for j in np.flatnonzero(row)] for row in picked]
        return [[self.classes[int(j)]] for j in picked]


class Ensemble(EnsembleBase):
    """Loads fold models once; ``fold_logits`` gives per-fold outputs, ``predict`` the ensemble."""

    def __init__(self, model_dirs: Sequence[str | Path], device: Optional[str] = None,
                 weights: Optional[Sequence[float]] = None):
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        super().__init__(model_dirs, weights)

    @classmethod
    def of_run(cls, run: RunDir, device: Optional[str] = None) -> "Ensemble":
        """The run's ensemble (``RunDir.ensemble_members``: selected configs' folds, or the best config's)."""
        members = run.ensemble_members()
        return cls([m.model_dir for m in members], device, [m.weight for m in members])

    def _load(self, model_dirs: list[str]) -> tuple[TextEncoder, dict]:
        loaded = [load_model_dir(d, self.device) for d in model_dirs]
        self.models = [m for m, _, _ in loaded]
        return loaded[0][1], loaded[0][2]

    def fold_logits(self, ids: Sequence[Sequence[int]], batch_size: int = 64) -> np.ndarray:
        return np.stack([predict_logits(m, ids, self.encoder.pad_id, batch_size, self.device) for m in self.models])


def render(labels: list[str], probs: np.ndarray, truncated: bool, classes: list[str], top_k: Optional[int]) -> dict:
    """One prediction of the response; ``probabilities`` holds the ``top_k`` classes, most probable first."""
    order = np.argsort(-probs, kind="stable")[:top_k]
    return {"labels": labels, "probabilities": {classes[j]: float(probs[j]) for j in order}, "truncated": bool(truncated)}
