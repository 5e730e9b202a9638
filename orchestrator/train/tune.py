"""K folds as parallel Ray Tune trials, with hyperparameter search on the cross-fold mean.

Each suggested config runs as K trials (``ray.tune.search.Repeater(searcher, repeat=K,
set_index=True)``): trial ``__trial_index__`` = fold index. Every trial is a small Tune function
(no CPU, see ``TRIAL_RESOURCES``) that fits one Ray Train TorchTrainer for its fold, forwards
per-epoch metrics through ``TuneReportCallback`` and finally reports the fold's best-epoch score
under the tune metric, so the searcher is handed the mean of the K fold scores, never one fold.
Schedulers that stop trials early (ASHA) would judge single folds, so with K > 1 only FIFO is
accepted (docs/architecture.md).
"""
from __future__ import annotations

import ast
import contextlib
import json
import os
import re
import shutil
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
from ray.tune import Callback

from orchestrator.config import ConfigError, ExperimentConfig, TuneConfig, with_overrides
from orchestrator.rundir import RunDir, write_json
from orchestrator.train.cluster import release_dead_drivers
from orchestrator.train.errors import TrainingError
from orchestrator.train.folds import FoldResult, build_torch_trainer, collect_fold, failure, fold_data, load_fold_result
from trainables.ray_worker import FAILED

TRIAL_INDEX = "__trial_index__"
TUNE_NAME = "tune"
# The trial function only drives its TorchTrainer. Tune rejects an empty request, and any CPU share
# (even 0.01) would keep N whole-CPU fold workers off N CPUs (2 cores: folds ran one at a time), so
# a trial holds 1 MiB of Ray's logical "memory" resource and no CPU.
TRIAL_RESOURCES = {"CPU": 0, "memory": 1 << 20}
# A trial a scheduler stops mid-fold (the race, ASHA) is inside its TorchTrainer's fit until its workers
# see the trial's stop file (``StopFoldsOnStop``) at their next batch and end the fold. Tune hands a
# stopped trial's actor to the next trial once the trial's thread ends, waiting this long for it
# (Ray's default 2 s; the fit's end takes a batch and a controller poll or two). An actor that is not
# reused and does not stop in time is killed after FORCE_TRIAL_CLEANUP_S (Ray's default 600), its
# TrainController (owned by it) along with it.
THREAD_TIMEOUT_ENV, THREAD_TIMEOUT_S = "TUNE_FUNCTION_THREAD_TIMEOUT_S", 30
FORCE_TRIAL_CLEANUP_ENV, FORCE_TRIAL_CLEANUP_S = "TUNE_FORCE_TRIAL_CLEANUP_S", 5
_DIST = re.compile(r"^\s*(uniform|loguniform|quniform|choice|randint|grid)\s*\((.*)\)\s*$", re.S)


def parse_distribution(key: str, spec: str):
    """'loguniform(1e-5, 1e-4)' -> tune.loguniform(1e-5, 1e-4); grid(...) is a choice swept exhaustively."""
    from ray import tune

    match = _DIST.match(str(spec))
    if not match:
        raise ConfigError(f"tune.search.{key}: expected uniform(a, b), loguniform(a, b), quniform(a, b, q), randint(a, b), choice([...]) or grid([...]), got {spec!r}")
    name, args = match.groups()
    try:
        values = ast.literal_eval(f"({args},)")
    except (ValueError, SyntaxError):
        raise ConfigError(f"tune.search.{key}: cannot read the arguments of {spec!r}") from None
    if name in ("choice", "grid"):
        options = list(values[0]) if len(values) == 1 and isinstance(values[0], (list, tuple)) else list(values)
        return tune.choice(options)
    try:
        return getattr(tune, name)(*values)
    except (TypeError, ValueError) as exc:  # wrong number or kind of arguments, e.g. loguniform(1e-5)
        raise ConfigError(f"tune.search.{key}: {spec!r}: {exc}") from None


