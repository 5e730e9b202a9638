"""The experiment, start to end: data -> train folds (Tune) -> evaluate (OOF + test) -> distill ->
prune -> export (orchestrator/stages/) -> stage comparison and report.html -> serve (when enabled).

``run_experiment`` is the whole run, whoever calls it (the CLI, a test, a benchmark, a notebook).
Each step records its status and cache key in manifest.json. Ray is started (or joined with
``address``) once, here, and nowhere else.
"""
from __future__ import annotations

import json
from typing import TYPE_CHECKING, Callable, Optional

from orchestrator.config import ExperimentConfig
from orchestrator.evaluate.evaluation import evaluate_run
from orchestrator.report.compare import stage_comparison
from orchestrator.report.html import write_html_report
from orchestrator.rundir import SPLITS, RunDir
from orchestrator.summary import RunSummary
from orchestrator.stages.runner import run_stages
from orchestrator.train.cluster import check_fits, init_ray
from orchestrator.train.folds import fold_checkpoints, load_fold_result, prepare_folds
from orchestrator.train.tune import train_stage
from orchestrator.validate import validate

if TYPE_CHECKING:
    from orchestrator.report.live import RunView
    from orchestrator.report.tracking import Tracker


def run_experiment(cfg: ExperimentConfig, resume: bool = False, overwrite: bool = False,
                   address: Optional[str] = None, log=print, resume_from: Optional[str] = None,
                   on_done: Optional[Callable[[RunSummary], object]] = None, watch: Optional[RunView] = None) -> RunSummary:
    """Run every step of the experiment; raises DataError/ConfigError/RunDirError before writing anything
    (``validate``, then whether the cluster can place a fold, then the run directory).

    With ``resume``, training and evaluation whose key is unchanged are reused, an interrupted Tune
    experiment continues, and the post-training stages rerun only where their config changed.
    ``resume_from`` (another run directory) starts every fold from that run's last training state
    (model, optimizer, scheduler, sampler epoch, RNG): incremental training up to train.epochs.
    ``on_done`` sees the summary once the report is written, before serving (``serve.enabled``)
    blocks until Ctrl-C. ``watch`` (the CLI's live view) takes the place of ``log`` and watches training.
    """
    log = watch.log if watch is not None else log
    from orchestrator.stream.source import streaming

    if streaming(cfg):  # the data stays on Ray Data (orchestrator/stream/)
        from orchestrator.stream.run import run_streamed

        summary = run_streamed(cfg, resume=resume, overwrite=overwrite, address=address, log=log, watch=watch)
        if on_done:
            on_done(summary)
        return summary
    dataset = validate(cfg)
    checkpoints = fold_checkpoints(RunDir.open(resume_from), cfg.cv.folds) if resume_from else None
    init_ray(address, cfg.serve.ingress if cfg.serve.enabled else "proxy")
    check_fits(cfg)
    run = RunDir.create(cfg, resume=resume, overwrite=overwrite)
    if watch is not None:
        watch.attach(run)
    from orchestrator.report.tracking import tracked

    with tracked(cfg, run) as tracker:
        summary = _train_and_report(cfg, run, dataset, resume, checkpoints, log, watch, tracker)
    if on_done:
        on_done(summary)
    if cfg.serve.enabled:
        from orchestrator.serve.deployment import serve_until_interrupted

        serve_until_interrupted(run, cfg.serve.with_token(), onnx=False, log=log)
    return summary


def _train_and_report(cfg: ExperimentConfig, run: RunDir, dataset, resume: bool, checkpoints, log,
                      watch: Optional[RunView], tracker: Optional[Tracker]) -> RunSummary:
    """Data splits saved, folds trained (or reused), evaluation, the post-training stages, the report;
    ``tracker`` (MLflow, or None) hears the trials and the results."""
    run.update("data", "done", classes=dataset.classes, multilabel=dataset.multilabel,
               sizes={"train": len(dataset.train.texts), "val": len(dataset.val.texts),
                      "test": len(dataset.test.texts) if dataset.test else 0})
    for name in SPLITS:
        split = getattr(dataset, name)
        if split is not None:
            run.save_split(name, split, dataset.classes, dataset.multilabel)

    key = cfg.train_key()
    cached = resume and run.stage("train").get("key") == key and run.stage("train").get("status") == "done"
    shared = None if cached else {**prepare_folds(cfg, dataset), "resume_from": checkpoints}
    if cached:
        log("train: unchanged, fold models reused")
        results = [load_fold_result(run.fold_dir(k), k) for k in range(cfg.cv.folds)]
        trials = json.loads(run.trials_json.read_text())["trials"]
    else:
        outcome = train_stage(cfg, run, shared, f"{len(shared['ids'])} texts", resume=resume, log=log, watch=watch,
                              callbacks=tracker.tune_callbacks() if tracker else ())
        results, trials = outcome.folds, outcome.trials

    if cached and run.stage("evaluate").get("key") == cfg.ensemble_key():
        evaluation = run.stage("evaluate")["result"]
    else:
        evaluation = evaluate_run(cfg, run, dataset, shared or prepare_folds(cfg, dataset), results)
        run.update("evaluate", "done", key=cfg.ensemble_key(), result=evaluation,
                   metrics={f"test_{k}": v for k, v in evaluation["test"].items() if isinstance(v, float)})
    stage_results = run_stages(cfg, run, log)
    rows = stage_comparison(run, log=log)
    summary = RunSummary(run, results, evaluation["test"], evaluation["oof"], trials, stage_results, rows,
                         write_html_report(run, rows), evaluation.get("ensemble", {}))
    if tracker is not None:
        tracker.finish(summary.test_metrics, summary.oof_metrics, summary.report)
    return summary
