"""A streamed run (``data.streaming``), start to end: checks -> the pool on Ray Data -> K folds under
Ray Tune, each TorchTrainer fed from shards -> OOF and test predictions written by Ray Data.

The in-memory run (orchestrator/pipeline.py) goes on to ensemble selection, thresholds, the
post-training stages and report.html; those read the whole evaluation split, so a streamed run's
ensemble is the best config's K folds and it ends at its predictions (check_streaming refuses the rest).
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Optional

from orchestrator.config import ConfigError, ExperimentConfig
from orchestrator.rundir import RunDir
from orchestrator.stream.predictions import predict_pool
from orchestrator.summary import RunSummary
from orchestrator.stream.source import Counted, StreamedPool, check_streaming, count_pool, stream_pool
from orchestrator.train.cluster import check_fits, init_ray
from orchestrator.train.folds import model_meta
from orchestrator.train.tune import train_stage
from orchestrator.validate import check_extras, check_settings

if TYPE_CHECKING:
    from orchestrator.report.live import RunView


def _checked(cfg: ExperimentConfig, address: Optional[str]) -> None:
    """The settings of a streamed run checked, then Ray started (or joined at ``address``)."""
    check_extras(cfg)
    check_streaming(cfg)
    check_settings(cfg)
    init_ray(address)
    check_fits(cfg)


def checked_pool(cfg: ExperimentConfig, address: Optional[str] = None) -> StreamedPool:
    """Every check of a streamed run (``run`` and ``check``), the data's included: the settings, then
    the pool built on Ray (started, or joined at ``address``)."""
    _checked(cfg, address)
    return stream_pool(cfg)


def checked_counts(cfg: ExperimentConfig, address: Optional[str] = None) -> Counted:
    """The same checks and the counting pass only: the classes and the text encoder (``orchestrator info``)."""
    _checked(cfg, address)
    return count_pool(cfg)


def run_streamed(cfg: ExperimentConfig, resume: bool = False, overwrite: bool = False, address: Optional[str] = None,
                 log=print, watch: Optional["RunView"] = None) -> RunSummary:
    """Train and predict with the data on Ray Data; DataError/ConfigError before anything is written."""
    if resume:
        raise ConfigError("--resume: a streamed run (data.streaming) starts over; run it again with --overwrite")
    pool = checked_pool(cfg, address)  # every row read and checked: only now is anything written
    run = RunDir.create(cfg, overwrite=overwrite)
    if watch is not None:
        watch.attach(run)
        log = watch.log
    run.update("data", "done", classes=pool.classes, multilabel=False, streaming=True,
               sizes={"pool": pool.pool_rows(), "test": pool.rows(-1)}, fold_rows={str(f): sum(c) for f, c in sorted(pool.counts.items())},
               class_share_spread=pool.class_share_spread())
    shared = {"pool": pool, "meta": model_meta(cfg, pool.classes, False), "resume_from": None}
    outcome = train_stage(cfg, run, shared, f"{pool.pool_rows()} streamed texts", log=log, watch=watch)
    scores = predict_pool(run, pool, outcome.folds, parallel=max(1, min(cfg.cv.parallel or 1, 2)))
    ensemble = {"kind": "best_config", "why": "data.streaming: selection needs every config's OOF logits in memory",
                "members": len(outcome.folds)}
    run.update("evaluate", "done", key=cfg.ensemble_key(), result={**scores, "ensemble": ensemble},
               metrics={f"{split}_{k}": v for split in ("oof", "test") for k, v in (scores[split] or {}).items() if isinstance(v, float)})
    return RunSummary(run, outcome.folds, scores["test"], scores["oof"], outcome.trials, {}, [], None, ensemble)