def search_space(tune_cfg: TuneConfig, base: ExperimentConfig) -> dict[str, Any]:
    """Flat {dotted key: Tune domain}; each key must be a real config key (checked by re-validating),
    and a grid searcher takes only grid([...]) or choice([...]) values."""
    space = {key: parse_distribution(key, spec) for key, spec in tune_cfg.search.items()}
    for key, domain in space.items():
        try:
            with_overrides(base, {key: domain.sample()})
        except ConfigError as exc:
            raise ConfigError(f"tune.search.{key}: {exc}".replace("override: ", "")) from None
    if tune_cfg.searcher == "grid":
        bad = [k for k, s in tune_cfg.search.items() if not str(s).strip().startswith(("grid", "choice"))]
        if bad:
            raise ConfigError(f"tune.searcher: grid needs grid([...]) or choice([...]) values, not {tune_cfg.search[bad[0]]!r} for {bad[0]}")
    return space


def grid_size(tune_cfg: TuneConfig) -> int:
    """Number of points of an all-grid search space."""
    sizes = [len(parse_distribution(k, s).categories) for k, s in tune_cfg.search.items()]
    return int(np.prod(sizes)) if sizes else 1


def config_count(tune_cfg: TuneConfig) -> int:
    """How many configs the search tries (each as K fold trials)."""
    if not tune_cfg.search:
        return 1
    return grid_size(tune_cfg) if tune_cfg.searcher == "grid" else tune_cfg.samples


def build_search(cfg: ExperimentConfig, racing_state: Optional[Path] = None):
    """(search_alg, param_space, num_samples) for K folds of each of ``config_count`` configs; with
    ``tune.racing`` the configs race (their state in ``racing_state``), else every one runs all K folds."""
    from ray import tune
    from ray.tune.search import Repeater

    folds, tcfg = cfg.cv.folds, cfg.tune
    if not tcfg.search:
        return None, {TRIAL_INDEX: tune.grid_search(list(range(folds)))}, 1
    import optuna
    from ray.tune.search.optuna import OptunaSearch

    space = search_space(tcfg, cfg)
    with warnings.catch_warnings():  # list choices (kernel sizes) are fine: the study lives in memory, not in Optuna's storage
        warnings.filterwarnings("ignore", ".*for persistent storage", UserWarning)
        if tcfg.searcher == "grid":
            grid = {k: list(parse_distribution(k, s).categories) for k, s in tcfg.search.items()}
            sampler = optuna.samplers.GridSampler(grid, seed=cfg.seed)
        elif tcfg.searcher == "random":
            sampler = optuna.samplers.RandomSampler(seed=cfg.seed)
        else:
            sampler = optuna.samplers.TPESampler(seed=cfg.seed)
        searcher = OptunaSearch(space=space, metric=tcfg.metric, mode=tcfg.mode, sampler=sampler)
    if tcfg.racing.enabled:
        from orchestrator.train.racing import RacingSearcher

        race = RacingSearcher(searcher, folds, config_count(tcfg), tcfg.racing.min_folds, tcfg.racing.confidence,
                              TRIAL_INDEX, str(racing_state), epochs=cfg.train.epochs, per_epoch=tcfg.racing.per_epoch,
                              tolerance=tcfg.racing.tolerance)
        return race, {}, config_count(tcfg) * folds  # an upper bound: the race says when it is finished
    return Repeater(searcher, repeat=folds, set_index=True), {}, config_count(tcfg) * folds


def build_scheduler(cfg: ExperimentConfig, search_alg=None):
    """Tune's trial scheduler: a race's ``RaceStopper`` (stops the folds of raced-out configs), FIFO, or ASHA."""
    from orchestrator.train.racing import RaceStopper, RacingSearcher

    if isinstance(search_alg, RacingSearcher):
        return RaceStopper(search_alg)
    if cfg.tune.scheduler == "fifo":
        return None
    if cfg.cv.folds > 1:
        raise ConfigError("tune.scheduler: 'asha' stops single trials, and with cv.folds > 1 a trial is one fold; use 'fifo' (see docs/architecture.md)")
    from ray.tune.schedulers import ASHAScheduler

    # A trial reports each epoch, then its fold's end (iteration epochs + 1). ASHA stops a trial at
    # max_t: with max_t = epochs it stopped the last epoch's report, before the fold's end, every trial.
    return ASHAScheduler(time_attr="training_iteration", max_t=cfg.train.epochs + 1, grace_period=1, reduction_factor=2)


