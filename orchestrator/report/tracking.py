"""MLflow tracking of a run (``tracking.mlflow``, the 'mlflow' extra): one parent run per experiment
with the config as params, the test and out-of-fold metrics and report.html; one child run per Tune
trial (one fold of one config) with its params and per-epoch metrics, logged by Ray's
``MLflowLoggerCallback``. The default store is SQLite in the run directory (mlruns/mlflow.db, artifacts
in mlruns/artifacts/): no server needed. A resumed run keeps its parent run (its id is in the manifest).
"""
from __future__ import annotations

import contextlib
from typing import Iterator, Optional

from ray.air.integrations.mlflow import MLflowLoggerCallback

from orchestrator.config import ExperimentConfig
from orchestrator.report.html import config_label
from orchestrator.rundir import RunDir
from orchestrator.train.tune import TRIAL_INDEX

STAGE = "tracking"  # the manifest entry holding the parent run's id
PARENT_TAG = "mlflow.parentRunId"  # MLflow's own tag: the UI nests child runs under their parent


def store_uri(cfg: ExperimentConfig, run: RunDir) -> str:
    return cfg.tracking.uri or f"sqlite:///{run.mlflow_dir.resolve() / 'mlflow.db'}"


def _flat(prefix: str, value) -> dict[str, str]:
    if isinstance(value, dict):
        return {k: v for key, sub in value.items() for k, v in _flat(f"{prefix}.{key}" if prefix else key, sub).items()}
    return {prefix: str(value)[:6000]}  # MLflow's limit on a param's value


class FoldRuns(MLflowLoggerCallback):
    """One child run per Tune trial, named "fold <k> · <config>" and tagged with both."""

    def log_trial_start(self, trial):
        if trial not in self._trial_runs:
            params = {k: v for k, v in trial.config.items() if k != TRIAL_INDEX}
            fold = int(trial.config.get(TRIAL_INDEX, 0))
            tags = {**self.tags, "trial_name": str(trial), "fold": str(fold), "config": config_label(params)}
            self._trial_runs[trial] = self.mlflow_util.start_run(tags=tags, run_name=f"fold {fold} · {config_label(params)}").info.run_id
        super().log_trial_start(trial)


class Tracker:
    """The experiment's parent run in MLflow."""

    def __init__(self, cfg: ExperimentConfig, run: RunDir):
        from mlflow.entities import Param
        from mlflow.tracking import MlflowClient

        self.cfg, self.run, self.uri = cfg, run, store_uri(cfg, run)
        self.client = MlflowClient(self.uri)
        self.experiment = cfg.tracking.experiment or cfg.name
        found = self.client.get_experiment_by_name(self.experiment)
        artifacts = None if cfg.tracking.uri else (run.mlflow_dir.resolve() / "artifacts").as_uri()
        experiment_id = found.experiment_id if found else self.client.create_experiment(self.experiment, artifact_location=artifacts)
        known = run.stage(STAGE).get("parent_run_id")
        if known and self._exists(known):
            self.parent_id = known
            self.client.update_run(known, status="RUNNING")
        else:
            self.parent_id = self.client.create_run(experiment_id, run_name=cfg.name, tags={"run_dir": str(run.root)}).info.run_id
            params = [Param(k, v) for k, v in _flat("", cfg.model_dump(mode="json")).items()]
            for i in range(0, len(params), 100):  # MLflow takes at most 100 params per batch
                self.client.log_batch(self.parent_id, params=params[i:i + 100])
        run.update(STAGE, "running", parent_run_id=self.parent_id, experiment=self.experiment)

    def _exists(self, run_id: str) -> bool:
        try:
            self.client.get_run(run_id)
            return True
        except Exception:  # MlflowException: no such run in this store
            return False

    def tune_callbacks(self) -> list:
        return [FoldRuns(self.uri, experiment_name=self.experiment, tags={PARENT_TAG: self.parent_id})]

    def finish(self, test_metrics: dict, oof_metrics: Optional[dict], report) -> None:
        """The run's results on the parent run: test_* and oof_* metrics, report.html with its images."""
        import time

        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        metrics = [Metric(f"{prefix}_{k}", float(v), now, 0) for prefix, values in (("test", test_metrics), ("oof", oof_metrics or {}))
                   for k, v in values.items() if isinstance(v, (int, float))]
        self.client.log_batch(self.parent_id, metrics=metrics)
        self.client.log_artifact(self.parent_id, str(report))
        files = report.parent / "report_files"
        if files.is_dir():
            self.client.log_artifacts(self.parent_id, str(files), "report_files")
        self.client.set_terminated(self.parent_id, "FINISHED")
        self.run.update(STAGE, "done", parent_run_id=self.parent_id, experiment=self.experiment)


@contextlib.contextmanager
def tracked(cfg: ExperimentConfig, run: RunDir) -> Iterator[Optional[Tracker]]:
    """The run's Tracker while the block runs (None when tracking is off); a block that raises marks
    the parent run FAILED."""
    if not cfg.tracking.mlflow:
        yield None
        return
    tracker = Tracker(cfg, run)
    try:
        yield tracker
    except BaseException:
        tracker.client.set_terminated(tracker.parent_id, "FAILED")
        raise
