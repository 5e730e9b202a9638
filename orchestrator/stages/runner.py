"""Post-training stages (distill -> prune -> export) as chained, cached Ray remote tasks.

A stage's cache key hashes its own config sections and the key of the stage before it (the first
one follows training), so an unchanged experiment skips every stage and a changed ``distill``
section reruns distill and what follows, never the training. Stages are submitted at once, each
task taking the previous task's ObjectRef, so Ray runs them in order without the driver waiting in
between; only the driver writes manifest.json. distill and prune are imported in their task only
(TextBrewer, TextPruner).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

from orchestrator.rundir import RunDir
from orchestrator.config import ConfigError, ExperimentConfig, config_hash
from orchestrator.data import DataError
from orchestrator.train.errors import TrainingError
from orchestrator.stages.export import EXPORT_THREADS, run_export

def _distill(cfg: ExperimentConfig, run: RunDir) -> dict:
    from orchestrator.stages.distill import run_distill

    return run_distill(cfg, run)


def _prune(cfg: ExperimentConfig, run: RunDir) -> dict:
    from orchestrator.stages.prune import run_prune

    return run_prune(cfg, run)


@dataclass(frozen=True)
class Stage:
    name: str
    sections: tuple[str, ...]
    enabled: Callable[[ExperimentConfig], bool]
    run: Callable[[ExperimentConfig, RunDir], dict]
    num_cpus: float  # stages that drive a TorchTrainer only wait on it: a sliver, so its workers fit


STAGES = (
    Stage("distill", ("distill",), lambda c: c.distill.enabled, _distill, 0.01),
    Stage("prune", ("prune",), lambda c: c.prune.mode != "none", _prune, 1.0),
    Stage("export", ("export",), lambda c: c.export.onnx or c.export.hf, run_export, float(EXPORT_THREADS)),
)


def _run_remote(name: str, cfg_json: dict, run_root: str, after: Optional[dict]) -> dict:
    """One stage in its Ray task; ``after`` (the previous stage's result) is passed only so that Ray
    starts this task once that one has finished."""
    stage = next(s for s in STAGES if s.name == name)
    return stage.run(ExperimentConfig.model_validate(cfg_json), RunDir(Path(run_root)))


def user_error(exc: Exception) -> Optional[Exception]:
    """The config, data or training error a stage task raised (Ray wraps it with the task's traceback),
    so the CLI prints its one line; None for anything else (a crash keeps its traceback)."""
    from ray.exceptions import RayTaskError

    cause = exc.cause if isinstance(exc, RayTaskError) else None
    return cause if isinstance(cause, (ConfigError, DataError, TrainingError)) else None


def run_stages(cfg: ExperimentConfig, run: RunDir, log: Callable[[str], Any] = print) -> dict[str, dict]:
    """Submit the enabled stages as a chain of Ray tasks, skipping cached ones; record each result."""
    import ray

    dumped = cfg.model_dump(mode="json")
    upstream_key, upstream = cfg.ensemble_key(), None
    plan = []
    for stage in STAGES:
        if not stage.enabled(cfg):
            continue
        key = config_hash({"after": upstream_key, **{s: dumped[s] for s in stage.sections}})
        record = run.stage(stage.name)
        if record.get("status") == "done" and record.get("key") == key:
            log(f"{stage.name}: unchanged, cached result reused")
            upstream = record.get("result")
        else:
            task = ray.remote(num_cpus=stage.num_cpus, max_retries=0)(_run_remote)
            upstream = task.remote(stage.name, dumped, str(run.root.resolve()), upstream)
            log(f"{stage.name}: submitted")
        plan.append((stage, key, upstream))
        upstream_key = key
    results = {}
    for stage, key, value in plan:
        if isinstance(value, ray.ObjectRef):
            run.update(stage.name, "running", key=key)
            try:
                value = ray.get(value)
            except Exception as exc:
                cause = user_error(exc)
                run.update(stage.name, "failed", key=key, error=str(cause or exc).splitlines()[0])
                if cause is not None:
                    raise cause from None
                raise
            run.update(stage.name, "done", key=key, result=value)
            log(f"{stage.name}: done")
        results[stage.name] = value
    return results
