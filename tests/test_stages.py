"""Post-training stages: chained Ray tasks, cached by key, rerun only where their config changed."""
from __future__ import annotations

import json
import shutil

import pytest

from orchestrator.rundir import RunDir, RunDirError
from orchestrator.evaluate.loading import load_ensemble, onnx_precision
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


def test_int8_serves_only_within_the_allowed_f1_drop(smoke_copy):
    """The export stage measures int8 against fp32 on the evaluation split (the figures the stage
    comparison shows); serving picks int8 only while every fold's drop is within export.max_int8_drop."""
    cfg, root = smoke_copy
    summary, _ = _run(cfg, **{"export.onnx": True, "export.int8": True, "export.max_int8_drop": 0.02})
    run = RunDir.open(root)
    checks = json.loads(run.int8_check.read_text())
    check = checks["fold_0"]
    rows = {row["backend"]: row for row in summary.comparison if row["model"].startswith("ensemble")}
    assert (check["fp32_macro_f1"], check["int8_macro_f1"]) == (rows["onnx fp32"]["macro_f1"], rows["onnx int8"]["macro_f1"])
    assert check["macro_f1_drop"] == check["fp32_macro_f1"] - check["int8_macro_f1"] and check["max_drop"] == 0.02
    assert check["serve_int8"] == (check["macro_f1_drop"] <= 0.02)
    assert summary.stages["export"]["fold_0"]["int8"]["serve_int8"] == check["serve_int8"]

    run.int8_check.write_text(json.dumps({"fold_0": {**check, "macro_f1_drop": 0.2, "serve_int8": False}}))
    precision, why = onnx_precision(run)
    assert precision == "fp32" and "0.2000" in why and "max_int8_drop 0.02" in why
    assert not load_ensemble(run, "onnx").int8
    run.int8_check.write_text(json.dumps({"fold_0": {**check, "macro_f1_drop": 0.001, "serve_int8": True}}))
    assert onnx_precision(run)[0] == "int8"
    run.int8_check.unlink()
    assert onnx_precision(run) == ("fp32", "no checked int8 export")


def test_resume_refuses_a_changed_training_config(smoke_copy):
    cfg, _ = smoke_copy
    with pytest.raises(RunDirError, match="cannot change what trains the folds"):
        run_experiment(with_overrides(cfg, {"train.lr": 0.01}), resume=True, log=lambda *_: None)


TINY_STUDENT = {"kind": "small", "arch": "textcnn", "tokens": "char", "max_length": 64, "embedding_dim": 16,
                "num_filters": 16, "kernel_sizes": [2, 3], "vocab_size": 3000}
TINY_STUDENT_TRAIN = {"epochs": 1, "batch_size": 32, "lr": 1e-2, "schedule": "constant", "weight_decay": 0.0, "cpus_per_worker": 1}


def _digest(path) -> str:
    import hashlib

    return hashlib.sha256(path.read_bytes()).hexdigest()


def _stage_lines(lines) -> dict[str, str]:
    """stage -> 'submitted' or 'cached', from the run's log lines."""
    out = {}
    for line in lines:
        for stage in ("distill", "prune", "export"):
            if line == f"{stage}: submitted":
                out[stage] = "submitted"
            elif line == f"{stage}: unchanged, cached result reused":
                out[stage] = "cached"
    return out


