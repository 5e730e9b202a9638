"""Racing configs fold by fold (``tune.racing``): cross-validated search at a fraction of K× the cost.

``RacingSearcher`` wraps the run's searcher (random, TPE, grid) in place of Ray Tune's ``Repeater``.
It hands out (config, fold) trials breadth first: fold 0 of each new config, then fold 1 of the
survivors, and so on. Once a config and the leader (the best mean over at least ``min_folds`` folds)
share ``min_folds`` finished folds, the config is raced out when it is significantly worse on those
same folds: the one-sided lower bound (Student t, ``confidence``) of the mean paired difference
leader − config is above zero (``raced_out``). The spread of the differences is pooled over the race's
configs (each against the leader on its shared folds, ``pooled_spread``), never below the config's own:
with 2 folds one config's own spread has 1 degree of freedom (t = 6.3), the pool has one per config.
With ``tolerance`` > 0 (an indifference zone, in the metric's units) a config also goes when the bound
says it is not better than the leader by ``tolerance``: lower bound of leader − config above −tolerance.
A raced-out config takes no more fold slots; the folds it finished stay in trials.json, marked. The wrapped searcher hears each config once: its K-fold
mean, or a raced-out config's partial mean (worse by construction), so it keeps suggesting.

Inside a fold group (``racing.per_epoch``), ``RaceStopper`` (a Tune scheduler) applies the same rule at
every epoch a fold reports: the config's folds against the leader's folds at the same epoch (each fold's
best score up to that epoch; a finished fold keeps its last), on the folds both reached, at least
``min_folds`` of them: never one fold alone. A config that goes out there stops the reporting fold at
once, and any other fold of a raced-out config still in flight stops at its next epoch. A fold at its
last epoch is left to finish (stopping it saves nothing).

The race's state is written to racing.json (read by ``select_best``) and saved with Tune's
experiment checkpoints, so a resumed driver continues the race where it was.
"""
from __future__ import annotations

import copy
import json
import math
import pickle
from dataclasses import dataclass, field
from typing import Optional, Sequence

import numpy as np
from ray.tune.schedulers import FIFOScheduler, TrialScheduler
from ray.tune.search import Searcher

from trainables.atomic import atomic_write_text

RACED_OUT = "raced out"


def _paired(leader: dict[int, float], other: dict[int, float], mode: str) -> np.ndarray:
    """leader − other on the folds both have, signed so that positive means ``other`` is worse."""
    sign = 1.0 if mode == "max" else -1.0
    return np.array([sign * (leader[f] - other[f]) for f in sorted(set(leader) & set(other))])


def pooled_spread(diffs: Sequence[np.ndarray]) -> tuple[float, int]:
    """The spread of paired differences pooled over configs (each config's own mean removed) and its
    degrees of freedom: the error term of a config × fold design."""
    usable = [d for d in diffs if len(d) >= 2]
    dof = sum(len(d) - 1 for d in usable)
    if not dof:
        return 0.0, 0
    return math.sqrt(sum(float(((d - d.mean()) ** 2).sum()) for d in usable) / dof), dof


def paired_lower_bound(diffs: Sequence[float], confidence: float, pooled: tuple[float, int] = (0.0, 0)) -> float:
    """One-sided lower confidence bound (Student t) of the mean paired difference. With ``pooled`` (spread,
    degrees of freedom over the race's configs) the bound uses the pooled degrees of freedom and the larger
    of the two spreads, so a config whose own folds disagree (a fluke) is still judged on its own spread."""
    from scipy.stats import t

    diffs = np.asarray(diffs, dtype=float)
    if len(diffs) < 2:
        return -math.inf
    spread, dof = max(float(diffs.std(ddof=1)), pooled[0]), max(len(diffs) - 1, pooled[1])
    return float(diffs.mean() - t.ppf(confidence, dof) * spread / math.sqrt(len(diffs)))


def raced_out(leader: dict[int, float], other: dict[int, float], min_folds: int, confidence: float, mode: str = "max",
              pool: Sequence[dict[int, float]] = (), tolerance: float = 0.0) -> bool:
    """Whether ``other`` is significantly worse than ``leader`` on the folds both finished (at least
    ``min_folds`` of them, and at least 2). ``pool``: the race's other configs' fold scores (neither the leader
    nor ``other``), whose paired differences with the leader pool the spread with ``other``'s (``pooled_spread``).
    ``tolerance`` (metric units, an indifference zone): ``other`` also goes when it is significantly *not better*
    than the leader by ``tolerance`` or more, i.e. the lower bound of leader − other is above ``-tolerance``."""
    diffs = _paired(leader, other, mode)
    if len(diffs) < max(min_folds, 2):
        return False
    pooled = pooled_spread([diffs] + [_paired(leader, p, mode) for p in pool])
    return paired_lower_bound(diffs, confidence, pooled) > -tolerance


