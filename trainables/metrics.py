"""Classification metrics from logits: probabilities, predicted labels, F1 scores, thresholds.

Runs inside every training worker each epoch, so it depends on numpy/scipy/sklearn only (never
on orchestrator or ray). Labels are integer ids ``[N]`` for multiclass and multi-hot ``[N, C]``
for multilabel.

sklearn is imported where a score is computed, not with this module: every Tune trial process
imports it (orchestrator.train.folds -> trainables.loop) without scoring anything, and sklearn (with
scipy.stats) is about a second of CPU there (docs/architecture.md, CV trial seconds). Training workers
import it before their first epoch (trainables/ray_worker.py).
"""
from __future__ import annotations

from typing import Optional

import numpy as np
from scipy.special import expit, softmax

DEFAULT_GRID = np.round(np.arange(0.05, 0.951, 0.05), 2)


SCORES = ("accuracy", "macro_f1", "micro_f1", "weighted_f1")  # what compute_metrics returns
VAL_METRICS = ("val_loss", *(f"val_{name}" for name in SCORES))  # what the loop reports each epoch
MINIMISED = frozenset({"loss"})  # every other metric (F1s, accuracy) is maximised


def improves(metric: str, score: float, best: float | None) -> bool:
    """Whether ``score`` of ``metric`` beats ``best`` (None: nothing to beat yet)."""
    return best is None or (score < best if metric in MINIMISED else score > best)


def probabilities(logits: np.ndarray, multilabel: bool) -> np.ndarray:
    """Softmax over the last axis, or element-wise sigmoid when multilabel.

    scipy's versions are overflow-free (softmax subtracts the row max, expit never evaluates a
    large exp); float64 keeps tiny probabilities of fp16/bf16 logits distinguishable from 0.
    """
    logits = np.asarray(logits, dtype=np.float64)
    return expit(logits) if multilabel else softmax(logits, axis=-1)


def predict_labels(probs: np.ndarray, multilabel: bool, threshold: float | np.ndarray = 0.5) -> np.ndarray:
    """Argmax class ids ``[N]``, or multi-hot 0/1 ``[N, C]`` where ``probs >= threshold``.

    ``threshold`` may be one number or one per class (see ``tune_thresholds``).
    """
    probs = np.asarray(probs)
    if multilabel:
        return (probs >= np.asarray(threshold)).astype(np.int64)
    return probs.argmax(axis=-1)


def compute_metrics(gold: np.ndarray, probs: np.ndarray, multilabel: bool,
                    threshold: float | np.ndarray = 0.5) -> dict[str, float]:
    """accuracy (exact-match for multilabel) and macro/micro/weighted F1, as plain floats.

    F1 follows sklearn's defaults: multiclass averages over the classes seen in gold or
    predictions, and undefined scores count as 0.
    """
    return label_scores(gold, predict_labels(probs, multilabel, threshold))


def label_scores(gold: np.ndarray, pred: np.ndarray, weight: Optional[np.ndarray] = None) -> dict[str, float]:
    """``compute_metrics`` of predicted labels; ``weight`` counts each (gold, pred) row that many times
    (a streamed run scores its predictions from their (label, pred) counts)."""
    from sklearn.metrics import accuracy_score, f1_score

    gold = np.asarray(gold).astype(np.int64)
    scores = {"accuracy": accuracy_score(gold, pred, sample_weight=weight)}
    for average in ("macro", "micro", "weighted"):
        scores[f"{average}_f1"] = f1_score(gold, pred, average=average, zero_division=0, sample_weight=weight)
    assert tuple(scores) == SCORES
    return {name: float(value) for name, value in scores.items()}


def tune_thresholds(gold_multi_hot: np.ndarray, probs: np.ndarray, grid: np.ndarray = DEFAULT_GRID,
                    default: float = 0.5) -> np.ndarray:
    """Per-class thresholds from ``grid`` that maximise each class's F1 on validation data.

    Ties go to the grid value nearest ``default``, so a class whose F1 cannot be moved (e.g. no
    positives in validation) keeps the usual threshold instead of the lowest one.
    """
    from sklearn.metrics import f1_score

    gold = np.asarray(gold_multi_hot).astype(np.int64)
    probs = np.asarray(probs)
    grid = np.asarray(grid, dtype=np.float64)
    scores = np.stack([f1_score(gold, predict_labels(probs, True, t), average=None, zero_division=0)
                       for t in grid])  # [len(grid), C]
    by_closeness = np.argsort(np.abs(grid - default), kind="stable")
    best = by_closeness[scores[by_closeness].argmax(axis=0)]
    return grid[best]
