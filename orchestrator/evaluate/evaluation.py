"""Evaluating the trained folds: out-of-fold predictions (K > 1), tuned thresholds (multilabel, if
asked) and the ensemble's test report beside each single fold's metrics on the same split.

On the run's evaluation split the fold logits come from orchestrator/evaluate/measure.py, which
scores each model once per run; later reports (stage comparison, distill, prune) reuse them.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import numpy as np

from orchestrator.config import ExperimentConfig
from orchestrator.data import Dataset, Split, label_array
from orchestrator.evaluate.ensemble import Ensemble
from orchestrator.evaluate.measure import BATCH_SIZE, Artifact, fold_logits
from orchestrator.report.test_report import write_test_report
from orchestrator.rundir import RunDir, write_json
from orchestrator.train.folds import FoldResult
from trainables.inference import predict_logits
from trainables.metrics import compute_metrics, probabilities, tune_thresholds
from trainables.models import META_FILE


def evaluate_run(cfg: ExperimentConfig, run: RunDir, dataset: Dataset, shared: dict, results: list[FoldResult]) -> dict:
    """OOF metrics (K > 1), tuned thresholds (if asked) and the ensemble's test report next to each
    single fold's test metrics."""
    ensemble = Ensemble([r.model_dir for r in results])
    tune = cfg.train.tune_thresholds and dataset.multilabel
    labels, oof = shared["labels"], None
    if cfg.cv.folds > 1 or tune:
        held_out, covered = held_out_logits(ensemble, shared["ids"], shared["plan"])
    if cfg.cv.folds > 1:
        oof = write_oof(run, held_out, covered, labels, dataset.multilabel, ensemble.threshold)
    if tune:
        seen = covered > 0
        ensemble.threshold = adopt_thresholds(run, results, labels[seen], probabilities(held_out[seen], True), cfg.train.threshold)
    # With K folds, val rows are in the training pool: only a separate test split is honest.
    test_split = dataset.test or (dataset.val if cfg.cv.folds == 1 else None)
    test = {}
    if test_split:  # it is the run's evaluation split (RunDir.evaluation_split_name)
        logits = fold_logits(run, Artifact("ensemble", "torch", tuple(Path(d) for d in ensemble.model_dirs)))
        test = evaluate_split(run, ensemble, test_split, dataset.classes, dataset.multilabel, logits=logits)
    return {"oof": oof, "test": {k: v for k, v in test.items() if k != "per_class"},
            "test_split": "test" if dataset.test else ("val" if test_split else None)}


def held_out_logits(ensemble: Ensemble, ids, plan) -> tuple[np.ndarray, np.ndarray]:
    """Each pooled row scored by the fold model that did not train on it: ([N, C] logits, [N] times
    covered). With K folds every row is covered once; with one fold only its validation rows."""
    logits = np.zeros((len(ids), len(ensemble.classes)), dtype=np.float32)
    covered = np.zeros(len(ids), dtype=int)
    for model, (_, val_idx) in zip(ensemble.models, plan):
        logits[val_idx] = predict_logits(model, [ids[i] for i in val_idx], ensemble.encoder.pad_id, BATCH_SIZE, ensemble.device)
        covered[val_idx] += 1
    return logits, covered


def write_oof(run: RunDir, oof: np.ndarray, covered: np.ndarray, labels: np.ndarray, multilabel: bool, threshold) -> dict:
    """Out-of-fold metrics (at the configured threshold) to oof_metrics.json, logits to oof_logits.npy."""
    np.save(run.oof_logits, oof)
    metrics = compute_metrics(labels, probabilities(oof, multilabel), multilabel, threshold)
    write_json(run.oof_metrics, {**metrics, "rows": len(oof), "rows_covered_once": int((covered == 1).sum())})
    return metrics


def adopt_thresholds(run: RunDir, results: list[FoldResult], gold: np.ndarray, probs: np.ndarray, default: float) -> list[float]:
    """Per-class thresholds tuned on held-out probabilities, written into every fold model's
    model.json (so test, predict, serve and export use them) and to thresholds.json."""
    thresholds = [float(t) for t in tune_thresholds(gold, probs, default=default)]
    for result in results:
        meta_path = Path(result.model_dir) / META_FILE
        write_json(meta_path, {**json.loads(meta_path.read_text()), "threshold": thresholds})
    write_json(run.thresholds_json, {"threshold": thresholds, "tuned_on_rows": len(gold)})
    return thresholds


def evaluate_split(run: RunDir, ensemble: Ensemble, split: Split, classes: list[str], multilabel: bool,
                   out_dir: Optional[Path] = None, logits: Optional[np.ndarray] = None) -> dict:
    """Ensemble report on a split (per-class table, confusion matrix, badcases, metrics.json) plus
    ``folds``: each single fold's metrics on the same split, from the same fold logits (``logits``:
    [K, N, C] already computed, else the ensemble scores the split)."""
    out = out_dir or run.test_dir
    gold = label_array(split.labels, len(classes), multilabel)
    if logits is None:
        logits = ensemble.fold_logits(ensemble.encode(split.texts), BATCH_SIZE)
    metrics = write_test_report(out, split.texts, gold, ensemble.combine(logits), classes, multilabel, ensemble.threshold)
    folds = [compute_metrics(gold, probabilities(l, multilabel), multilabel, ensemble.threshold) for l in logits]
    write_json(out / "folds.json", {"ensemble": {k: v for k, v in metrics.items() if k != "per_class"}, "folds": folds})
    return {**metrics, "folds": folds}
