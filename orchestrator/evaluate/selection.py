"""Ensemble selection across the whole search (Caruana et al., 2004; AutoGluon's weighted ensemble).

Every config of the search is trained on every fold, so each has out-of-fold (OOF) logits for every
pooled row. Greedy forward selection with replacement: start from nothing, and in each of ``rounds``
rounds add the config whose addition gives the best OOF score of the combined ensemble (the same
rule as ``orchestrator.evaluate.ensemble.combine``, so what is chosen is what is served); the
weights are how often each config was added, at the round with the best score (the earliest on a
tie). The first round picks the best single config, so the selection scores at least as well as it
on OOF.
"""
from __future__ import annotations

from collections import Counter
from typing import Sequence

import numpy as np

from orchestrator.evaluate.ensemble import combine
from trainables.metrics import MINIMISED, compute_metrics

ROUNDS = 25


def ensemble_score(oof: np.ndarray, weights: Sequence[float], gold: np.ndarray, multilabel: bool, threshold,
                   metric: str) -> float:
    """``metric`` (a ``compute_metrics`` score; "loss" selects on macro_f1) of the weighted
    combination of [M, N, C] OOF logits."""
    scores = compute_metrics(gold, combine(oof, multilabel, weights), multilabel, threshold)
    return scores["macro_f1" if metric in MINIMISED else metric]


def select(oof: np.ndarray, gold: np.ndarray, multilabel: bool, threshold=0.5, metric: str = "macro_f1",
           rounds: int = ROUNDS) -> tuple[np.ndarray, list[float]]:
    """(weights [M] summing to 1, the OOF score after each round) for [M, N, C] OOF logits of M configs."""
    if len(oof) == 0:
        raise ValueError("ensemble selection: no configs to choose from")
    counts: Counter[int] = Counter()
    history, best = [], (-np.inf, None)
    for _ in range(rounds):
        trial = []
        for m in range(len(oof)):
            weights = np.array([counts[i] + (i == m) for i in range(len(oof))], dtype=float)
            trial.append(ensemble_score(oof, weights / weights.sum(), gold, multilabel, threshold, metric))
        pick = int(np.argmax(trial))  # the first of equal scores: configs come best-ranked first
        counts[pick] += 1
        history.append(trial[pick])
        if trial[pick] > best[0]:
            best = (trial[pick], Counter(counts))
    chosen = best[1]
    weights = np.array([chosen[i] for i in range(len(oof))], dtype=float)
    return weights / weights.sum(), history


def combined_logits(oof: np.ndarray, multilabel: bool, weights: Sequence[float]) -> np.ndarray:
    """[N, C] logits whose probabilities are ``combine``'s: the weighted mean logit (multiclass), or
    the logit of the weighted mean sigmoid (multilabel, clipped to stay finite)."""
    if not multilabel:
        return np.average(oof, axis=0, weights=weights)
    p = np.clip(combine(oof, True, weights), 1e-6, 1 - 1e-6)
    return np.log(p / (1 - p))
