"""MLflow tracking through real Ray Tune and a local SQLite store, read back through MLflow's client."""
from __future__ import annotations

import pytest

from orchestrator.config import ConfigError, load_config, with_overrides
from orchestrator.pipeline import run_experiment
from tests.conftest import ROOT

SMOKE = ROOT / "experiments" / "smoke.yaml"


def test_parent_run_child_per_fold_epoch_metrics_and_the_report(ray_session, tmp_path):
    from mlflow.tracking import MlflowClient

    cfg = with_overrides(load_config(SMOKE), {"name": "tracked", "runs_dir": str(tmp_path), "cv.folds": 2,
                                              "data.max_rows": 300, "data.test_fraction": 0.2, "tracking.mlflow": True})
    summary = run_experiment(cfg, log=lambda *_: None)
    store = summary.run.root / "mlruns" / "mlflow.db"
    client = MlflowClient(f"sqlite:///{store}")
    experiment = client.get_experiment_by_name("tracked")
    runs = client.search_runs([experiment.experiment_id])
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    assert len(parents) == 1 and parents[0].info.run_name == "tracked" and parents[0].info.status == "FINISHED"
    parent = parents[0]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert sorted(r.data.tags["fold"] for r in children) == ["0", "1"]
    assert sorted(r.info.run_name for r in children) == ["fold 0 · (defaults)", "fold 1 · (defaults)"]
    for child in children:
        epochs = client.get_metric_history(child.info.run_id, "epoch")
        assert [m.value for m in epochs] == [1.0, 2.0]  # one entry per epoch, as Tune heard it
        assert len(client.get_metric_history(child.info.run_id, "val_macro_f1")) >= 2
    assert "test_macro_f1" in parent.data.metrics, (parent.data.metrics, summary.test_metrics)
    assert parent.data.metrics["test_macro_f1"] == pytest.approx(summary.test_metrics["macro_f1"])
    assert parent.data.metrics["oof_macro_f1"] == pytest.approx(summary.oof_metrics["macro_f1"])
    assert parent.data.params["train.lr"] == str(cfg.train.lr) and parent.data.params["cv.folds"] == "2"
    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert {"report.html", "report_files"} <= artifacts
    assert (summary.run.root / "mlruns" / "artifacts").is_dir()  # the store's artifacts stay in the run directory


def test_credentials_in_the_uri_are_refused(tmp_path):
    path = tmp_path / "e.yaml"
    path.write_text("tracking:\n  mlflow: true\n  uri: https://me:secret@mlflow.example.com\n")
    with pytest.raises(ConfigError, match=r"e\.yaml: tracking\.uri: .*credentials.*MLFLOW_TRACKING_USERNAME") as refused:
        load_config(path)
    assert "secret" not in str(refused.value)
