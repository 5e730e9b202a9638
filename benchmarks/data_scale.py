"""Driver memory and wall time against the row count, in memory vs streamed through Ray Data.

    python -m benchmarks.data_scale [--rows 100000,1000000,3000000] [--paths memory,streaming]

For each row count, a Parquet file of that many rows is generated from data/example1 (Chinese
reviews, 2 classes; every text made unique by a number appended), and `orchestrator run` trains the
character TextCNN of experiments/smoke.yaml on it: 2 folds x 1 epoch, no test split, on a local Ray
whose object store is capped at ``--object-store-fraction`` of memory. Sampled every 0.25 s: the
driver's RSS (the `orchestrator run` process) and the machine's memory in use. Figure: streamed
driver peak RSS at the largest count; baseline: the same at the smallest count; ratio = their
quotient (target <= 1.2: flat in the row count). Also the throughput (rows / wall s) of both paths
at each count and their ratio (target at 1M: streaming >= 0.8x memory).

Writes benchmarks/results/data_scale.json.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

from benchmarks.common import ROOT, write_result

SMOKE = ROOT / "experiments" / "smoke.yaml"


def make_data(rows: int, folder: Path) -> Path:
    """``rows`` unique labelled texts as Parquet (example1's lines, each with its row number appended)."""
    import pyarrow as pa
    import pyarrow.csv as pa_csv
    import pyarrow.parquet as pq

    path = folder / f"rows_{rows}.parquet"
    if path.exists():
        return path
    seed = pa_csv.read_csv(ROOT / "data" / "example1" / "train.csv").to_pydict()
    texts, labels = seed["sentence"], seed["label"]
    n = len(texts)
    writer = None
    tmp = path.with_suffix(".tmp")
    for start in range(0, rows, 500_000):
        idx = range(start, min(rows, start + 500_000))
        table = pa.table({"sentence": [f"{texts[i % n]} {i}" for i in idx], "label": [labels[i % n] for i in idx]})
        writer = writer or pq.ParquetWriter(tmp, table.schema)
        writer.write_table(table, row_group_size=50_000)  # row groups: units a reader can split on
    writer.close()
    os.replace(tmp, path)
    return path


def rss_bytes(pid: int) -> int:
    """Resident set size of ``pid`` (Linux /proc), 0 once it is gone."""
    try:
        line = next(l for l in Path(f"/proc/{pid}/status").read_text().splitlines() if l.startswith("VmRSS:"))
    except (OSError, StopIteration):
        return 0
    return int(line.split()[1]) * 1024


def used_bytes() -> int:
    """Memory in use on the machine: MemTotal - MemAvailable (Linux /proc/meminfo)."""
    info = {l.split(":")[0]: int(l.split()[1]) * 1024 for l in Path("/proc/meminfo").read_text().splitlines()}
    return info["MemTotal"] - info["MemAvailable"]


class Sampler(threading.Thread):
    """Peak RSS of one process and peak memory in use on the machine, every ``interval`` s."""

    def __init__(self, pid: int, interval: float = 0.25):
        super().__init__(daemon=True)
        self.pid, self.interval, self.stop = pid, interval, threading.Event()
        self.rss = self.used = 0

    def run(self) -> None:
        while not self.stop.is_set():
            self.rss, self.used = max(self.rss, rss_bytes(self.pid)), max(self.used, used_bytes())
            time.sleep(self.interval)


def run_once(data: Path, path: str, runs_dir: Path, store_fraction: float, timeout: float) -> dict:
    """`orchestrator run` on ``data`` with data.streaming on (streaming) or off (memory)."""
    name = f"{path}_{data.stem}"
    args = [sys.executable, "-m", "orchestrator", "run", str(SMOKE), "--overwrite", "--quiet",
            "--set", f"name={name}", "--set", f"runs_dir={runs_dir}", "--set", f"data.train={data}", "--set", "data.val=null",
            "--set", "data.max_rows=null", "--set", "data.val_fraction=0.0", "--set", "cv.folds=2", "--set", "cv.parallel=2",
            "--set", "train.epochs=1", "--set", "train.batch_size=256", "--set", "train.early_stopping_patience=null",
            "--set", f"data.streaming={'on' if path == 'streaming' else 'off'}"]
    env = {**os.environ, "RAY_DEFAULT_OBJECT_STORE_MEMORY_PROPORTION": str(store_fraction)}
    idle = used_bytes()
    started = time.monotonic()
    log = runs_dir / f"{name}.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(args, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
        sampler = Sampler(proc.pid)
        sampler.start()
        try:
            code = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            code = "timeout"
        sampler.stop.set()
        sampler.join(5)
    wall = time.monotonic() - started
    return {"exit_code": code, "wall_s": round(wall, 1), "driver_peak_rss_mb": round(sampler.rss / 2**20),
            "machine_peak_used_mb": round(sampler.used / 2**20), "machine_idle_used_mb": round(idle / 2**20),
            "log_tail": log.read_text(errors="replace")[-1500:] if code != 0 else ""}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", default="100000,1000000,3000000")
    parser.add_argument("--paths", default="memory,streaming")
    parser.add_argument("--object-store-fraction", type=float, default=0.15)
    parser.add_argument("--runs-dir", default=str(ROOT / "runs" / "benchmarks" / "data_scale"))
    parser.add_argument("--timeout", type=float, default=3600)
    parser.add_argument("--out")
    args = parser.parse_args()
    runs_dir = Path(args.runs_dir)
    runs_dir.mkdir(parents=True, exist_ok=True)
    counts, paths = [int(r) for r in args.rows.split(",")], args.paths.split(",")
    results: dict[str, dict[str, dict]] = {p: {} for p in paths}
    for rows in counts:
        data = make_data(rows, runs_dir)
        for path in paths:
            results[path][str(rows)] = {**run_once(data, path, runs_dir, args.object_store_fraction, args.timeout), "rows": rows}
            results[path][str(rows)]["rows_per_s"] = round(rows / results[path][str(rows)]["wall_s"], 1)
            print(path, rows, {k: v for k, v in results[path][str(rows)].items() if k != "log_tail"}, flush=True)
    streamed = results.get("streaming", {})
    low, high = str(min(counts)), str(max(counts))
    out = {
        "what": "char TextCNN (experiments/smoke.yaml), 2 folds x 1 epoch, batch 256, on N unique rows of example1 as Parquet; "
                f"local Ray, object store {args.object_store_fraction:.0%} of memory",
        "unit": "MB driver peak RSS, streaming",
        "figure": streamed.get(high, {}).get("driver_peak_rss_mb"), "baseline": streamed.get(low, {}).get("driver_peak_rss_mb"),
        "runs": results,
    }
    if out["figure"] and out["baseline"]:
        out["ratio"] = round(out["figure"] / out["baseline"], 3)
    if "memory" in results and streamed:
        out["throughput_ratio_streaming_vs_memory"] = {
            r: round(streamed[r]["rows_per_s"] / results["memory"][r]["rows_per_s"], 3)
            for r in streamed if r in results["memory"] and results["memory"][r]["exit_code"] == 0 and streamed[r]["exit_code"] == 0}
    out["targets"] = targets(out, results, args.object_store_fraction)
    write_result("data_scale", out, args.out)


def targets(out: dict, results: dict, store_fraction: float) -> dict:
    """The issue's three targets, from the runs: streamed driver RSS flat (<= 1.2x from the smallest
    count to the largest), streamed throughput at 1M >= 0.8x in memory, and the streamed runs' peak
    machine memory growing by no more than the object store's budget."""
    streamed = {int(r): v for r, v in results.get("streaming", {}).items() if v["exit_code"] == 0}
    total = int(next(l for l in Path("/proc/meminfo").read_text().splitlines() if l.startswith("MemTotal:")).split()[1]) * 1024
    store_mb = round(store_fraction * total / 2**20)
    growth = streamed[max(streamed)]["machine_peak_used_mb"] - streamed[min(streamed)]["machine_peak_used_mb"] if streamed else None
    at_1m = out.get("throughput_ratio_streaming_vs_memory", {}).get("1000000")
    return {"driver_rss_ratio_at_most_1.2": out.get("ratio") is not None and out["ratio"] <= 1.2,
            "throughput_at_1M_at_least_0.8": at_1m is not None and at_1m >= 0.8,
            "object_store_budget_mb": store_mb, "streamed_machine_peak_growth_mb": growth,
            "machine_peak_growth_within_store_budget": growth is not None and growth <= store_mb}


if __name__ == "__main__":
    main()
