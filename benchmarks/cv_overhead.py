"""Cost of running K folds as parallel Ray Tune trials: the wall time of the folds under Tune against
the folds' own training times, measured inside them, in the same run.

    python -m benchmarks.cv_overhead [--folds 4] [--rows 2000] [--epochs 6] [--cpus 2]

Each fold is one Ray Train worker with 1 CPU (1 torch thread) training the tiny TextCNN of
experiments/smoke.yaml on data/example1; with C CPUs, P = min(K, C) folds run at once (cv.parallel).
K = 4 on 2 CPUs runs two rounds, as every run with more trials than slots does (example2: 5 folds x
2 configs on 2 CPUs), so the second round shows what ``reuse_actors`` saves. With K = P every trial
pays a new process (Ray worker, Ray Tune and torch imports: about 3 s of a ~25 s fold here), the
worst case: ``--folds 2`` measured 1.15-1.17 (docs/architecture.md).

    fold time  = trials/<id>/history.json train_time_s: from the trial building its TorchTrainer to
                 the fold's best model copied out (Ray Train worker start, every epoch, checkpoints)
    baseline   = sum(fold times) / P: the wall time K folds would need with perfect packing and no
                 Tune cost
    figure     = wall time of ``tune_folds`` (Tune experiment setup, trial actors, result handling,
                 selecting and copying the best models), on a Ray already started
    ratio      = figure / baseline  (target <= 1.15)

Ray's own start and the driver's tokenization are reported apart, outside both. Writes
benchmarks/results/cv_overhead.json.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

from benchmarks.common import ROOT, write_result
from orchestrator.rundir import RunDir
from orchestrator.train.tune import TUNE_NAME

TARGET = 1.15


def trial_spans(run_root: Path) -> list[tuple[float, float]]:
    """(start, end) wall-clock seconds of every trial, from Tune's last result row of each."""
    spans = []
    for path in RunDir(run_root).ray_run(TUNE_NAME).glob("*/result.json"):
        rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        if rows:
            last = rows[-1]
            spans.append((last["timestamp"] - last["time_total_s"], float(last["timestamp"])))
    return spans


def max_overlap(spans: list[tuple[float, float]]) -> int:
    """Most trials running at one moment (timestamps are whole seconds: a coarse check)."""
    events = sorted([(s, 1) for s, _ in spans] + [(e, -1) for _, e in spans], key=lambda x: (x[0], x[1]))
    best = now = 0
    for _, step in events:
        now += step
        best = max(best, now)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--folds", type=int, default=4, help="K")
    parser.add_argument("--rows", type=int, default=2000, help="training rows of data/example1 (train+val pool)")
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--cpus", type=int, default=2, help="CPUs of the local Ray (1 per fold)")
    parser.add_argument("--address", help="join this Ray cluster instead of starting a local one")
    parser.add_argument("--out")
    args = parser.parse_args()

    os.environ.setdefault("RAY_TRAIN_V2_ENABLED", "1")
    import ray

    from orchestrator.rundir import RunDir
    from orchestrator.config import load_config, with_overrides
    from orchestrator.data import load_dataset
    from orchestrator.train.folds import prepare_folds
    from orchestrator.train.tune import tune_folds

    runs_dir = tempfile.mkdtemp(prefix="cv_overhead-")
    try:
        started = time.perf_counter()
        if args.address:
            ray.init(address=args.address, logging_level="WARNING")
        else:  # the dashboard: Ray Train's placement-group cleaner queries the state API
            ray.init(num_cpus=args.cpus, include_dashboard=True, dashboard_host="127.0.0.1", logging_level="WARNING")
        ray_start_s = time.perf_counter() - started
        cpus = ray.cluster_resources().get("CPU", 0)
        slots = max(1, min(args.folds, int(cpus)))  # one 1-CPU worker per fold
        cfg = with_overrides(load_config(ROOT / "experiments" / "smoke.yaml"), {
            "name": "cv_overhead", "runs_dir": runs_dir, "cv.folds": args.folds, "cv.parallel": slots,
            "data.max_rows": args.rows, "train.epochs": args.epochs, "train.early_stopping_patience": None,
            "train.cpus_per_worker": 1, "train.torch_threads": 1,
        })

        started = time.perf_counter()
        dataset = load_dataset(cfg.data, cfg.seed)
        run = RunDir.create(cfg)
        shared = prepare_folds(cfg, dataset)
        prepare_s = time.perf_counter() - started

        started = time.perf_counter()
        outcome = tune_folds(cfg, run, shared, log=lambda *_: None)
        wall = time.perf_counter() - started

        fold_times = [r.train_time_s for r in outcome.folds]
        epoch_times = [sum(h["epoch_time_s"] for h in r.history) for r in outcome.folds]
        baseline = sum(fold_times) / slots
        spans = trial_spans(run.root)
    finally:
        ray.shutdown()
        shutil.rmtree(runs_dir, ignore_errors=True)

    write_result("cv_overhead", {
        "what": f"{args.folds} folds as Ray Tune trials, {slots} at once (1 CPU each), tiny TextCNN, "
                f"{args.rows} rows of example1, {args.epochs} epochs: Tune wall time vs sum(fold times)/{slots}",
        "unit": "s", "target": f"ratio <= {TARGET}", "target_max_ratio": TARGET,
        "figure": wall, "baseline": baseline, "ratio": wall / baseline, "meets_target": wall / baseline <= TARGET,
        "overhead_s": wall - baseline,
        "folds": args.folds, "parallel_slots": slots, "cluster_cpus": cpus,
        "fold_train_time_s": fold_times, "fold_epoch_time_s": epoch_times,
        "trials_running_at_once": max_overlap(spans),
        "ray_start_s": ray_start_s, "driver_prepare_s": prepare_s,
        "load_average": list(os.getloadavg()),
    }, args.out)


if __name__ == "__main__":
    main()
