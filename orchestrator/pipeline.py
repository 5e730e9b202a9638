"""The experiment as stages: data -> train folds (Tune) -> evaluate (OOF + test) -> distill ->
prune -> export (orchestrator/stages.py) -> summary.

Each stage records its status and cache key in manifest.json. Ray is started (or joined with
``address``) once, here, and nowhere else.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np

from orchestrator.rundir import RunDir, write_json
from trainables.atomic import atomic_write_text
from orchestrator.config import ExperimentConfig
from orchestrator.data import Dataset, Split, kfold_splits, load_dataset, load_stop_words
from orchestrator.evaluate.ensemble import Ensemble
from orchestrator.report.test_report import write_test_report
from orchestrator.stages.runner import run_stages
from orchestrator.train.folds import FoldResult, fold_checkpoints, label_array, load_fold_result, model_meta
from orchestrator.train.tune import config_count, tune_folds
from trainables.inference import predict_logits
from trainables.metrics import compute_metrics, probabilities, tune_thresholds
from trainables.models import META_FILE
from trainables.text.encoders import build_text_encoder


@dataclass
class RunSummary:
    run: RunDir
    folds: list[FoldResult]
    test_metrics: dict
    oof_metrics: Optional[dict]
    trials: list[dict]
    stages: dict


def init_ray(address: Optional[str] = None) -> None:
    """Start a local Ray (all cores) or join ``address``; no-op when already connected."""
    import ray

    if ray.is_initialized():
        return
    os.environ.setdefault("RAY_TRAIN_V2_ENABLED", "1")
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    # A local Ray needs its dashboard: Ray Train's placement-group cleaner queries the state API.
    local = {} if address else {"include_dashboard": True, "dashboard_host": "127.0.0.1"}
    ray.init(address=address, logging_level="WARNING", log_to_driver=True, **local)


def save_split(path: Path, split: Split, classes: list[str], multilabel: bool) -> None:
    """A split as JSONL of {text, label(s) by name}: test/predict read it without the source files."""
    def names(label):
        return [classes[i] for i in label] if multilabel else classes[label]
    lines = (json.dumps({"text": t, "label": names(l)}, ensure_ascii=False) for t, l in zip(split.texts, split.labels))
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, "\n".join(lines) + "\n")


def load_saved_split(path: Path, classes: list[str], multilabel: bool) -> Split:
    index = {c: i for i, c in enumerate(classes)}
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    labels = [sorted(index[n] for n in r["label"]) if multilabel else index[r["label"]] for r in rows]
    return Split([r["text"] for r in rows], labels)


def fold_plan(dataset: Dataset, folds: int, seed: int) -> tuple[Split, list[tuple[np.ndarray, np.ndarray]]]:
    """(pool, [(train_idx, val_idx)]): folds=1 is the given train/val; K>1 is stratified K-fold over train+val."""
    pool = Split(dataset.train.texts + dataset.val.texts, dataset.train.labels + dataset.val.labels)
    n_train = len(dataset.train.texts)
    if folds == 1:
        return pool, [(np.arange(n_train), np.arange(n_train, len(pool.texts)))]
    return pool, kfold_splits(pool.labels, folds, seed, dataset.multilabel)


def evaluation_split(run: RunDir) -> Split:
    """The run's honest evaluation split: data/test.jsonl, else data/val.jsonl (single-model runs)."""
    data = run.stage("data")
    path = run.root / "data" / "test.jsonl"
    return load_saved_split(path if path.is_file() else run.root / "data" / "val.jsonl", data["classes"], data["multilabel"])


def prepare_folds(cfg: ExperimentConfig, dataset: Dataset) -> dict:
    """Tokenize the train+val pool once; the fold plan, labels and encoder that every trial shares."""
    stop_words = load_stop_words(cfg.data.stop_words) if cfg.data.stop_words else []
    encoder = build_text_encoder(cfg.model, dataset.train.texts, stop_words)
    pool, plan = fold_plan(dataset, cfg.cv.folds, cfg.seed)
    return {"ids": encoder.encode(pool.texts), "labels": label_array(pool.labels, len(dataset.classes), dataset.multilabel),
            "plan": plan, "encoder": encoder, "meta": model_meta(cfg, dataset)}


