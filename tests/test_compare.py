"""The measuring helpers of orchestrator/evaluate/measure.py that the stage comparison and benchmarks/compress.py
share: timed passes taken in turns, cycled samples, scores of torch and ONNX Runtime models."""
from __future__ import annotations

import time

import numpy as np
import pytest
import torch

from orchestrator.evaluate.measure import best_rates, cycled, score
from orchestrator.evaluate.ensemble import Ensemble
from orchestrator.evaluate.onnx_ensemble import OnnxEnsemble
from trainables.export import export_model_dir
from trainables.models import save_model_dir
from trainables.models.small import build_small_model
from trainables.text.vocab import VocabTextEncoder
from trainables.config import ModelConfig

TEXTS = ["the cat sat on the mat", "a dog", "cats and dogs and more cats on a mat", "mat", "the the the dog sat",
         "on a cat", "dogs sat", "a mat for the dog"]
GOLD = np.array([0, 1, 2, 0, 1, 2, 0, 1])


def test_best_rates_takes_turns_and_keeps_each_fastest_pass():
    calls, pauses = [], {"a": iter([0.06, 0.01, 0.03]), "b": iter([0.02, 0.04, 0.05])}

    def runner(name):
        def run():
            calls.append(name)
            time.sleep(next(pauses[name]))
        return run

    rates = best_rates({"a": runner("a"), "b": runner("b")}, n=10, passes=3)
    assert calls == ["a", "b"] * 3
    assert 10 / 0.03 < rates["a"] <= 10 / 0.01  # sleep may overrun, never underrun
    assert 10 / 0.04 < rates["b"] <= 10 / 0.02
    with pytest.raises(ValueError, match="passes"):
        best_rates({"a": runner("a")}, n=1, passes=0)


def test_cycled_repeats_then_cuts():
    assert cycled(["x", "y", "z"], 7) == ["x", "y", "z", "x", "y", "z", "x"]
    assert cycled(["x", "y", "z"], 2) == ["x", "y"]
    assert cycled([], 3) == []


def test_torch_and_onnx_models_score_alike_and_are_timed_together(tmp_path):
    """A tiny TextCNN saved as a model directory, exported to ONNX (fp32 + int8): ``score`` gives the
    torch and ONNX fp32 models the same metrics, ``best_rates`` times all three on equal terms."""
    torch.manual_seed(0)
    vocab = VocabTextEncoder.build(TEXTS, tokens="word", max_length=16, vocab_size=100)
    cfg = ModelConfig(kind="small", arch="textcnn", tokens="word", max_length=16, vocab_size=100, min_freq=1,
                          embedding_dim=8, hidden_size=8, num_layers=1, num_filters=4, kernel_sizes=[2, 3],
                          rnn_type="lstm", bidirectional=True, num_heads=2, pretrained_vectors=None, dropout=0.1,
                          multi_sample_dropout=1, init="default")
    meta = {"classes": ["x", "y", "z"], "multilabel": False, "threshold": 0.5}
    save_model_dir(tmp_path / "model", build_small_model(cfg, 3, vocab).eval(), vocab, cfg, meta)
    models = {"torch": Ensemble([tmp_path / "model"], "cpu")}
    parity = export_model_dir(tmp_path / "model", tmp_path / "onnx", models["torch"].encode(TEXTS), int8=True)
    assert parity["ok"]
    models["fp32"] = OnnxEnsemble([tmp_path / "onnx"], threads=1)
    models["int8"] = OnnxEnsemble([tmp_path / "onnx"], int8=True, threads=1)

    scores = {name: score(model, TEXTS, GOLD, batch_size=3) for name, model in models.items()}
    assert scores["torch"] == pytest.approx(scores["fp32"])
    assert set(scores["int8"]) >= {"macro_f1", "accuracy"} and 0 <= scores["int8"]["macro_f1"] <= 1
    sample = cycled(TEXTS, 20)
    ids = {name: model.encode(sample) for name, model in models.items()}
    rates = best_rates({name: (lambda m=model, x=ids[name]: m.fold_logits(x, 4)) for name, model in models.items()},
                       len(sample), passes=2)
    assert set(rates) == set(models) and all(r > 0 for r in rates.values())


def test_stage_comparison_skips_a_run_without_an_evaluation_split(smoke_run, tmp_path):
    """K folds pool val into training: with no test split there is nothing to measure on (it crashed:
    a division by zero timing zero texts)."""
    import shutil

    from orchestrator.data import Split
    from orchestrator.report.compare import stage_comparison
    from orchestrator.rundir import RunDir

    root = tmp_path / "run"
    shutil.copytree(smoke_run.run.root, root, symlinks=True)
    run = RunDir(root)
    if run.has_split("test"):
        run.split_path("test").unlink()
    run.save_split("val", Split([], []), smoke_run.run.stage("data")["classes"], False)
    said = []
    assert stage_comparison(run, log=said.append) == []
    assert said == ["compare: skipped: the run has no evaluation split (set data.test or data.test_fraction)"]
