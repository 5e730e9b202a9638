"""What a run shows while it runs: a grid of configs × folds (each cell's state, epoch out of the
total and latest validation score), every config's cross-fold mean, the best config by that mean,
elapsed time and an ETA; then the stages' lines and the final summary.

On a terminal the grid is a rich ``Live`` display; anywhere else (CI, a pipe, nohup) each event is
one plain line, never wrapped. ``quiet`` shows nothing but the final summary.

Tune reports each trial's epochs to ``TuneEvents``, a Tune callback with no state of its own: it
forwards to the view that is watching (Tune pickles its callbacks with the experiment, and a
resumed experiment brings the pickled one back).
"""
from __future__ import annotations

import contextlib
import json
import math
import time
from dataclasses import dataclass, field
from typing import Iterator, Optional

from ray.tune import Callback
from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from orchestrator.config import ExperimentConfig
from orchestrator.engine_output import EngineOutput
from orchestrator.report.html import config_label
from orchestrator.rundir import RunDir
from orchestrator.train.tune import TRIAL_INDEX, config_count
from trainables.ray_worker import FAILED


@dataclass
class FoldCell:
    status: str = "pending"  # pending, running, done, stopped (its config raced out mid-fold), failed
    epoch: int = 0
    epochs: int = 0
    score: Optional[float] = None  # running: the latest epoch's; done: the fold's best epoch's


@dataclass
class ConfigRow:
    label: str
    folds: list[FoldCell] = field(default_factory=list)

    def done_scores(self) -> list[float]:
        return [c.score for c in self.folds if c.status == "done" and c.score is not None and not math.isnan(c.score)]

    def mean(self) -> Optional[float]:
        scores = self.done_scores()
        return sum(scores) / len(scores) if scores else None


_WATCHING: Optional["RunView"] = None


class TuneEvents(Callback):
    """Ray Tune callback: every trial's start, epochs and end, forwarded to the watching RunView."""

    def on_trial_start(self, iteration, trials, trial, **info):
        if _WATCHING is not None:
            _WATCHING.trial_event(trial.config, "start", {})

    def on_trial_result(self, iteration, trials, trial, result, **info):
        if _WATCHING is not None:
            _WATCHING.trial_event(trial.config, "result", result)

    def on_trial_complete(self, iteration, trials, trial, **info):
        last = trial.last_result or {}
        if _WATCHING is not None and "best_epoch" not in last and FAILED not in last:  # stopped mid-fold by the race
            _WATCHING.trial_event(trial.config, "stopped", last)

    def on_trial_error(self, iteration, trials, trial, **info):
        if _WATCHING is not None:
            _WATCHING.trial_event(trial.config, "error", {})