def test_changed_distill_reruns_distill_and_later_stages_and_changed_export_only_export(smoke_copy):
    """A changed distill section reruns distill, prune and export but never the training (fold models,
    trial folders and Tune state untouched); an unchanged rerun skips every stage; a changed export
    section reruns only export. (prune.mode is on but finds no transformer in the TextCNN models, so it
    runs and reports 'skipped': what counts here is that it is rerun or reused.)"""
    cfg, root = smoke_copy
    cfg = with_overrides(cfg, {"distill.enabled": True, "distill.temperature": 1.0, "distill.student": TINY_STUDENT,
                               "distill.train": TINY_STUDENT_TRAIN, "prune.mode": "vocabulary", "export.onnx": True})
    # the fold models, the trials' folders and table, and what Ray Tune / Train wrote for the trials
    # (ray/distill is the student's TorchTrainer: it may change)
    trained = [root / "folds", root / "trials", root / "ray" / "tune", *(root / "ray").glob("trial_*")]

    def snapshot():
        files = sorted(p for folder in trained for p in folder.rglob("*") if p.is_file()) + [root / "trials.json"]
        return {p: (p.stat().st_mtime_ns, _digest(p)) for p in files}

    before = snapshot()
    assert root / "folds" / "0" / "model" / "model.pt" in before and any("tune" in p.parts for p in before)

    def untouched_training(lines):
        assert "train: unchanged, fold models reused" in lines
        assert snapshot() == before  # same files, same bytes, same mtimes: no trial ran again

    _, lines = _run(cfg)
    assert _stage_lines(lines) == {"distill": "submitted", "prune": "submitted", "export": "submitted"}
    untouched_training(lines)
    student = root / "distill" / "model" / "model.pt"
    student_onnx = root / "export" / "student" / "model.onnx"
    first = {"student": student.stat().st_mtime_ns, "onnx": student_onnx.stat().st_mtime_ns}
    keys = {s: json.loads((root / "manifest.json").read_text())["stages"][s]["key"] for s in ("distill", "prune", "export")}

    _, lines = _run(cfg)  # nothing changed: every stage skipped
    assert _stage_lines(lines) == {"distill": "cached", "prune": "cached", "export": "cached"}
    assert student.stat().st_mtime_ns == first["student"] and student_onnx.stat().st_mtime_ns == first["onnx"]

    summary, lines = _run(cfg, **{"distill.alpha": 0.5})  # distill changed: distill and every later stage rerun
    assert _stage_lines(lines) == {"distill": "submitted", "prune": "submitted", "export": "submitted"}
    untouched_training(lines)
    assert student.stat().st_mtime_ns != first["student"] and student_onnx.stat().st_mtime_ns != first["onnx"]
    assert summary.stages["distill"]["config"]["alpha"] == 0.5 and summary.stages["export"]["student"]["ok"]
    manifest = json.loads((root / "manifest.json").read_text())
    assert all(manifest["stages"][s]["status"] == "done" and manifest["stages"][s]["key"] != keys[s] for s in keys)
    keys = {s: manifest["stages"][s]["key"] for s in keys}
    second = {"student": student.stat().st_mtime_ns, "onnx": student_onnx.stat().st_mtime_ns}

    summary, lines = _run(cfg, **{"distill.alpha": 0.5, "export.int8": True})  # only export changed
    assert _stage_lines(lines) == {"distill": "cached", "prune": "cached", "export": "submitted"}
    untouched_training(lines)
    assert student.stat().st_mtime_ns == second["student"] and student_onnx.stat().st_mtime_ns != second["onnx"]
    assert (root / "export" / "student" / "model.int8.onnx").is_file() and summary.stages["export"]["student"]["ok"]
    manifest = json.loads((root / "manifest.json").read_text())
    assert [manifest["stages"][s]["key"] == keys[s] for s in keys] == [True, True, False]


def test_a_student_that_fails_in_its_worker_ends_the_run_with_one_line(smoke_copy, broken_bert, capsys):
    """The distill stage's student raises in its training worker (garbage weights file): the run ends
    with the worker's error in one line (not the stage task's Ray traceback), exit 2, and the stage is
    recorded as failed with that line."""
    from orchestrator.cli import main

    cfg, root = smoke_copy
    code = main(["run", str(ROOT / "experiments" / "smoke.yaml"), "--resume", "--set", f"runs_dir={root.parent}",
                 "--set", "distill.enabled=true", "--set", f"distill.student={{kind: hf, name: {broken_bert}, max_length: 32}}",
                 "--set", "distill.train={epochs: 1, cpus_per_worker: 1}"])
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert code == 2 and last.startswith("error: distill student: "), last
    assert "Traceback" not in last and "RayTaskError" not in last and "ray::" not in last
    record = json.loads((root / "manifest.json").read_text())["stages"]["distill"]
    assert record["status"] == "failed" and last == f"error: {record['error']} (engine log: {root / 'logs' / 'driver.log'})"
    assert "Traceback" in (root / "logs" / "driver.log").read_text()  # the worker's, findable from the printed path
