"""The core install alone (``pip install -e .``, no extras) in a fresh virtualenv runs the smoke
experiment, and every use of a missing extra fails with one line naming it (exit 2)."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from orchestrator.config import ConfigError, load_config, with_overrides
from orchestrator.extras import EXTRAS, MissingExtra, require
from orchestrator.validate import check_extras
from tests.conftest import ROOT

SMOKE = ROOT / "experiments" / "smoke.yaml"


def test_require_names_the_extra_and_the_pip_command(monkeypatch):
    monkeypatch.setattr("importlib.util.find_spec", lambda name: None)
    with pytest.raises(MissingExtra, match=r"export\.onnx needs the 'compress' extra \(onnx not installed\): "
                                           r"pip install 'text-orchestrator\[compress\]'"):
        require("compress", "export.onnx", ("onnx",))
    assert issubclass(MissingExtra, ConfigError)  # the CLI prints it as one line and exits 2


@pytest.mark.parametrize("overrides, extra", [({"export.onnx": True}, "compress"),
                                              ({"prune.mode": "vocabulary"}, "compress"),
                                              ({"distill.enabled": True, "distill.mode": "self"}, "compress"),
                                              ({"serve.enabled": True}, "serve")])
def test_config_checks_its_extras(monkeypatch, overrides, extra):
    cfg = with_overrides(load_config(SMOKE), overrides)
    check_extras(cfg)  # the dev install has every extra
    monkeypatch.setattr("importlib.util.find_spec", lambda name: None)
    with pytest.raises(MissingExtra, match=f"'{extra}' extra"):
        check_extras(cfg)


def test_every_extra_module_is_installed_in_the_dev_install():
    import importlib.util

    assert [m for mods in EXTRAS.values() for m in mods if m != "mlflow" and importlib.util.find_spec(m) is None] == []


@pytest.fixture(scope="module")
def core_venv(tmp_path_factory):
    """A fresh virtualenv holding the project's core install only (~80 s from the local wheels)."""
    venv = tmp_path_factory.mktemp("core") / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    python = venv / "bin" / "python"
    subprocess.run([str(python), "-m", "pip", "install", "-q", "--no-compile", "-e", str(ROOT)], check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    return python


def _orchestrator(python, cwd, *args):
    return subprocess.run([str(python), "-m", "orchestrator", *args], cwd=cwd, capture_output=True, text=True, timeout=300)


def test_core_install_runs_smoke_and_names_missing_extras(core_venv, tmp_path):
    optional = [m for mods in EXTRAS.values() for m in mods if m not in ("sqlalchemy", "alembic")]  # optuna (core) needs those two
    probe = subprocess.run([str(core_venv), "-c", f"import importlib.util as u; print([m for m in {optional!r} if u.find_spec(m)])"],
                           capture_output=True, text=True, check=True)
    assert probe.stdout.strip() == "[]"  # no optional module came in with the core install

    done = _orchestrator(core_venv, tmp_path, "run", str(SMOKE), "--set", "train.epochs=1", "--set", "data.max_rows=300")
    assert done.returncode == 0, done.stderr[-3000:]
    assert (tmp_path / "runs" / "smoke" / "report.html").is_file()
    assert "test: accuracy" in done.stdout

    onnx = _orchestrator(core_venv, tmp_path, "run", str(SMOKE), "--set", "name=with-onnx", "--set", "export.onnx=true")
    assert onnx.returncode == 2
    assert onnx.stderr.strip() == ("error: export.onnx (ONNX and ONNX Runtime) needs the 'compress' extra (onnx, onnxruntime "
                                   "not installed): pip install 'text-orchestrator[compress]'")
    assert not (tmp_path / "runs" / "with-onnx").exists()  # refused before anything was written

    serve = _orchestrator(core_venv, tmp_path, "serve", "runs/smoke")
    assert serve.returncode == 2
    assert "needs the 'serve' extra" in serve.stderr and "Traceback" not in serve.stderr

    predicted = subprocess.run([str(core_venv), "-c", "import json, orchestrator; print(json.dumps(orchestrator.load('runs/smoke').classes))"],
                               cwd=tmp_path, capture_output=True, text=True)
    assert predicted.returncode == 0, predicted.stderr[-2000:]
    assert sorted(json.loads(predicted.stdout)) == ["negative", "positive"]


def test_word_tokens_on_chinese_text_need_the_zh_extra(monkeypatch):
    from orchestrator.data import Dataset, Split
    from orchestrator.validate import check_word_tokens

    cfg = with_overrides(load_config(SMOKE), {"model.tokens": "word"})
    latin = Dataset(Split(["good film", "bad film"], [0, 1]), Split(["fine"], [0]), None, ["pos", "neg"], False)
    chinese = Dataset(latin.train, Split(["很好看"], [0]), None, ["pos", "neg"], False)
    monkeypatch.setattr("importlib.util.find_spec", lambda name: None)
    check_word_tokens(cfg, latin)  # no CJK text: no jieba needed
    check_word_tokens(with_overrides(cfg, {"model.tokens": "char"}), chinese)  # char tokens need no jieba
    with pytest.raises(MissingExtra, match=r"model\.tokens: word on CJK text \(jieba\) needs the 'zh' extra"):
        check_word_tokens(cfg, chinese)
