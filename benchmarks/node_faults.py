"""A node lost mid-fold: the worker node of a two-node local cluster is killed while it trains a fold;
the fold finishes on the head from its last checkpoint, with the metrics of an uninterrupted run.

    python -m benchmarks.node_faults [--rows 3000] [--epochs 8] [--out FILE]

Two runs of experiments/smoke.yaml with 2 folds (one on each node, 1 CPU each) through
`orchestrator run --address` on the same cluster (benchmarks/local_cluster.py, loopback only): first
uninterrupted (the baseline), then with the worker node SIGKILLed (every Ray process on it, then its
`ray start` process group) once the fold it trains has registered a checkpoint. Reported: both wall times (figure = the interrupted run, baseline = the uninterrupted one,
ratio), the recovery time (kill -> the fold's first checkpoint after the restart, which waits for
the head's CPU to free up), the nodes each phase of the fold ran on, and the largest difference of any
per-epoch metric between the two runs (0 when the resumed fold trained exactly as the uninterrupted
one: the checkpoint holds the full training state, RNGs included).

Writes benchmarks/results/node_faults.json; exits 1 (after writing) if the fold did not finish on the
head or its metrics differ.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Optional

from benchmarks.common import ROOT, write_result
from benchmarks.local_cluster import LocalCluster, processes_under
from orchestrator.rundir import RunDir
from orchestrator.train.tune import TUNE_NAME

SMOKE = ROOT / "experiments" / "smoke.yaml"
COMPARED = ("train_loss", "val_loss", "val_macro_f1", "val_accuracy")


def epoch_rows(run_root: Path) -> dict[str, list[dict]]:
    """Per trial id, the epoch results Tune recorded (result.json rows that carry a node id)."""
    out = {}
    for path in RunDir(run_root).ray_run(TUNE_NAME).glob("*/result.json"):
        rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        if rows:
            out[rows[0]["trial_id"]] = [r for r in rows if "node_id" in r]
    return out


def checkpoint_metrics(run_root: Path) -> dict[str, dict]:
    """Per trial id, the metrics of its fold's latest registered checkpoint (Ray Train writes the
    snapshot right after registering one; each report names its node and the worker's start epoch)."""
    out = {}
    for path in RunDir(run_root).ray_storage.glob("trial_*/checkpoint_manager_snapshot.json"):
        try:
            latest = json.loads(path.read_text()).get("latest_checkpoint_result") or {}
        except (OSError, ValueError):  # being rewritten: read it at the next poll
            continue
        if latest.get("metrics"):
            out[path.parent.name.removeprefix("trial_")] = latest["metrics"]
    return out


class NodeKiller(threading.Thread):
    """Kills ``node_id`` (its Ray processes, then its `ray start` group ``proc``) once the fold it trains
    has registered a checkpoint; then waits for a checkpoint of that fold from a restarted worker."""

    def __init__(self, cluster: LocalCluster, node_id: str, proc: subprocess.Popen, run_root: Path, timeout: float):
        super().__init__(daemon=True)
        self.cluster, self.node_id, self.proc, self.run_root, self.timeout = cluster, node_id, proc, run_root, timeout
        self.trial_id: Optional[str] = None
        self.killed_at: Optional[float] = None
        self.epoch_at_kill: Optional[int] = None
        self.recovery_s: Optional[float] = None
        self.error: Optional[str] = "the driver ended before the fold on the worker node was killed and resumed"
        self.stop = threading.Event()

    def run(self) -> None:
        try:
            deadline = time.monotonic() + self.timeout
            while time.monotonic() < deadline and not self.stop.is_set():
                for trial_id, metrics in checkpoint_metrics(self.run_root).items():
                    if self.killed_at is None and metrics.get("node_id") == self.node_id:
                        self.trial_id, self.epoch_at_kill = trial_id, metrics["epoch"]
                        self.kill()
                    elif trial_id == self.trial_id and metrics.get("start_epoch", 0) > 0:
                        self.recovery_s, self.error = time.monotonic() - self.killed_at, None
                        return
                time.sleep(0.05)
        except Exception as exc:  # reported by the caller, not lost in the thread
            self.error = repr(exc)

    def kill(self) -> None:
        from ray.util.state import list_actors

        on_node = list_actors(address=self.cluster.dashboard, filters=[("node_id", "=", self.node_id), ("state", "=", "ALIVE")],
                              raise_on_missing_output=False)
        for pid in {a.pid for a in on_node if a.pid}:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.killed_at = time.monotonic()


