"""`orchestrator export RUN --format hf`: a folder that plain transformers loads (AutoModel... and
pipeline), giving the probabilities `orchestrator.load(RUN, model)` gives."""
from __future__ import annotations

import json

import numpy as np
import pytest

import orchestrator
from orchestrator.cli import main
from tests.test_distill import bert_run  # noqa: F401  (fixture: a run whose 2 folds are tiny random BERTs)
from trainables.models import load_model_dir, save_model_dir


def pipeline_probs(folder, texts: list[str], classes: list[str]) -> np.ndarray:
    from transformers import pipeline

    classify = pipeline("text-classification", model=str(folder), trust_remote_code=True, top_k=None, device="cpu")
    return np.array([[{d["label"]: d["score"] for d in row}[c] for c in classes] for row in classify(texts, truncation=True)])


@pytest.mark.parametrize("pooling", ["mean", "cls"])
def test_hf_export_loads_in_transformers_with_the_same_probabilities(bert_run, tmp_path, capsys, pooling):  # noqa: F811
    cfg, run = bert_run
    model, encoder, meta = load_model_dir(run.model_dir(0))
    model.pooling = pooling
    save_model_dir(run.model_dir(0), model, encoder, cfg.model.model_copy(update={"pooling": pooling}), meta)
    out = tmp_path / "hf"
    assert main(["export", str(run.root), "--model", "fold:0", "--format", "hf", "--out", str(out)]) == 0
    assert "wrote" in capsys.readouterr().out
    config = json.loads((out / "config.json").read_text())
    classes = meta["classes"]
    assert config["id2label"] == {str(i): c for i, c in enumerate(classes)} and config["label2id"] == {c: i for i, c in enumerate(classes)}
    assert config["problem_type"] == "single_label_classification" and config["orchestrator_pooling"] == pooling
    assert config["auto_map"]["AutoModelForSequenceClassification"] == "modeling_orchestrator.OrchestratorForSequenceClassification"
    assert {"model.safetensors", "tokenizer.json", "modeling_orchestrator.py", "README.md"} <= {p.name for p in out.iterdir()}
    card = (out / "README.md").read_text()
    assert "pipeline_tag: text-classification" in card and "| macro_f1 |" in card and "trust_remote_code=True" in card

    texts = run.evaluation_split().texts[:40]
    ours = orchestrator.load(run.root, "fold:0")
    want = ours.predict_proba(texts)
    got = pipeline_probs(out, texts, ours.classes)
    assert np.abs(got - want).max() <= 1e-5
    assert (got.argmax(1) == want.argmax(1)).all()


def test_models_without_an_hf_form_are_refused(bert_run, smoke_run, tmp_path, capsys):  # noqa: F811
    _, run = bert_run
    assert main(["export", str(run.root), "--model", "ensemble", "--out", str(tmp_path / "a")]) == 2
    assert "an ensemble has no single Hugging Face form" in capsys.readouterr().err
    assert main(["export", str(smoke_run.run.root), "--model", "fold:0", "--out", str(tmp_path / "b")]) == 2
    err = capsys.readouterr().err
    assert "a small model has no Hugging Face form; its portable format is ONNX" in err and len(err.splitlines()) == 1
    assert main(["export", str(run.root), "--model", "student", "--out", str(tmp_path / "c")]) == 2
    assert "no student model" in capsys.readouterr().err
    assert not any((tmp_path / name).exists() for name in "abc")


def test_export_stage_writes_every_hf_model_when_export_hf_is_on(bert_run):  # noqa: F811
    from orchestrator.config import with_overrides
    from orchestrator.stages.export import run_export

    cfg, run = bert_run
    results = run_export(with_overrides(cfg, {"export.hf": True}), run)
    assert set(results) == {"hf"} and set(results["hf"]) == {"fold_0", "fold_1"}
    for name, result in results["hf"].items():
        assert result["max_abs_diff"] <= 1e-5 and result["same_labels"], name
        assert json.loads((run.hf_export_dir(name) / "config.json").read_text())["problem_type"] == "single_label_classification"


def test_export_stage_says_which_models_have_no_hf_form(smoke_run, tmp_path):
    import shutil

    from orchestrator.config import with_overrides
    from orchestrator.rundir import RunDir
    from orchestrator.stages.export import run_export

    run = RunDir.open(shutil.copytree(smoke_run.run.root, tmp_path / "smoke"))
    results = run_export(with_overrides(run.config(), {"export.hf": True}), run)
    assert "a small model has no Hugging Face form" in results["hf"]["fold_0"]["skipped"]
    assert not run.hf_export_dir("fold_0").exists()


def test_export_never_overwrites_a_foreign_folder(bert_run, tmp_path, capsys):  # noqa: F811
    _, run = bert_run
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    assert main(["export", str(run.root), "--model", "fold:0", "--out", str(mine)]) == 2
    assert "exists and is not an earlier Hugging Face export" in capsys.readouterr().err
    assert [p.name for p in mine.iterdir()] == ["notes.txt"]
    out = tmp_path / "hf"
    for _ in range(2):  # an earlier export of the project's is replaced whole
        assert main(["export", str(run.root), "--model", "fold:0", "--out", str(out)]) == 0
    assert (out / "model.safetensors").is_file() and not any(p.name.startswith(".") for p in tmp_path.iterdir())
