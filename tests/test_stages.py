"""Post-training stages: chained Ray tasks, cached by key, rerun only where their config changed."""
from __future__ import annotations

import json
import shutil

import pytest

from orchestrator.artifacts import RunDirError
from orchestrator.config import load_config, with_overrides
from orchestrator.pipeline import run_experiment
from tests.conftest import ROOT


@pytest.fixture
def smoke_copy(smoke_run, tmp_path):
    """A private copy of the session's smoke run and its config."""
    root = tmp_path / "runs" / "smoke"
    shutil.copytree(smoke_run.run.root, root)
    cfg = load_config(ROOT / "experiments" / "smoke.yaml")
    return with_overrides(cfg, {"runs_dir": str(tmp_path / "runs")}), root


def _run(cfg, **overrides):
    lines = []
    summary = run_experiment(with_overrides(cfg, overrides), resume=True, log=lines.append)
    return summary, lines


def test_export_stage_is_cached_and_reruns_only_on_change(smoke_copy):
    cfg, root = smoke_copy
    fold_model = root / "folds" / "0" / "model" / "model.pt"
    trained_at = fold_model.stat().st_mtime_ns

    summary, lines = _run(cfg, **{"export.onnx": True})
    assert "train: unchanged, fold models reused" in lines and "export: submitted" in lines
    parity = json.loads((root / "export" / "fold_0" / "parity.json").read_text())
    assert parity["ok"] and parity["max_abs_diff"] <= 1e-4 and parity["same_predictions"]
    assert summary.stages["export"]["fold_0"]["ok"]
    onnx_at = (root / "export" / "fold_0" / "model.onnx").stat().st_mtime_ns

    _, lines = _run(cfg, **{"export.onnx": True})
    assert "export: unchanged, cached result reused" in lines and "export: submitted" not in lines
    assert (root / "export" / "fold_0" / "model.onnx").stat().st_mtime_ns == onnx_at

    summary, lines = _run(cfg, **{"export.onnx": True, "export.int8": True})
    assert "export: submitted" in lines and "train: unchanged, fold models reused" in lines
    assert (root / "export" / "fold_0" / "model.int8.onnx").is_file()
    assert summary.stages["export"]["fold_0"]["int8"]["agreement"] >= 0.9
    assert fold_model.stat().st_mtime_ns == trained_at
    manifest = json.loads((root / "manifest.json").read_text())
    assert manifest["stages"]["export"]["status"] == "done" and manifest["config"]["export"]["int8"] is True


def test_resume_refuses_a_changed_training_config(smoke_copy):
    cfg, _ = smoke_copy
    with pytest.raises(RunDirError, match="cannot change what trains the folds"):
        run_experiment(with_overrides(cfg, {"train.lr": 0.01}), resume=True, log=lambda *_: None)