class StopFoldsOnStop(Callback):
    """Writes a trial's stop file when Tune stops it before its fold ended (a scheduler's STOP: the
    race, ASHA), so that its workers end the fold at their next batch and the trial's actor is free
    for the next trial."""

    def __init__(self, run_root: str):
        self.run_root = run_root

    def on_trial_complete(self, iteration: int, trials: list, trial, **info) -> None:
        last = set(trial.last_result or {})  # a stopped fold last reported an epoch; a fold's end has best_epoch
        if "epoch" in last and not {"best_epoch", FAILED} & last:  # (a trial that never ran reported nothing)
            stop_file = RunDir(Path(self.run_root)).trial_stop_file(trial.trial_id)
            stop_file.parent.mkdir(parents=True, exist_ok=True)
            stop_file.touch()


def fold_trial(config: dict, base_cfg: dict, run_root: str, shared: dict) -> None:
    """One Tune trial = one fold of one config: fit its TorchTrainer, keep its best model in trials/<id>/
    (``run.trial_dir``)."""
    import ray
    from ray import tune
    from ray.tune.integration.ray_train import TuneReportCallback

    overrides = {k: v for k, v in config.items() if k != TRIAL_INDEX}
    cfg = with_overrides(ExperimentConfig.model_validate(base_cfg), overrides)
    fold = int(config.get(TRIAL_INDEX, 0))
    run = RunDir(Path(run_root))
    trial_id = tune.get_context().get_trial_id()
    os.environ.setdefault(THREAD_TIMEOUT_ENV, str(THREAD_TIMEOUT_S))  # read in this process when Tune reuses it
    stop_file = run.trial_stop_file(trial_id)
    stop_file.unlink(missing_ok=True)
    done = load_fold_result(run.trial_dir(trial_id), fold)
    if done is not None:
        # Finished before the driver died, but after Tune's last experiment snapshot (taken every
        # >= 10 s), so the restored experiment runs this trial again: report the kept result.
        tune.report({cfg.tune.metric: done.best[cfg.tune.metric], "fold": fold, "best_epoch": done.best["epoch"],
                     "fold_train_time_s": done.train_time_s, "done": 1, "reused": 1})
        return
    pool = shared.get("pool")  # data.streaming: the workers read their fold from Ray Data shards
    if pool is not None:
        counts = pool.train_counts(fold)
        payload = {"stream": {"fold": fold, "train_rows": sum(counts), "counts": counts}, "text_encoder": pool.encoder,
                   "meta": shared["meta"]}
    else:
        train_idx, val_idx = shared["plan"][fold]
        data = fold_data(shared["ids"], shared["labels"], train_idx, val_idx, shared["encoder"], len(shared["meta"]["classes"]),
                         shared["meta"]["multilabel"])
        payload = {"data": data, "text_encoder": shared["encoder"], "meta": shared["meta"]}
    started = time.perf_counter()
    resume_from = shared["resume_from"][fold] if shared.get("resume_from") else None
    trainer = build_torch_trainer(cfg, run, f"trial_{trial_id}", ray.put(payload), run.trial_dir(trial_id),
                                  callbacks=[TuneReportCallback()], resume_from=resume_from,
                                  pool=pool.dataset if pool is not None else None, stop_file=stop_file)
    hparams = {f"{section}.{k}": v for section in ("model", "train") for k, v in getattr(cfg, section).model_dump(mode="json").items()}
    fitted = trainer.fit()
    if stop_file.exists():  # Tune stopped the trial mid-fold: its last epoch report was its last word
        return
    if failure(fitted) is not None:  # the same error on every retry: the trial ends, select_best says why
        tune.report({FAILED: failure(fitted), cfg.tune.metric: float("nan"), "fold": fold, "done": 1})
        return
    result = collect_fold(fitted, fold, run.trial_dir(trial_id), started, hparams)
    metric = cfg.tune.metric
    tune.report({metric: result.best[metric], "fold": fold, "best_epoch": result.best["epoch"],
                 "fold_train_time_s": result.train_time_s, "done": 1})


@dataclass
class TuneOutcome:
    best_config: dict
    trials: list[dict]          # one row per config: params, per-fold scores, mean, std, time
    folds: list[FoldResult]     # the best config's fold results, linked as folds/<k>/


