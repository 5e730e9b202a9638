"""A run you can watch: the live view's grid and plain lines, the engine's output in the run's logs/,
TensorBoard scalars written while a fold trains, --quiet."""
from __future__ import annotations

import io
import json
import subprocess
import sys
import time

from rich.console import Console

from orchestrator.config import load_config, with_overrides
from orchestrator.report.live import RunView
from orchestrator.train.tune import TRIAL_INDEX
from tests.conftest import ROOT

SMOKE = ROOT / "experiments" / "smoke.yaml"
ENGINE_NOISE = ("pid=", "raylet", "WARNING", "core_worker", "TrainingReport", "Loading weights", "Trial status")


def _view(mode: str, terminal: bool = False) -> tuple[RunView, io.StringIO]:
    out = io.StringIO()
    return RunView(Console(file=out, width=80, force_terminal=terminal, highlight=False), mode), out


def _cfg(**overrides):
    return with_overrides(load_config(SMOKE), {"cv.folds": 2, "train.epochs": 2, "tune.searcher": "grid",
                                               "tune.search": {"train.lr": "grid([0.001, 0.01])"}, **overrides})


def _feed(view: RunView) -> None:
    """Two configs x 2 folds; config 2 wins on the mean; config 1's fold 1 fails."""
    scores = {(0.001, 0): 0.70, (0.001, 1): None, (0.01, 0): 0.80, (0.01, 1): 0.90}
    for (lr, fold), score in scores.items():
        config = {"train.lr": lr, TRIAL_INDEX: fold}
        view.trial_event(config, "start", {})
        view.trial_event(config, "result", {"epoch": 1, "val_macro_f1": 0.5})
        if score is None:
            view.trial_event(config, "result", {"failed": "ValueError: boom", "val_macro_f1": float("nan"), "done": 1})
        else:
            view.trial_event(config, "result", {"epoch": 2, "val_macro_f1": score})
            view.trial_event(config, "result", {"val_macro_f1": score, "best_epoch": 2, "done": 1})


def test_plain_lines_one_per_event_never_wrapped():
    view, out = _view("live")  # not a terminal: plain lines
    assert view.mode == "plain"
    with view.training(_cfg()):
        _feed(view)
    lines = out.getvalue().splitlines()
    assert len(lines) == 8  # 4 non-final epochs, 3 folds done, 1 failed
    assert lines[0].startswith("[0:00] config 1 fold 0: epoch 1/2 val_macro_f1 0.5000; elapsed 0:00, ETA 0:0")
    done = [line for line in lines if ": done" in line]
    assert "config 1 fold 0: done, best epoch 2 val_macro_f1 0.7000 (train.lr=0.001)" in done[0]
    assert "config 2 mean 0.8500 over 2/2 folds; best so far: config 2 (0.8500)" in done[2]
    assert any(line.endswith("config 1 fold 1: failed: ValueError: boom") for line in lines)
    assert any(len(line) > 80 for line in done)  # long lines stay whole (soft wrap)


def test_live_grid_shows_states_means_and_the_best_config():
    view, out = _view("live", terminal=True)
    view.folds, view.metric, view.epochs, view.total_configs = 2, "val_macro_f1", 2, 2
    _feed(view)
    view.trial_event({"train.lr": 0.1, TRIAL_INDEX: 0}, "result", {"epoch": 1, "val_macro_f1": 0.42})
    console = Console(record=True, width=100, file=io.StringIO())
    console.print(view.render())
    text = console.export_text()
    assert "train.lr=0.001" in text and "failed" in text and "✓ 0.900" in text
    assert "0.8500 ★" in text and "best: config 2 (0.8500)" in text
    # a fold the race stops at epoch 1 (Tune marks its last epoch result "done"): stopped, not done
    stopped = {"train.lr": 0.1, TRIAL_INDEX: 1}
    view.trial_event(stopped, "start", {})
    view.trial_event(stopped, "result", {"epoch": 1, "val_macro_f1": 0.30, "done": True})
    view.trial_event(stopped, "stopped", {"epoch": 1, "val_macro_f1": 0.30, "done": True})
    console = Console(record=True, width=100, file=io.StringIO())
    console.print(view.render())
    assert "stopped 1/2" in console.export_text() and view.rows[next(reversed(view.rows))].done_scores() == []
    assert "1/2 0.420" in text  # config 3, fold 0: running, epoch 1 of 2, its latest score
    assert "ETA" in text


def test_quiet_prints_nothing_while_training():
    view, out = _view("quiet")
    with view.training(_cfg()):
        _feed(view)
    view.log("training 2 fold(s)")
    assert out.getvalue() == ""


def _tensorboard_scalars(folder) -> int:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    board = EventAccumulator(str(folder))
    board.Reload()
    return sum(len(board.Scalars(tag)) for tag in board.Tags()["scalars"])


def test_a_run_in_a_pipe_shows_the_experiment_not_the_engine(tmp_path):
    """smoke in a pipe: no engine line on the console, the engine's output in logs/driver.log, and
    TensorBoard scalars of the fold on disk while it still trains; then --quiet on the finished run."""
    args = [sys.executable, "-m", "orchestrator", "run", str(SMOKE), "--set", "train.epochs=6",
            "--set", "train.early_stopping_patience=null", "--set", "train.log_every_steps=5"]
    proc = subprocess.Popen(args, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    run = tmp_path / "runs" / "smoke"
    live_scalars, deadline = 0, time.monotonic() + 240
    while proc.poll() is None and time.monotonic() < deadline and not live_scalars:
        for board in run.glob("trials/*/tensorboard"):
            if not (board.parent / "history.json").exists():  # the fold has not finished
                live_scalars = _tensorboard_scalars(board)
        time.sleep(0.5)
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, out[-3000:]
    assert live_scalars >= 1, "no TensorBoard scalar appeared before fold 0 finished"

    lines = out.splitlines()
    assert [line for line in lines if any(noise in line for noise in ENGINE_NOISE)] == []
    assert len(lines) <= 40, out
    assert lines[0] == "engine log (Ray, Tune, Train, libraries): runs/smoke/logs/driver.log"
    assert sum(": epoch " in line for line in lines) == 5 and sum(": done, best epoch" in line for line in lines) == 1
    assert "artifacts: runs/smoke/ (manifest.json, folds/*/model, test/ report with badcases.csv)" in lines
    log = (run / "logs" / "driver.log").read_text()
    assert "Trial status" in log and "pid=" in log  # Tune's table and the workers' lines went there
    history = json.loads(next(run.glob("trials/*/history.json")).read_text())
    per_epoch = history["steps"][-1][0] // 6
    assert len(history["history"]) == 6 and [s for s, _ in history["steps"]][:2] == [5, 10] and per_epoch > 5

    quiet = subprocess.run([sys.executable, "-m", "orchestrator", "run", str(SMOKE), "--set", "train.epochs=6",
                            "--set", "train.early_stopping_patience=null", "--set", "train.log_every_steps=5",
                            "--resume", "--quiet"], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert quiet.returncode == 0, quiet.stderr[-3000:]
    assert quiet.stdout.lstrip().startswith("folds of the chosen config") and quiet.stderr == ""
    assert "engine log" not in quiet.stdout and "train: unchanged" not in quiet.stdout
