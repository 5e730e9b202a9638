"""The served model's own process: same predictions as in this process, load errors with their own
message, a dead child noticed, and no child outliving the process that started it."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from orchestrator.evaluate.loading import load_model
from orchestrator.rundir import RunDir
from orchestrator.serve.model_process import ModelProcess
from tests.test_serving import CLASSES, LONG, TEXTS, make_tiny_run

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    return make_tiny_run(tmp_path_factory.mktemp("model_process"), "tiny", seed=3)


@pytest.fixture(scope="module")
def process(tiny_run):
    model = ModelProcess(str(tiny_run), "ensemble")
    yield model
    model.close()


def _gone(pid: int, within_s: float) -> bool:
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.1)
    return False


def test_predictions_equal_the_model_loaded_here(process, tiny_run):
    here = load_model(RunDir.open(tiny_run), "ensemble", device="cpu")
    texts = TEXTS + [LONG]
    got = process.predict(texts, 2)
    want = here.predict(texts, 2)
    assert [labels for labels, _, _ in got] == want.labels
    assert np.abs(np.array([probs for _, probs, _ in got]) - want.probs).max() < 1e-6
    assert [truncated for _, _, truncated in got] == want.truncated and want.truncated[-1]


def test_info_describes_the_loaded_model(process, tiny_run):
    info = process.info
    assert info.classes == CLASSES and info.multilabel is False and info.max_length == 8
    assert len(info.model_dirs) == 2 and info.device == "cpu" and process.alive()
    assert process.pid != os.getpid()


def test_a_model_that_cannot_load_raises_its_own_error(tmp_path, tiny_run):
    broken = tmp_path / "broken"
    make_tiny_run(tmp_path, "broken", seed=4)
    for meta in broken.glob("folds/*/model/model.json"):
        meta.write_text("{not json")
    with pytest.raises(Exception, match="model.json|Expecting property name"):
        ModelProcess(str(broken), "ensemble")


def test_a_killed_child_is_noticed(tiny_run):
    model = ModelProcess(str(tiny_run), "ensemble")
    os.kill(model.pid, signal.SIGKILL)
    assert _gone(model.pid, 10)
    deadline = time.monotonic() + 10
    while model.alive() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not model.alive()
    with pytest.raises(Exception):
        model.predict(TEXTS, 2)
    model.close()


def test_the_child_dies_with_its_parent_even_when_killed(tiny_run):
    script = ("import sys, time; from orchestrator.serve.model_process import ModelProcess; "
              f"m = ModelProcess({str(tiny_run)!r}, 'ensemble'); print(m.pid, flush=True); time.sleep(600)")
    parent = subprocess.Popen([sys.executable, "-c", script], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        child = int(parent.stdout.readline())
        os.kill(child, 0)  # alive
        parent.kill()      # SIGKILL: no atexit, no executor shutdown
        parent.wait(10)
        assert _gone(child, 10), f"model process {child} outlived its parent"
    finally:
        parent.kill()
