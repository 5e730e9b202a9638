"""Racing a cross-validated search: the same 12-config random search over 5 folds, without racing,
with ``tune.racing`` (its default rule) and with ``tune.racing.tolerance`` (an indifference zone), same
searcher seed, 2 trials at once.

    python -m benchmarks.cv_racing [--configs 12] [--folds 5] [--epochs 2] [--tolerance 0.002] [--out FILE]

experiments/example1.yaml (char TextCNN, 10,001 rows) with lr ~ loguniform(1e-4, 1e-1), dropout ~
uniform(0.1, 0.6) and kernel_sizes ~ choice([[2, 3, 4, 5], [1, 2, 3], [3, 5, 7]]), each fold ``--epochs``
epochs. Reported for each race (``comparisons``: figure = its wall time, baseline = the full search's,
ratio; ``races`` the details): fold trainings run and saved, the chosen
config, and its full 5-fold mean (from the full search, which trained every config on every fold)
against the full search's best, in standard errors of the best's fold scores. ``fold_end_floor``: the
fold trainings a race judged at fold ends only would need if it knew the winner from the start (each
config raced against the full search's best, on the full search's fold scores, at the first fold count
the rule allows), and that count over the full search's. Per-epoch racing (``racing.per_epoch``, on by
default) stops folds mid-training on their epoch scores, so it can finish fewer folds than that.

Writes benchmarks/results/cv_racing.json. Targets, per race: ratio <= 0.5; the racing choice within 1
standard error of the full search's best (or the same config).
"""
from __future__ import annotations

import argparse
import json
import math
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.common import ROOT, write_result
from orchestrator.config import load_config, with_overrides
from orchestrator.pipeline import run_experiment
from orchestrator.train.racing import raced_out

SEARCH = {"train.lr": "loguniform(1e-4, 1e-1)", "model.dropout": "uniform(0.1, 0.6)",
          "model.kernel_sizes": "choice([[2, 3, 4, 5], [1, 2, 3], [3, 5, 7]])"}
MIN_FOLDS, CONFIDENCE = 2, 0.95  # tune.racing's defaults, which the racing search runs with


def search(runs: Path, name: str, racing: bool, configs: int, folds: int, epochs: int, tolerance: float = 0.0) -> dict:
    cfg = with_overrides(load_config(ROOT / "experiments" / "example1.yaml"), {
        "name": name, "runs_dir": str(runs), "cv.folds": folds, "cv.parallel": 2, "cv.ensemble": "best_config",
        "train.epochs": epochs, "train.early_stopping_patience": None, "train.torch_threads": 1,
        "tune.searcher": "random", "tune.samples": configs, "tune.search": SEARCH,
        "tune.racing": {"enabled": racing, "min_folds": MIN_FOLDS, "confidence": CONFIDENCE, "tolerance": tolerance}})
    started = time.perf_counter()
    summary = run_experiment(cfg, log=lambda *_: None)
    wall = time.perf_counter() - started
    trials = json.loads((summary.run.root / "trials.json").read_text())
    return {"wall_s": round(wall, 1), "fold_trainings": sum(t["folds_done"] for t in trials["trials"]),
            "raced_out": sum("raced_out" in t for t in trials["trials"]), "chosen": trials["best_config"],
            "trials": trials["trials"], "test_macro_f1": summary.test_metrics.get("macro_f1")}


def oracle_floor(trials: list[dict], best: dict, folds: int, tolerance: float = 0.0) -> int:
    """Fold trainings of a race judged at fold ends and led by ``best`` from the start: each other config stops at the first
    fold count at which the rule races it out against ``best`` on the same folds, else runs all folds."""
    def first(trial: dict, k: int) -> dict[int, float]:
        return dict(enumerate(trial["fold_scores"][:k]))

    def needed(trial: dict) -> int:
        if trial is best:
            return folds
        return next((k for k in range(MIN_FOLDS, folds + 1)
                     if raced_out(first(best, k), first(trial, k), MIN_FOLDS, CONFIDENCE,
                                  pool=[first(t, k) for t in trials if t is not best and t is not trial], tolerance=tolerance)),
                    folds)
    return sum(needed(t) for t in trials)


def _key(params: dict) -> str:
    return json.dumps(params, sort_keys=True)


def _label(params: dict) -> str:
    return ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in params.items())