def run_smoke(cluster: LocalCluster, runs_dir: Path, name: str, rows: int, epochs: int, timeout: float,
              killer: Optional[NodeKiller] = None) -> dict:
    """`orchestrator run` of the 2-fold smoke experiment on ``cluster``: wall seconds, exit code, the
    fold histories and where each trial's epochs ran."""
    log = runs_dir / f"{name}.log"
    env = {k: v for k, v in cluster.env.items() if k != "RAY_API_SERVER_ADDRESS"}
    args = ["--set", f"name={name}", "--set", f"runs_dir={runs_dir}", "--set", "cv.folds=2", "--set", f"train.epochs={epochs}",
            "--set", "train.early_stopping_patience=null", "--set", f"data.max_rows={rows}"]
    started = time.monotonic()
    with open(log, "wb") as out:
        driver = subprocess.Popen([sys.executable, "-m", "orchestrator", "run", str(SMOKE), "--address", cluster.address,
                                   "--overwrite", *args],
                                  cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    if killer is not None:
        killer.start()
    try:
        code = driver.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(driver.pid, signal.SIGKILL)
        code = "timeout"
    root = runs_dir / name
    histories = {}
    for fold in range(2):
        path = RunDir(root).fold_dir(fold) / "history.json"
        histories[fold] = json.loads(path.read_text())["history"] if path.is_file() else []
    return {"code": code, "wall_s": time.monotonic() - started, "histories": histories, "epochs": epoch_rows(root),
            "log_tail": log.read_text(errors="replace")[-2000:] if code != 0 else ""}


def max_metric_diff(a: dict[int, list[dict]], b: dict[int, list[dict]]) -> float:
    """Largest |difference| of any compared metric at any epoch of any fold (inf if the epochs differ)."""
    worst = 0.0
    for fold in a:
        if [h["epoch"] for h in a[fold]] != [h["epoch"] for h in b.get(fold, [])]:
            return float("inf")
        for x, y in zip(a[fold], b[fold]):
            worst = max([worst, *(abs(x[k] - y[k]) for k in COMPARED)])
    return worst


def measure(runs_dir: Path, rows: int = 3000, epochs: int = 8, timeout: float = 600) -> dict:
    """Both runs on a fresh two-node cluster; the figures of the module docstring."""
    runs_dir.mkdir(parents=True, exist_ok=True)
    cluster = LocalCluster(cpus_per_node=1, nodes=2)
    try:
        nodes = cluster.start()
        head = next(n.node_id for n in nodes if n.is_head_node)
        worker = next(n.node_id for n in nodes if not n.is_head_node)
        clean = run_smoke(cluster, runs_dir, "uninterrupted", rows, epochs, timeout)
        killer = NodeKiller(cluster, worker, cluster.procs[-1], runs_dir / "node_kill", timeout)
        killed = run_smoke(cluster, runs_dir, "node_kill", rows, epochs, timeout, killer)
        killer.stop.set()
        killer.join(timeout=10)
    finally:
        cluster.stop()
    name = {head: "head", worker: "worker"}
    trial = killed["epochs"].get(killer.trial_id, [])
    before = sorted({r["node_id"] for r in trial if r["start_epoch"] == 0})
    after = sorted({r["node_id"] for r in trial if r["start_epoch"] > 0})
    resumed_at = min((r["start_epoch"] for r in trial if r["start_epoch"] > 0), default=None)
    diff = max_metric_diff(clean["histories"], killed["histories"])
    return {
        "what": f"smoke TextCNN, 2 folds x {epochs} epochs on {rows} rows, two 1-CPU nodes on one host; the worker node "
                "SIGKILLed once its fold registered a checkpoint",
        "unit": "s", "figure": killed["wall_s"], "baseline": clean["wall_s"], "ratio": killed["wall_s"] / clean["wall_s"],
        "exit_codes": {"uninterrupted": clean["code"], "node_kill": killed["code"]},
        "killer_error": killer.error, "epoch_at_kill": killer.epoch_at_kill, "resumed_from_epoch": resumed_at,
        "recovery_s": killer.recovery_s,
        "fold_nodes": {"before_kill": [name[n] for n in before], "after_kill": [name[n] for n in after]},
        "uninterrupted_nodes": sorted(sorted({name[r["node_id"]] for r in rows}) for rows in clean["epochs"].values()),
        "processes_left": len(processes_under(cluster.temp_dir)),
        "max_metric_diff": diff, "compared": list(COMPARED),
        "finished_on_head": after == [head] and killed["code"] == 0,
        "log_tails": {k: r["log_tail"] for k, r in (("uninterrupted", clean), ("node_kill", killed)) if r["log_tail"]},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=3000)
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--runs-dir", default=str(ROOT / "runs" / "benchmarks" / "node_faults"))
    parser.add_argument("--out")
    args = parser.parse_args()
    result = measure(Path(args.runs_dir), args.rows, args.epochs)
    write_result("node_faults", result, args.out)
    sys.exit(0 if result["finished_on_head"] and result["max_metric_diff"] <= 1e-5 else 1)


if __name__ == "__main__":
    main()