def run_experiment(cfg: ExperimentConfig, resume: bool = False, overwrite: bool = False,
                   address: Optional[str] = None, log=print, resume_from: Optional[str] = None) -> RunSummary:
    """Run every stage of the experiment; raises DataError/ConfigError/RunDirError before writing anything.

    With ``resume``, training and evaluation whose key is unchanged are reused, an interrupted Tune
    experiment continues, and the post-training stages rerun only where their config changed.
    ``resume_from`` (another run directory) starts every fold from that run's last training state
    (model, optimizer, scheduler, sampler epoch, RNG): incremental training up to train.epochs.
    """
    dataset = load_dataset(cfg.data, cfg.seed)
    checkpoints = fold_checkpoints(RunDir.open(resume_from), cfg.cv.folds) if resume_from else None
    run = RunDir.create(cfg, resume=resume, overwrite=overwrite)
    run.update("data", "done", classes=dataset.classes, multilabel=dataset.multilabel,
               sizes={"train": len(dataset.train.texts), "val": len(dataset.val.texts),
                      "test": len(dataset.test.texts) if dataset.test else 0})
    for name in ("train", "val", "test"):
        split = getattr(dataset, name)
        if split is not None:
            save_split(run.root / "data" / f"{name}.jsonl", split, dataset.classes, dataset.multilabel)
    init_ray(address)

    key = cfg.train_key()
    cached = resume and run.stage("train").get("key") == key and run.stage("train").get("status") == "done"
    shared = None if cached else {**prepare_folds(cfg, dataset), "resume_from": checkpoints}
    if cached:
        log("train: unchanged, fold models reused")
        results = [load_fold_result(run.fold_dir(k), k) for k in range(cfg.cv.folds)]
        trials = json.loads((run.root / "trials.json").read_text())["trials"]
    else:
        log(f"training {cfg.cv.folds} fold(s) x {config_count(cfg.tune)} config(s) of "
            f"{cfg.model.kind}:{cfg.model.arch if cfg.model.kind == 'small' else cfg.model.name} on {len(shared['ids'])} texts")
        run.update("train", "running", key=key)
        outcome = tune_folds(cfg, run, shared, resume=resume, log=log)
        results, trials = outcome.folds, outcome.trials
        metric = cfg.train.metric
        run.update("train", "done", key=key, folds=len(results), best_config=outcome.best_config,
                   metrics={f"fold{r.fold}_val_{metric}": r.best[f"val_{metric}"] for r in results})

    if cached and run.stage("evaluate").get("key") == key:
        evaluation = run.stage("evaluate")["result"]
    else:
        evaluation = evaluate_run(cfg, run, dataset, shared or prepare_folds(cfg, dataset), results)
        run.update("evaluate", "done", key=key, result=evaluation,
                   metrics={f"test_{k}": v for k, v in evaluation["test"].items() if isinstance(v, float)})
    stage_results = run_stages(cfg, run, log)
    return RunSummary(run, results, evaluation["test"], evaluation["oof"], trials, stage_results)


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
    test = evaluate_split(run, ensemble, test_split, dataset.classes, dataset.multilabel) if test_split else {}
    return {"oof": oof, "test": {k: v for k, v in test.items() if k != "per_class"},
            "test_split": "test" if dataset.test else ("val" if test_split else None)}


def held_out_logits(ensemble: Ensemble, ids, plan) -> tuple[np.ndarray, np.ndarray]:
    """Each pooled row scored by the fold model that did not train on it: ([N, C] logits, [N] times
    covered). With K folds every row is covered once; with one fold only its validation rows."""
    logits = np.zeros((len(ids), len(ensemble.classes)), dtype=np.float32)
    covered = np.zeros(len(ids), dtype=int)
    for model, (_, val_idx) in zip(ensemble.models, plan):
        logits[val_idx] = predict_logits(model, [ids[i] for i in val_idx], ensemble.encoder.pad_id, 64, ensemble.device)
        covered[val_idx] += 1
    return logits, covered


def write_oof(run: RunDir, oof: np.ndarray, covered: np.ndarray, labels: np.ndarray, multilabel: bool, threshold) -> dict:
    """Out-of-fold metrics (at the configured threshold) to oof_metrics.json, logits to oof_logits.npy."""
    np.save(run.root / "oof_logits.npy", oof)
    metrics = compute_metrics(labels, probabilities(oof, multilabel), multilabel, threshold)
    write_json(run.root / "oof_metrics.json", {**metrics, "rows": len(oof), "rows_covered_once": int((covered == 1).sum())})
    return metrics


def adopt_thresholds(run: RunDir, results: list[FoldResult], gold: np.ndarray, probs: np.ndarray, default: float) -> list[float]:
    """Per-class thresholds tuned on held-out probabilities, written into every fold model's
    model.json (so test, predict, serve and export use them) and to thresholds.json."""
    thresholds = [float(t) for t in tune_thresholds(gold, probs, default=default)]
    for result in results:
        meta_path = Path(result.model_dir) / META_FILE
        write_json(meta_path, {**json.loads(meta_path.read_text()), "threshold": thresholds})
    write_json(run.root / "thresholds.json", {"threshold": thresholds, "tuned_on_rows": len(gold)})
    return thresholds


def evaluate_split(run: RunDir, ensemble: Ensemble, split: Split, classes: list[str], multilabel: bool,
                   out_dir: Optional[Path] = None) -> dict:
    """Ensemble report on a split (per-class table, confusion matrix, badcases, metrics.json) plus
    ``folds``: each single fold's metrics on the same split, from the same fold logits."""
    out = out_dir or run.test_dir
    gold = label_array(split.labels, len(classes), multilabel)
    fold_logits = ensemble.fold_logits(ensemble.encode(split.texts))
    metrics = write_test_report(out, split.texts, gold, ensemble.combine(fold_logits), classes, multilabel, ensemble.threshold)
    folds = [compute_metrics(gold, probabilities(l, multilabel), multilabel, ensemble.threshold) for l in fold_logits]
    write_json(out / "folds.json", {"ensemble": {k: v for k, v in metrics.items() if k != "per_class"}, "folds": folds})
    return {**metrics, "folds": folds}