def judge(raced: dict, full: dict, name: str, tolerance: float, folds: int) -> dict:
    """One race against the full search: wall ratio, folds saved, its choice's full 5-fold mean vs the best's."""
    by_params = {_key(t["params"]): t for t in full["trials"]}
    best = by_params[_key(full["chosen"])]
    chosen = by_params[_key(raced["chosen"])]  # the same seed suggests the same configs: its full 5-fold scores
    stderr = float(np.std(best["fold_scores"], ddof=1) / math.sqrt(len(best["fold_scores"])))
    gap, ratio = best["mean"] - chosen["mean"], raced["wall_s"] / full["wall_s"]
    saved, floor = full["fold_trainings"] - raced["fold_trainings"], oracle_floor(full["trials"], best, folds, tolerance)
    return {
        "rule": f"min_folds {MIN_FOLDS}, confidence {CONFIDENCE}, tolerance {tolerance}", "wall_s": raced["wall_s"],
        "ratio": round(ratio, 3), "fold_trainings": raced["fold_trainings"], "saved": saved, "raced_out_configs": raced["raced_out"],
        "fold_end_floor": {"fold_trainings": floor, "share_of_full": round(floor / full["fold_trainings"], 3)},
        "chosen": raced["chosen"], "same_as_full": _key(full["chosen"]) == _key(raced["chosen"]),
        "chosen_full_fold_mean": round(chosen["mean"], 4), "gap": round(gap, 4), "best_standard_error": round(stderr, 4),
        "test_macro_f1": raced["test_macro_f1"],
        "targets": {"ratio_at_most_0.5": ratio <= 0.5, "within_1_standard_error": gap <= stderr},
        "trials": [{k: t[k] for k in ("params", "fold_scores", "mean", "folds_done", "raced_out") if k in t} for t in raced["trials"]],
        "row": (f"| {name} ({MIN_FOLDS} min folds, confidence {CONFIDENCE}, tolerance {tolerance}) | {raced['wall_s']} ({ratio:.3f}) | "
                f"{raced['fold_trainings']} (saved {saved}; floor {floor}) | {raced['raced_out']} | {_label(raced['chosen'])} | "
                f"{chosen['mean']:.4f} (gap {gap:+.4f}, 1 SE = {stderr:.4f}) |"),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", type=int, default=12)
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--tolerance", type=float, default=0.002, help="the second race's tune.racing.tolerance")
    parser.add_argument("--out")
    args = parser.parse_args()
    shape = (args.configs, args.folds, args.epochs)
    with tempfile.TemporaryDirectory(prefix="cv-racing-") as tmp:
        full = search(Path(tmp), "full", False, *shape)
        races = {"racing": judge(search(Path(tmp), "raced", True, *shape), full, "racing", 0.0, args.folds),
                 "racing_tolerance": judge(search(Path(tmp), "raced-tol", True, *shape, tolerance=args.tolerance),
                                           full, "racing with a tolerance", args.tolerance, args.folds)}
    best = next(t for t in full["trials"] if _key(t["params"]) == _key(full["chosen"]))
    result = {
        "what": (f"example1 char TextCNN, {args.configs}-config random search (lr, dropout, kernel sizes) x {args.folds} folds, "
                 f"{args.epochs} epochs, 2 trials at once: wall time with tune.racing vs the full search, same seed"),
        "unit": "s", "comparisons": {name: {"figure": race["wall_s"], "baseline": full["wall_s"], "ratio": race["ratio"],
                                            "target": f"ratio ≤ 0.5; choice within 1 SE of the best ({race['rule']})"}
                                     for name, race in races.items()},
        "full": {"wall_s": full["wall_s"], "fold_trainings": full["fold_trainings"], "chosen": full["chosen"],
                 "chosen_full_fold_mean": round(best["mean"], 4), "test_macro_f1": full["test_macro_f1"]},
        "races": {name: {k: v for k, v in race.items() if k != "row"} for name, race in races.items()},
        "full_trials": [{k: t[k] for k in ("params", "fold_scores", "mean")} for t in full["trials"]],
        "table": ["| search | wall (s) (ratio) | fold trainings | configs raced out | chosen config | its 5-fold mean (full search) |",
                  "| --- | --- | --- | --- | --- | --- |",
                  f"| full (every config on every fold) | {full['wall_s']} | {full['fold_trainings']} | 0 | "
                  f"{_label(full['chosen'])} | {best['mean']:.4f} |"] + [race["row"] for race in races.values()],
    }
    write_result("cv_racing", result, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
