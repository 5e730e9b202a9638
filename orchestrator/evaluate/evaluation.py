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
from orchestrator.evaluate.measure import BATCH_SIZE, Artifact, ensemble_artifact, fold_logits, measure
from orchestrator.evaluate.selection import combined_logits, select
from orchestrator.report.test_report import write_test_report
from orchestrator.rundir import RunDir, write_json
from orchestrator.train.folds import FoldResult
from trainables.atomic import atomic_save_npy
from trainables.inference import predict_logits
from trainables.metrics import SCORES, compute_metrics, probabilities, tune_thresholds
from trainables.models import META_FILE
from trainables.ray_worker import VAL_LOGITS


def evaluate_run(cfg: ExperimentConfig, run: RunDir, dataset: Dataset, shared: dict, results: list[FoldResult]) -> dict:
    """The run's ensemble (``choose_ensemble``), its OOF metrics (K > 1), tuned thresholds (if asked)
    and its test report next to each member's test metrics; with selection also the best config's
    OOF and test figures."""
    choice = choose_ensemble(cfg, run, shared, dataset.multilabel)
    members = run.ensemble_members()
    ensemble = Ensemble.of_run(run)
    tune = cfg.train.tune_thresholds and dataset.multilabel
    labels, oof, (held_out, covered) = shared["labels"], None, choice.pop("oof_logits")
    if cfg.cv.folds > 1:
        oof = write_oof(run, held_out, covered, labels, dataset.multilabel, ensemble.threshold)
    if tune:
        seen = covered > 0
        ensemble.threshold = adopt_thresholds(run, [m.model_dir for m in members], labels[seen],
                                              probabilities(held_out[seen], True), cfg.train.threshold)
    # With K folds, val rows are in the training pool: only a separate test split is honest.
    test_split = dataset.test or (dataset.val if cfg.cv.folds == 1 else None)
    test = {}
    if test_split:  # it is the run's evaluation split (RunDir.evaluation_split_name)
        test = evaluate_split(run, ensemble, test_split, dataset.classes, dataset.multilabel,
                              logits=fold_logits(run, ensemble_artifact(run)))
        if choice["kind"] == "selection":
            best = measure(run, Artifact("best config", "torch", tuple(r.model_dir for r in results)))
            choice["best_config_test"] = {k: best[k] for k in SCORES}
            choice["test"] = {k: test[k] for k in SCORES}
    if oof is not None:
        choice["oof"] = {k: oof[k] for k in SCORES}
    trials = json.loads(run.trials_json.read_text())
    write_json(run.trials_json, {**trials, "ensemble": choice})
    return {"oof": oof, "test": {k: v for k, v in test.items() if k != "per_class"}, "ensemble": choice,
            "test_split": "test" if dataset.test else ("val" if test_split else None)}


def config_oof(run: RunDir, trial_ids: list[str], shared: dict, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """([N, C] held-out logits, [N] times covered) of one config: each pooled row scored by the fold
    model that did not train on it, read from its trial's val_logits.npy (written by the training
    worker) or, for a trial without one, predicted here. With one fold only its validation rows."""
    ids = shared["ids"]
    logits = np.zeros((len(ids), num_classes), dtype=np.float32)
    covered = np.zeros(len(ids), dtype=int)
    for (_, val_idx), trial_id in zip(shared["plan"], trial_ids):
        saved = run.trial_dir(trial_id) / VAL_LOGITS
        if saved.is_file():
            logits[val_idx] = np.load(saved)
        else:
            ensemble = Ensemble([run.trial_dir(trial_id) / "model"])
            logits[val_idx] = predict_logits(ensemble.models[0], [ids[i] for i in val_idx], ensemble.encoder.pad_id,
                                             BATCH_SIZE, ensemble.device)
        covered[val_idx] += 1
    return logits, covered


def choose_ensemble(cfg: ExperimentConfig, run: RunDir, shared: dict, multilabel: bool) -> dict:
    """Write ensemble.json (the run's members and weights) and oof/config_<rank>.npy (each complete
    config's OOF logits, ranked as in trials.json). ``cv.ensemble: selection`` with K > 1 folds and
    several configs weighs configs by greedy selection on OOF (orchestrator/evaluate/selection.py);
    otherwise the best config's folds, equally. Returns what trials.json records under "ensemble",
    plus ``oof_logits``: (the ensemble's [N, C] OOF logits, [N] times covered)."""
    k = cfg.cv.folds
    rows = [r for r in json.loads(run.trials_json.read_text())["trials"] if r["folds_done"] == k]
    num_classes = shared["labels"].shape[1] if multilabel else len(shared["meta"]["classes"])
    oofs = [config_oof(run, r["trial_ids"], shared, num_classes) for r in rows]
    for rank, (logits, _) in enumerate(oofs):
        run.config_oof(rank).parent.mkdir(parents=True, exist_ok=True)
        atomic_save_npy(run.config_oof(rank), logits)
    stacked, covered = np.stack([l for l, _ in oofs]), oofs[0][1]
    threshold, labels = cfg.train.threshold, shared["labels"]
    kind = "selection" if cfg.cv.ensemble == "selection" and k > 1 and len(rows) > 1 else "best_config"
    weights, history = np.eye(len(rows))[0], []
    if kind == "selection":
        weights, history = select(stacked, labels, multilabel, threshold, cfg.train.metric, cfg.cv.selection_rounds)
    members = [{"name": f"fold_{fold}" if rank == 0 else f"config{rank}_fold_{fold}", "trial_id": trial_id,
                "weight": float(weights[rank]) / k, "config": rank, "fold": fold}
               for rank in np.flatnonzero(weights) for fold, trial_id in enumerate(rows[rank]["trial_ids"])]
    write_json(run.ensemble_json, {"kind": kind, "config_weights": weights.tolist(), "members": members})
    choice = {"kind": kind, "config_weights": [{"params": r["params"], "weight": float(w)} for r, w in zip(rows, weights) if w > 0],
              "members": len(members), "eligible_configs": len(rows)}  # only configs with all K folds have full OOF predictions
    if kind == "selection":
        best_oof = compute_metrics(labels, probabilities(oofs[0][0], multilabel), multilabel, threshold)
        choice.update(rounds=cfg.cv.selection_rounds, oof_score_by_round=history,
                      best_config_oof={key: best_oof[key] for key in SCORES})
    return {**choice, "oof_logits": (combined_logits(stacked, multilabel, weights), covered)}


def write_oof(run: RunDir, oof: np.ndarray, covered: np.ndarray, labels: np.ndarray, multilabel: bool, threshold) -> dict:
    """Out-of-fold metrics (at the configured threshold) to oof_metrics.json, logits to oof_logits.npy."""
    atomic_save_npy(run.oof_logits, oof)
    metrics = compute_metrics(labels, probabilities(oof, multilabel), multilabel, threshold)
    write_json(run.oof_metrics, {**metrics, "rows": len(oof), "rows_covered_once": int((covered == 1).sum())})
    return metrics


def adopt_thresholds(run: RunDir, model_dirs: list[Path], gold: np.ndarray, probs: np.ndarray, default: float) -> list[float]:
    """Per-class thresholds tuned on held-out probabilities, written into every ensemble member's
    model.json (so test, predict, serve and export use them) and to thresholds.json."""
    thresholds = [float(t) for t in tune_thresholds(gold, probs, default=default)]
    for model_dir in model_dirs:
        meta_path = Path(model_dir) / META_FILE
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
