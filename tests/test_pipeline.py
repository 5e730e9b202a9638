"""End to end through real Ray Train + Tune on real data (data/example1), tiny TextCNN."""
from __future__ import annotations

import json

import numpy as np
import pytest

from orchestrator.cli import main
from orchestrator.config import load_config, with_overrides
from orchestrator.data import load_dataset
from orchestrator.evaluate.ensemble import Ensemble
from orchestrator.pipeline import run_experiment
from orchestrator.rundir import RunDir
from orchestrator.train.folds import prepare_folds
from tests.conftest import ROOT
from trainables.metrics import compute_metrics, probabilities

SMOKE = ROOT / "experiments" / "smoke.yaml"


def test_smoke_run_writes_a_complete_run_directory(smoke_run):
    root = smoke_run.run.root
    manifest = json.loads((root / "manifest.json").read_text())
    assert {s: manifest["stages"][s]["status"] for s in ("data", "train", "evaluate")} == {"data": "done", "train": "done", "evaluate": "done"}
    assert manifest["config_hash"] == load_config(SMOKE).model_copy(update={"runs_dir": manifest["config"]["runs_dir"]}).hash()
    assert manifest["versions"]["ray"].startswith("2.")
    for name in ("model.pt", "model.json", "text_encoder.json"):
        assert (root / "folds" / "0" / "model" / name).is_file()
    history = json.loads((root / "folds" / "0" / "history.json").read_text())["history"]
    assert [h["epoch"] for h in history] == [1, 2]
    csv_lines = (root / "folds" / "0" / "metrics.csv").read_text().splitlines()
    assert len(csv_lines) == 3 and "val_macro_f1" in csv_lines[0].split(",")
    steps = json.loads((root / "folds" / "0" / "history.json").read_text())["steps"]
    assert [s for s, _ in steps] == sorted({s for s, _ in steps}) and len(steps) >= 4 and all(loss > 0 for _, loss in steps)
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    board = EventAccumulator(str(root / "folds" / "0" / "tensorboard"))
    board.Reload()
    assert [e.step for e in board.Scalars("train/loss")] == [s for s, _ in steps]  # written live by the worker
    assert [e.step for e in board.Scalars("epoch/val_macro_f1")] == [1, 2]
    folds = json.loads((root / "test" / "folds.json").read_text())
    assert len(folds["folds"]) == 1 and folds["folds"][0]["macro_f1"] == pytest.approx(folds["ensemble"]["macro_f1"])
    for name in ("metrics.json", "per_class.csv", "confusion_matrix.csv", "confusion_matrix.png", "badcases.csv"):
        assert (root / "test" / name).stat().st_size > 0
    # real data, 600 training rows, 2 epochs: clearly better than chance (0.5)
    assert smoke_run.test_metrics["macro_f1"] > 0.7


def test_test_command_reproduces_run_metrics(smoke_run, tmp_path, capsys):
    out = tmp_path / "report"
    assert main(["test", str(smoke_run.run.root), "--out", str(out)]) == 0
    again = json.loads((out / "metrics.json").read_text())
    assert again["macro_f1"] == pytest.approx(smoke_run.test_metrics["macro_f1"], abs=1e-9)
    assert "macro" in capsys.readouterr().out.lower()


def test_predict_file_matches_ensemble(smoke_run, tmp_path, capsys):
    texts = ["质量很差，起皱严重。没型，不值得购买", "收到了，物流很快，衣服还挺不错的，好评"]
    path = tmp_path / "texts.txt"
    path.write_text("\n".join(texts) + "\n", encoding="utf-8")
    assert main(["predict", str(smoke_run.run.root), "--file", str(path), "--top", "2"]) == 0
    lines = [json.loads(l) for l in capsys.readouterr().out.splitlines()]
    ensemble = Ensemble(RunDir.open(smoke_run.run.root).fold_model_dirs())
    expected = ensemble.predict(texts)
    assert [l["labels"] for l in lines] == expected.labels
    assert [l["text"] for l in lines] == texts
    assert lines[0]["top"][0][1] == pytest.approx(float(expected.probs[0].max()), abs=1e-4)


def test_rerun_same_name_is_refused_without_flags(smoke_run, capsys, monkeypatch):
    monkeypatch.chdir(smoke_run.run.root.parent.parent)
    code = main(["run", str(SMOKE), "--set", f"runs_dir={smoke_run.run.root.parent}"])
    assert code == 2 and "run directory exists" in capsys.readouterr().err