def _clock(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    return f"{minutes // 60}:{minutes % 60:02d}:{secs:02d}" if minutes >= 60 else f"{minutes}:{secs:02d}"


class RunView:
    """The run's console: ``log`` lines, the training grid while Tune runs, the final summary."""

    def __init__(self, console: Console, mode: str = "live", engine: Optional[EngineOutput] = None):
        self.console, self.mode, self.engine = console, mode if console.is_terminal or mode != "live" else "plain", engine
        self.rows: dict[str, ConfigRow] = {}
        self.metric, self.sign, self.folds, self.epochs, self.total_configs = "", 1, 1, 1, 1
        self.started = time.monotonic()
        self._live: Optional[Live] = None

    # ---- lines ----
    def log(self, text: str) -> None:
        if self.mode == "quiet":
            return
        if self._live is not None:
            self._live.console.print(Text(str(text)))
        else:
            self.console.print(Text(str(text)), soft_wrap=True)

    def _event(self, text: str) -> None:
        """A training event: a plain line (the live grid shows it instead)."""
        if self.mode == "plain":
            self.console.print(Text(f"[{_clock(time.monotonic() - self.started)}] {text}"), soft_wrap=True)

    # ---- training grid ----
    def attach(self, run: RunDir) -> None:
        """The run directory exists: the engine's output moves into its logs/ (said once)."""
        if self.engine is not None and self.engine.enabled:
            self.engine.move_to(run.engine_log)
            self.log(f"engine log (Ray, Tune, Train, libraries): {run.engine_log}")

    @contextlib.contextmanager
    def training(self, cfg: ExperimentConfig) -> Iterator[list]:
        """Watch the Tune experiment: yields its callbacks; the grid shows until the block ends."""
        global _WATCHING
        self.metric, self.sign, self.folds = cfg.tune.metric, 1 if cfg.tune.mode == "max" else -1, cfg.cv.folds
        self.epochs, self.total_configs = cfg.train.epochs, config_count(cfg.tune)
        self.started, _WATCHING = time.monotonic(), self
        if self.mode == "live":
            # redirect_*=False: what the engine prints through sys.stdout stays in the engine log
            self._live = Live(self.render(), console=self.console, refresh_per_second=2, transient=False,
                              redirect_stdout=False, redirect_stderr=False)
            self._live.start()
        try:
            yield [TuneEvents()]
        finally:
            _WATCHING = None
            if self._live is not None:
                self._live.update(self.render())
                self._live.stop()
                self._live = None

    def trial_event(self, config: dict, kind: str, result: dict) -> None:
        """A trial (one fold of one config) started ("start"), reported ("result": an epoch, or its
        end with ``done``), was stopped mid-fold by the race ("stopped") or crashed ("error")."""
        params = {k: v for k, v in config.items() if k != TRIAL_INDEX}
        key = json.dumps(params, sort_keys=True, default=str)
        if key not in self.rows:
            self.rows[key] = ConfigRow(config_label(params), [FoldCell(epochs=self._epochs(params)) for _ in range(self.folds)])
        row, fold = self.rows[key], int(config.get(TRIAL_INDEX, 0))
        cell, name = row.folds[fold], f"config {list(self.rows).index(key) + 1} fold {fold}"
        score = result.get(self.metric)
        score = float(score) if isinstance(score, (int, float)) and not math.isnan(score) else None
        if kind == "start":  # the grid shows it; a plain line names the config once its first fold ends
            cell.status = "running"
        elif kind == "stopped":
            cell.status = "stopped"
            self._event(f"{name}: stopped at epoch {cell.epoch}/{cell.epochs}, its config raced out")
        elif kind == "error" or (result.get("done") and score is None):
            cell.status = "failed"
            self._event(f"{name}: failed: {result.get(FAILED, 'see the engine log')}")
        elif result.get("done") and "best_epoch" in result:  # Tune marks a stopped trial's last epoch "done" too
            cell.status, cell.score = "done", score
            self._event(self._done_line(name, row, result.get("best_epoch"), score))
        elif "epoch" in result:
            cell.status, cell.epoch, cell.score = "running", int(result["epoch"]), score
            if cell.epoch < cell.epochs:  # the last epoch's line would repeat the "done" line that follows
                shown = f" {self.metric} {score:.4f}" if score is not None else ""
                self._event(f"{name}: epoch {cell.epoch}/{cell.epochs}{shown}; {self._eta()}")
        if self._live is not None:
            self._live.update(self.render())

    def _done_line(self, name: str, row: ConfigRow, best_epoch, score: float) -> str:
        done, best = len(row.done_scores()), self.best()
        return (f"{name}: done, best epoch {best_epoch} {self.metric} {score:.4f}" + (f" ({row.label})" if done == 1 else "")
                + f"; config {name.split()[1]} mean {row.mean():.4f} over {done}/{self.folds} folds"
                + (f"; best so far: config {best[0]} ({best[1]:.4f})" if best else "") + f"; {self._eta()}")

    def _epochs(self, params: dict) -> int:
        return int(params.get("train.epochs", self.epochs))

    def best(self) -> Optional[tuple[int, float]]:
        """(number, mean) of the config with the best cross-fold mean so far."""
        means = [(i + 1, r.mean()) for i, r in enumerate(self.rows.values()) if r.mean() is not None]
        return max(means, key=lambda m: self.sign * m[1]) if means else None

    def _eta(self) -> str:
        elapsed = time.monotonic() - self.started
        total = self.total_configs * self.folds * self.epochs
        done = sum(c.epochs if c.status in ("done", "failed", "stopped") else c.epoch for r in self.rows.values() for c in r.folds)
        if not done:
            return f"elapsed {_clock(elapsed)}"
        return f"elapsed {_clock(elapsed)}, ETA {_clock(elapsed / done * max(total - done, 0))}"

    def render(self) -> Group:
        table = Table(title=f"{self.total_configs} config(s) × {self.folds} fold(s), {self.metric} (cross-fold mean decides)")
        table.add_column("#", justify="right")
        table.add_column("config", overflow="fold")
        for k in range(self.folds):
            table.add_column(f"fold {k}", justify="right", no_wrap=True)
        table.add_column("mean", justify="right", no_wrap=True)
        best = self.best()
        for i, row in enumerate(self.rows.values()):
            mean = row.mean()
            cells = [self._cell(c) for c in row.folds]
            done = len(row.done_scores())
            mark = "-" if mean is None else (f"{mean:.4f}" + (f" ({done}/{self.folds})" if done < self.folds else "")
                                             + (" ★" if best and best[0] == i + 1 else ""))
            table.add_row(str(i + 1), Text(row.label), *cells, mark)
        footer = f"{self._eta()}" + (f"   best: config {best[0]} ({best[1]:.4f})" if best else "")
        return Group(table, Text(footer))

    @staticmethod
    def _cell(cell: FoldCell) -> Text:
        if cell.status == "pending":
            return Text("·", style="dim")
        if cell.status == "failed":
            return Text("failed", style="red")
        if cell.status == "stopped":
            return Text(f"stopped {cell.epoch}/{cell.epochs}", style="dim")
        score = f" {cell.score:.3f}" if isinstance(cell.score, (int, float)) and not math.isnan(cell.score) else ""
        if cell.status == "done":
            return Text(f"✓{score}", style="green")
        return Text(f"{cell.epoch}/{cell.epochs}{score}", style="yellow")