@dataclass
class Entry:
    """One config of the race."""

    key: str                                   # the wrapped searcher's trial id for it
    config: dict
    scores: dict[int, float] = field(default_factory=dict)
    scheduled: set[int] = field(default_factory=set)
    status: str = "racing"                     # racing, complete, raced out, failed
    raced_after: Optional[int] = None          # folds it had finished when it was raced out
    raced_at_epoch: Optional[int] = None       # the epoch it went out at (per-epoch racing), if not at a fold's end
    curves: dict[int, list[float]] = field(default_factory=dict)  # fold -> its best score up to each epoch

    def mean(self) -> float:
        return float(np.mean(list(self.scores.values()))) if self.scores else math.nan

    def at_epoch(self, epoch: int) -> dict[int, float]:
        """Fold -> best score up to ``epoch``: folds that reached it, and finished folds (their last)."""
        return {f: c[min(epoch, len(c)) - 1] for f, c in self.curves.items() if c and (len(c) >= epoch or f in self.scores)}


class RacingSearcher(Searcher):
    """Suggests (config, fold) trials of ``searcher``'s configs, breadth first, racing them."""

    def __init__(self, searcher: Searcher, folds: int, configs: int, min_folds: int, confidence: float,
                 fold_key: str, state_file: str, epochs: int = 1, per_epoch: bool = False, tolerance: float = 0.0):
        super().__init__(metric=searcher.metric, mode=searcher.mode)
        self.searcher, self.folds, self.configs = searcher, folds, configs
        self.min_folds, self.confidence, self.fold_key, self.state_file = min_folds, confidence, fold_key, state_file
        self.tolerance = tolerance
        self.epochs, self.per_epoch = epochs, per_epoch
        self.entries: list[Entry] = []
        self.trials: dict[str, tuple[int, int]] = {}  # Tune trial id -> (entry, fold)
        self.stopped: set[str] = set()                 # trials stopped mid-fold (their last result is no fold score)
        self.exhausted = False                         # the wrapped searcher has no more configs

    # ---- Tune's side ----
    def suggest(self, trial_id: str):
        waiting = sorted((min(set(range(self.folds)) - e.scheduled), i) for i, e in enumerate(self.entries)
                         if e.status == "racing" and len(e.scheduled) < self.folds)
        if not self.exhausted and len(self.entries) < self.configs and (not waiting or waiting[0][0] > 0):
            config = self.searcher.suggest(f"config_{len(self.entries)}")
            if config == Searcher.FINISHED:
                self.exhausted = True
            elif config is not None:
                self.entries.append(Entry(f"config_{len(self.entries)}", dict(config)))
                return self._schedule(trial_id, len(self.entries) - 1, 0)
        if waiting:
            fold, index = waiting[0]
            return self._schedule(trial_id, index, fold)
        if (self.exhausted or len(self.entries) >= self.configs) and not self.trials:
            return Searcher.FINISHED
        return None

    def on_trial_complete(self, trial_id: str, result: Optional[dict] = None, error: bool = False) -> None:
        if trial_id not in self.trials:
            return
        index, fold = self.trials.pop(trial_id)
        entry = self.entries[index]
        score = (result or {}).get(self.metric)
        if trial_id in self.stopped:  # its config was raced out while it trained
            self.stopped.discard(trial_id)
        elif error or score is None or math.isnan(float(score)):
            if entry.status == "racing":
                entry.status = "failed"
                self.searcher.on_trial_complete(entry.key, error=True)
        else:
            entry.scores[fold] = float(score)
            if entry.status == "racing" and len(entry.scores) == self.folds:
                entry.status = "complete"
                self.searcher.on_trial_complete(entry.key, {self.metric: entry.mean()})
        self._race()
        self._write()

    # ---- the race ----
    def _schedule(self, trial_id: str, index: int, fold: int) -> dict:
        self.entries[index].scheduled.add(fold)
        self.trials[trial_id] = (index, fold)
        self._write()
        return {**self.entries[index].config, self.fold_key: fold}

    def leader(self) -> Optional[Entry]:
        """The config with the best mean over at least ``min_folds`` finished folds."""
        sign = 1.0 if self.mode == "max" else -1.0
        ranked = [e for e in self.entries if e.status in ("racing", "complete") and len(e.scores) >= self.min_folds]
        return max(ranked, key=lambda e: sign * e.mean()) if ranked else None

    def _race(self) -> None:
        leader = self.leader()
        if leader is None:
            return
        for entry in self.entries:
            if entry is not leader and entry.status == "racing" and raced_out(
                    leader.scores, entry.scores, self.min_folds, self.confidence, self.mode,
                    [e.scores for e in self._pool(leader, entry)], self.tolerance):
                self._race_out(entry)

    def _pool(self, leader: Entry, entry: Entry) -> list[Entry]:
        """The configs whose paired differences with the leader pool the spread when ``entry`` is judged."""
        return [e for e in self.entries if e is not leader and e is not entry and e.status != "failed"]

    def _race_out(self, entry: Entry, epoch: Optional[int] = None) -> None:
        entry.status, entry.raced_after, entry.raced_at_epoch = RACED_OUT, len(entry.scores), epoch
        partial = entry.mean() if entry.scores else float(np.mean(list(entry.at_epoch(epoch or 1).values())))
        self.searcher.on_trial_complete(entry.key, {self.metric: partial, "raced_out": 1})

    def on_epoch(self, trial_id: str, result: dict) -> bool:
        """Record a fold's epoch result; whether that fold should stop now: its config is raced out
        (already, or now on its folds at this epoch against the leader's; ``per_epoch`` only)."""
        score, epoch = result.get(self.metric), result.get("epoch")
        if trial_id not in self.trials or "best_epoch" in result or epoch is None or score is None or math.isnan(float(score)):
            return False
        index, fold = self.trials[trial_id]
        entry, epoch = self.entries[index], int(epoch)
        curve = entry.curves.setdefault(fold, [])[: epoch - 1]  # a restarted fold reports its epochs again
        better = max if self.mode == "max" else min
        entry.curves[fold] = curve + [better(curve[-1], float(score)) if curve else float(score)]
        if epoch >= self.epochs:  # its last epoch: it finishes anyway
            return False
        if entry.status == "racing" and self.per_epoch:
            leader = self.leader()
            if leader is not None and leader is not entry and raced_out(
                    leader.at_epoch(epoch), entry.at_epoch(epoch), self.min_folds, self.confidence, self.mode,
                    [e.at_epoch(epoch) for e in self._pool(leader, entry)], self.tolerance):
                self._race_out(entry, epoch)
        if entry.status != RACED_OUT:
            return False
        self.stopped.add(trial_id)
        self._write()
        return True

    def state(self) -> dict:
        return {"min_folds": self.min_folds, "confidence": self.confidence, "tolerance": self.tolerance,
                "folds": self.folds, "per_epoch": self.per_epoch,
                "configs": [{"params": e.config, "status": e.status, "raced_after": e.raced_after,
                             "raced_at_epoch": e.raced_at_epoch, "scores": {str(f): s for f, s in sorted(e.scores.items())},
                             "curves": {str(f): c for f, c in sorted(e.curves.items())}} for e in self.entries]}

    def _write(self) -> None:
        atomic_write_text(self.state_file, json.dumps(self.state(), indent=2, default=str) + "\n")

    # ---- checkpoints (a resumed driver continues the race) ----
    def get_state(self) -> dict:
        return copy.deepcopy({k: v for k, v in self.__dict__.items() if k != "searcher"})

    def set_state(self, state: dict) -> None:
        self.__dict__.update(state)

    def save(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "wb") as f:
            pickle.dump(self.get_state(), f)
        self.searcher.save(checkpoint_path + ".inner")

    def restore(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "rb") as f:
            self.set_state(pickle.load(f))
        self.searcher.restore(checkpoint_path + ".inner")

    def set_search_properties(self, metric, mode, config, **spec) -> bool:
        return self.searcher.set_search_properties(metric, mode, config, **spec)


class RaceStopper(FIFOScheduler):
    """Tune's scheduler for a race: stops a fold trial the moment ``race.on_epoch`` says its config is
    out; otherwise first in, first out."""

    def __init__(self, race: RacingSearcher):
        super().__init__()
        self.race = race

    def on_trial_result(self, tune_controller, trial, result: dict) -> str:
        return TrialScheduler.STOP if self.race.on_epoch(trial.trial_id, result) else TrialScheduler.CONTINUE