def train_stage(cfg: ExperimentConfig, run: RunDir, shared: dict, texts: str, resume: bool = False, log=print,
                watch: Any = None, callbacks: Sequence = ()) -> TuneOutcome:
    """A run's train stage, in memory or streamed: its log line (``texts``: what trains), the folds under
    Tune (the live view's callbacks, if ``watch``, and ``callbacks``), the manifest's train entries."""
    model = cfg.model.arch if cfg.model.kind == "small" else cfg.model.name
    log(f"training {cfg.cv.folds} fold(s) x {config_count(cfg.tune)} config(s) of {cfg.model.kind}:{model} on {texts}")
    run.update("train", "running", key=cfg.train_key())
    with watch.training(cfg) if watch is not None else contextlib.nullcontext([]) as live:
        outcome = tune_folds(cfg, run, shared, resume=resume, log=log, callbacks=[*live, *callbacks])
    metric = cfg.train.metric
    run.update("train", "done", key=cfg.train_key(), folds=len(outcome.folds), best_config=outcome.best_config,
               metrics={f"fold{r.fold}_val_{metric}": r.best[f"val_{metric}"] for r in outcome.folds})
    return outcome


def tune_folds(cfg: ExperimentConfig, run: RunDir, shared: dict, resume: bool = False, log=print,
               callbacks: Sequence = ()) -> TuneOutcome:
    """Run K folds x configs under Ray Tune (``callbacks``: Tune callbacks watching it); link the best
    config's fold folders as folds/<k>/."""
    from ray import tune

    release_dead_drivers(run, log)
    search_alg, param_space, num_samples = build_search(cfg, run.racing_json)
    trainable = tune.with_resources(
        tune.with_parameters(fold_trial, base_cfg=cfg.model_dump(mode="json"), run_root=str(run.root.resolve()),
                             shared=shared),  # with_parameters puts it in the object store once
        TRIAL_RESOURCES,
    )
    path = run.ray_run(TUNE_NAME)
    os.environ.setdefault(FORCE_TRIAL_CLEANUP_ENV, str(FORCE_TRIAL_CLEANUP_S))  # read by Tune's controller in fit()
    if resume and tune.Tuner.can_restore(str(path)):
        log(f"resuming Tune experiment {path}")
        tuner = tune.Tuner.restore(str(path), trainable=trainable, resume_errored=True, param_space=param_space or None)
    else:
        from ray.tune import RunConfig
        from ray.tune import FailureConfig

        tuner = tune.Tuner(
            trainable, param_space=param_space,
            tune_config=tune.TuneConfig(
                search_alg=search_alg, scheduler=build_scheduler(cfg, search_alg), num_samples=num_samples,
                metric=cfg.tune.metric, mode=cfg.tune.mode,
                max_concurrent_trials=cfg.tune.max_concurrent or cfg.cv.parallel or cfg.cv.folds,
                # A finished trial's actor (its process, with Ray Tune and torch imported) runs the
                # next fold or config instead of a new one being started (docs/architecture.md, "Where a
                # trial's seconds go"); a trial stopped mid-fold ends its fit first (StopFoldsOnStop).
                reuse_actors=True,
            ),
            run_config=RunConfig(name=TUNE_NAME, storage_path=str(run.ray_storage), failure_config=FailureConfig(max_failures=1),
                                 verbose=1, callbacks=[*callbacks, StopFoldsOnStop(str(run.root.resolve()))]),
        )
    grid = tuner.fit()
    return select_best(cfg, run, grid)