def test_kfold_grid_search_picks_best_fold_mean(ray_session, tmp_path):
    """2 folds x 2 configs through real Ray Tune."""
    cfg = with_overrides(load_config(SMOKE), {
        "name": "cv", "runs_dir": str(tmp_path), "train.epochs": 1, "data.max_rows": 300, "data.test_fraction": 0.1,
        "cv.folds": 2, "tune.searcher": "grid", "tune.search": {"train.lr": "grid([0.0003, 0.003])"},
    })
    summary = run_experiment(cfg, log=lambda *_: None)
    root = summary.run.root
    trials = json.loads((root / "trials.json").read_text())
    assert len(trials["trials"]) == 2 and all(len(t["fold_scores"]) == 2 for t in trials["trials"])
    means = {t["params"]["train.lr"]: np.mean(t["fold_scores"]) for t in trials["trials"]}
    assert trials["best_config"]["train.lr"] == max(means, key=means.get)
    assert summary.trials[0]["mean"] == pytest.approx(max(means.values()))
    # the adopted fold models are the best config's
    best_ids = [t for t in trials["trials"] if t["params"] == trials["best_config"]][0]["trial_ids"]
    for fold, trial_id in enumerate(best_ids):
        assert (root / "folds" / str(fold) / "model" / "model.pt").read_bytes() == (root / "trials" / trial_id / "model" / "model.pt").read_bytes()
    # OOF covers every pooled row exactly once
    oof = json.loads((root / "oof_metrics.json").read_text())
    assert oof["rows"] == oof["rows_covered_once"] == len(np.load(root / "oof_logits.npy"))
    # each config's OOF logits are kept (trials.json order); the worker's saved validation logits are
    # what the fold model predicts on its validation rows
    dataset = load_dataset(cfg.data, cfg.seed)
    shared = prepare_folds(cfg, dataset)
    for rank, trial in enumerate(trials["trials"]):
        config_oof = np.load(root / "oof" / f"config_{rank}.npy")
        assert config_oof.shape == (len(shared["ids"]), 2)
        for (_, val_idx), trial_id in zip(shared["plan"], trial["trial_ids"]):
            model = Ensemble([root / "trials" / trial_id / "model"])
            again = model.fold_logits([shared["ids"][i] for i in val_idx])[0]
            np.testing.assert_allclose(config_oof[val_idx], again, atol=1e-4)
    # ensemble selection over the two configs: weights sum to 1, never worse on OOF than the best config
    choice = trials["ensemble"]
    assert choice["kind"] == "selection" and sum(w["weight"] for w in choice["config_weights"]) == pytest.approx(1.0)
    assert choice["oof"]["macro_f1"] >= choice["best_config_oof"]["macro_f1"]
    assert oof["macro_f1"] == pytest.approx(choice["oof"]["macro_f1"])
    members = summary.run.ensemble_members()
    assert sum(m.weight for m in members) == pytest.approx(1.0) and len(members) == choice["members"]
    # the test metric is the weighted combination of the members' logits
    ensemble = Ensemble([m.model_dir for m in members])
    test = [json.loads(l) for l in (root / "data" / "test.jsonl").read_text(encoding="utf-8").splitlines()]
    texts = [r["text"] for r in test]
    gold = np.array([ensemble.classes.index(r["label"]) for r in test])
    fold_logits = ensemble.fold_logits(ensemble.encode(texts))
    mean = np.average(fold_logits, axis=0, weights=[m.weight for m in members])
    expected = compute_metrics(gold, probabilities(mean, False), False)
    assert summary.test_metrics["macro_f1"] == pytest.approx(expected["macro_f1"], abs=1e-9)
    assert choice["test"]["macro_f1"] == summary.test_metrics["macro_f1"]
    best = Ensemble(summary.run.fold_model_dirs())
    best_expected = compute_metrics(gold, best.predict_proba(texts), False)
    assert choice["best_config_test"]["macro_f1"] == pytest.approx(best_expected["macro_f1"], abs=1e-9)
    # and what predict / serve load is that ensemble
    np.testing.assert_allclose(Ensemble.of_run(summary.run).predict_proba(texts), probabilities(mean, False), atol=1e-6)
    html = (root / "report.html").read_text(encoding="utf-8")
    assert "Ensemble selection" in html and f"{choice['oof']['macro_f1']:.4f}" in html


def test_multilabel_thresholds_tuned_on_out_of_fold_rows(ray_session, tmp_path):
    """example3 (multi-label) in 2 folds: per-class thresholds tuned on the OOF predictions reach
    every fold model's model.json, and the test metrics use them."""
    cfg = with_overrides(load_config(SMOKE), {
        "name": "ml", "runs_dir": str(tmp_path), "train.epochs": 1, "cv.folds": 2,
        "data.train": str(ROOT / "data" / "example3" / "train.csv"), "data.test": str(ROOT / "data" / "example3" / "test.csv"),
        "data.val": None, "data.multilabel": True, "data.label_separator": ",", "data.max_rows": 800,
        "train.loss": "zlpr", "train.metric": "micro_f1", "train.tune_thresholds": True,
    })
    summary = run_experiment(cfg, log=lambda *_: None)
    root = summary.run.root
    tuned = json.loads((root / "thresholds.json").read_text())
    ensemble = Ensemble(summary.run.fold_model_dirs())
    assert len(tuned["threshold"]) == len(ensemble.classes) and tuned["tuned_on_rows"] == len(np.load(root / "oof_logits.npy"))
    assert ensemble.threshold == tuned["threshold"] and len(set(tuned["threshold"])) > 1  # not one global value
    test = [json.loads(l) for l in (root / "data" / "test.jsonl").read_text(encoding="utf-8").splitlines()]
    gold = np.array([[int(c in r["label"]) for c in ensemble.classes] for r in test])
    probs = ensemble.predict_proba([r["text"] for r in test])
    expected = compute_metrics(gold, probs, True, np.array(tuned["threshold"]))
    assert summary.test_metrics["micro_f1"] == pytest.approx(expected["micro_f1"], abs=1e-9)
    assert expected["micro_f1"] != pytest.approx(compute_metrics(gold, probs, True, 0.5)["micro_f1"], abs=1e-9)
