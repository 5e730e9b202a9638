"""The Python API (orchestrator.run / orchestrator.load): the same answers as the CLI, in-process."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest

import orchestrator
from orchestrator.cli import main
from orchestrator.config import ConfigError
from orchestrator.evaluate.ensemble import Ensemble
from orchestrator.rundir import RunDirError
from tests.conftest import ROOT

TEXTS = ["what a wonderful, moving film", "dull and far too long", "the plot never comes together", "a joy"]


def test_load_predicts_what_the_cli_predicts(smoke_run, tmp_path, capsys):
    (tmp_path / "texts.txt").write_text("\n".join(TEXTS) + "\n", encoding="utf-8")
    assert main(["predict", str(smoke_run.run.root), "--file", str(tmp_path / "texts.txt"), "--top", "2"]) == 0
    cli = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    model = orchestrator.load(smoke_run.run.root)
    got = model.predict(TEXTS)
    assert [g["labels"] for g in got] == [c["labels"] for c in cli]
    for g, c in zip(got, cli):
        top = list(g["probabilities"].items())[:2]
        assert [name for name, _ in top] == [name for name, _ in c["top"]]
        assert [round(p, 4) for _, p in top] == [p for _, p in c["top"]]
        assert set(g) == {"labels", "probabilities", "truncated"} and len(g["probabilities"]) == len(model.classes)
    proba = model.predict_proba(TEXTS)
    assert proba.shape == (len(TEXTS), len(model.classes)) and np.allclose(proba.sum(1), 1, atol=1e-6)
    assert [[model.classes[j]] for j in proba.argmax(1)] == [g["labels"] for g in got]
    assert model.predict("a joy", top_k=1)[0]["labels"] == got[3]["labels"]
    assert len(model.predict("a joy", top_k=1)[0]["probabilities"]) == 1


def test_load_picks_one_model_of_the_run(smoke_run):
    fold = orchestrator.load(smoke_run.run.root, "fold:0")
    want = Ensemble([smoke_run.run.model_dir(0)]).predict_proba(TEXTS)
    assert np.abs(fold.predict_proba(TEXTS) - want).max() == 0.0
    with pytest.raises(RunDirError, match="no fold:7 model"):
        orchestrator.load(smoke_run.run.root, "fold:7")
    with pytest.raises(RunDirError, match="no student model"):
        orchestrator.load(smoke_run.run.root, "student")
    with pytest.raises(RunDirError, match=r"model 'best': expected ensemble, fold:<k>, student, pruned or onnx"):
        orchestrator.load(smoke_run.run.root, "best")
    with pytest.raises(TypeError, match=r"texts\[1\] is int"):
        fold.predict(["ok", 3])


def test_load_starts_no_ray(smoke_run):
    code = ("import orchestrator, ray; m = orchestrator.load(%r); m.predict(['a joy']); "
            "print('ray started' if ray.is_initialized() else 'no ray')" % str(smoke_run.run.root))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert out.returncode == 0 and out.stdout.strip().splitlines()[-1] == "no ray", out.stderr[-2000:]


def test_run_returns_the_summary(smoke_run, tmp_path):
    """orchestrator.run on a copy of the smoke run with resume: every step is reused, the summary is
    the run's own."""
    shutil.copytree(smoke_run.run.root, tmp_path / "smoke")
    lines = []
    summary = orchestrator.run(ROOT / "experiments" / "smoke.yaml", resume=True, log=lines.append, runs_dir=str(tmp_path))
    assert summary.run.root.resolve() == (tmp_path / "smoke").resolve()
    assert summary.test_metrics["macro_f1"] == pytest.approx(smoke_run.test_metrics["macro_f1"])
    assert "train: unchanged, fold models reused" in lines
    with pytest.raises(ConfigError, match="train.epochs"):
        orchestrator.run(ROOT / "experiments" / "smoke.yaml", runs_dir=str(tmp_path / "other"), train__epochs=0)
    assert not (tmp_path / "other").exists()