def select_best(cfg: ExperimentConfig, run: RunDir, grid) -> TuneOutcome:
    """Group trials by config, rank configs by the mean of their K fold scores, adopt the best."""
    metric, k = cfg.tune.metric, cfg.cv.folds
    groups: dict[str, dict] = {}
    failed: dict[str, dict] = {}  # config -> its first failed fold
    for result in grid:
        params = {key: v for key, v in result.config.items() if key != TRIAL_INDEX}
        if result.metrics and FAILED in result.metrics:
            failed.setdefault(json.dumps(params, sort_keys=True, default=str),
                              {"params": params, "error": f"fold {result.metrics.get('fold')}: {result.metrics[FAILED]}"})
            continue
        if result.error is not None or result.metrics is None or metric not in result.metrics:
            continue
        group = groups.setdefault(json.dumps(params, sort_keys=True, default=str),
                                  {"params": params, "folds": {}, "time_s": 0.0, "stopped": 0})
        if "best_epoch" not in result.metrics:  # stopped mid-fold (its config raced out): an epoch's score, not the fold's
            group["stopped"] += 1
            continue
        fold = int(result.config.get(TRIAL_INDEX, 0))
        group["folds"][fold] = {"score": float(result.metrics[metric]), "trial_id": result.metrics["trial_id"],
                                "best_epoch": result.metrics.get("best_epoch")}
        group["time_s"] += float(result.metrics.get("fold_train_time_s", 0.0))
    rows = []
    for group in groups.values():
        scores = [group["folds"][f]["score"] for f in sorted(group["folds"])]
        rows.append({"params": group["params"], "fold_scores": scores, "mean": float(np.mean(scores)) if scores else float("nan"),
                     "std": float(np.std(scores)) if scores else float("nan"), "folds_done": len(scores),
                     "folds_stopped": group["stopped"], "time_s": group["time_s"],
                     "trial_ids": [group["folds"][f]["trial_id"] for f in sorted(group["folds"])]})
    rows = [r for r in rows if json.dumps(r["params"], sort_keys=True, default=str) not in failed]
    raced = raced_out_configs(run)
    for row in rows:
        out = raced.get(json.dumps(row["params"], sort_keys=True, default=str))
        if out is not None:  # folds already in flight then still finished: folds_done may be larger
            after, epoch = out
            row["raced_out"] = f"raced out after {after} folds" + (f", at epoch {epoch} of the next" if epoch else "")
    complete = [r for r in rows if r["folds_done"] == k]
    if not complete:
        if failed:
            raise TrainingError(f"tune: no config finished all {k} folds; {next(iter(failed.values()))['error']}")
        raise RuntimeError(f"tune: no config finished all {k} folds (see {run.ray_run(TUNE_NAME)})")
    sign = 1 if cfg.tune.mode == "max" else -1
    rows.sort(key=lambda r: (r["folds_done"] == k, sign * r["mean"]), reverse=True)
    best = rows[0]
    write_json(run.trials_json, {"metric": metric, "mode": cfg.tune.mode, "folds": k, "trials": rows,
                                 **({"racing": {"raced_out": sum("raced_out" in r for r in rows),
                                                "fold_trainings": sum(r["folds_done"] for r in rows),
                                                "fold_trainings_saved": sum(k - r["folds_done"] for r in rows),
                                                "folds_stopped_mid_training": sum(r["folds_stopped"] for r in rows)}}
                                    if cfg.tune.racing.enabled else {}),
                                 "failed": list(failed.values()), "best_config": best["params"]})
    folds = [adopt_trial_model(run, fold, trial_id) for fold, trial_id in enumerate(best["trial_ids"])]
    return TuneOutcome(best["params"], rows, folds)


def raced_out_configs(run: RunDir) -> dict[str, tuple[int, Optional[int]]]:
    """The configs racing took out (as sorted-key JSON of their params) -> (the folds each had finished
    then, the epoch of the next fold it went out at, if per-epoch racing took it), from racing.json."""
    from orchestrator.train.racing import RACED_OUT

    if not run.racing_json.is_file():
        return {}
    state = json.loads(run.racing_json.read_text())
    return {json.dumps(c["params"], sort_keys=True, default=str): (c["raced_after"], c.get("raced_at_epoch"))
            for c in state["configs"] if c["status"] == RACED_OUT}


def adopt_trial_model(run: RunDir, fold: int, trial_id: str) -> FoldResult:
    """Make folds/<fold> point at trials/<id>/ (a relative link: the run directory stays movable)."""
    target = run.fold_dir(fold)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{fold}.link")
    tmp.unlink(missing_ok=True)
    tmp.symlink_to(os.path.relpath(run.trial_dir(trial_id), target.parent), target_is_directory=True)
    if target.is_dir() and not target.is_symlink():  # a fold folder of an older layout
        shutil.rmtree(target)
    os.replace(tmp, target)
    result = load_fold_result(target, fold)
    assert result is not None, f"trial {trial_id} left no model"
    return result
