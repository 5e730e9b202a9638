"""Run every benchmark in benchmarks/, collect benchmarks/results.json, write docs/benchmarks.md.

    python -m benchmarks.run_all [--only NAME ...] [--run runs/example2] [--timeout 1800] [--collect]

Each script runs in its own process with the bounded invocation of ``BENCHMARKS`` (a script found
in benchmarks/ but not listed there runs with its own defaults) and writes
benchmarks/results/<name>.json. The Markdown table shows every benchmark's latest result file, so
``--only`` refreshes some rows and keeps the others; a benchmark without a result is "not run",
with the reason (script missing, no run directory, failed). Below the table, each result's own detail
table, then benchmarks/notes/<name>.md: the hand-written analysis, which a rewrite keeps.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from benchmarks.common import RESULTS, ROOT, machine

DOC = ROOT / "docs" / "benchmarks.md"
COLLECTED = ROOT / "benchmarks" / "results.json"
NOTES = ROOT / "benchmarks" / "notes"  # hand-written analysis of a result, <name>.md: kept under its section
NOT_BENCHMARKS = {"__init__", "common", "run_all", "local_cluster"}


@dataclass(frozen=True)
class Benchmark:
    args: tuple[str, ...] = ()   # "{run}" becomes the --run directory, "{out}" benchmarks/results/<name>.json
    unit: str = ""               # these two are shown when the result declares no unit / target_ratio
    target: str = ""
    needs_run: bool = False      # its args name a trained run directory


BENCHMARKS: dict[str, Benchmark] = {
    # MiniLM on tweet_eval, 5 seeds x (random, bucketed) on 1,000 rows: about 8.5 minutes on a quiet 2-core machine
    "train_throughput": Benchmark(("--rows", "1000", "--val-rows", "1000", "--epochs", "2", "--seeds", "5"), "samples/s",
                                  "ratio ≥ 1.4, F1 no worse"),
    "tricks_ablation": Benchmark(("--epochs", "3", "--rows", "4000"), "macro-F1", "best trick ≥ plain"),
    # MiniLM on tweet_eval's CV pool: 17 variants x 3 folds, two trainings at once: about 60 minutes
    "transformer_tricks": Benchmark(("--folds", "3", "--workers", "2"), "macro-F1", "which tricks beat plain on OOF"),
    # the tweet_emotion_cv recipe (5 folds, selection, distilled student) against a plain fine-tune: about 25 minutes
    "quality": Benchmark((), "macro-F1", "ensemble ≥ peer + 0.02 (paired CI > 0); student ≥ peer + 0.01"),
    # each of the run's ensemble, ONNX and student served in turn; ~13 texts/s for a 5-MiniLM ensemble on
    # 2 cores: 600 requests stay inside the 110 s --deadline (about 3 minutes for the three)
    "serve_load": Benchmark(("{run}", "--requests", "600", "--concurrency", "16"), "texts/s",
                            "ratio ≥ 0.9 and mean executed batch ≥ 8 (16 clients)", needs_run=True),
    # one replica of 2 killed under 5 requests/s, then a 5-minute soak: about 6.5 minutes
    "serve_faults": Benchmark(("{run}", "--rate", "5", "--kill-s", "30", "--soak-s", "300"), "s",
                              "no request past its timeout; p99 and replica RSS ratios ≈ 1", needs_run=True),
    # two 1-CPU nodes on this host, 2 smoke folds x 8 epochs on 3,000 rows, run twice (once with the worker node killed): ~4 minutes
    "node_faults": Benchmark(("--rows", "3000", "--epochs", "8"), "s", "the fold finishes on the head; metrics equal the uninterrupted run's"),
    # 12 configs x 5 folds of example1's TextCNN (2 epochs), with and without racing: about 42 minutes
    "cv_racing": Benchmark((), "s", "ratio ≤ 0.5; racing's choice within 1 SE of the full search's best"),
    "cv_overhead": Benchmark(("--folds", "4", "--rows", "2000", "--epochs", "6"), "s", "ratio ≤ 1.15"),
    # the smoke TextCNN on 100k, 1M and 3M generated rows, in memory and streamed through Ray Data: about 25 minutes
    "data_scale": Benchmark((), "MB",
                            "streamed driver RSS ≤ 1.2x from 100k to 3M; streamed throughput at 1M ≥ 0.8x in memory; "
                            "streamed machine peak grows ≤ the object store budget"),
    # ONNX fp32/int8, distilled TextCNN, vocabulary and transformer pruning; each comparison names its
    # own unit and target. About 10 minutes on a quiet 2-core machine.
    "compress": Benchmark(("--run", "{run}", "--n", "256", "--threads", "1", "--student-epochs", "20",
                           "--example1-rows", "3000", "--example1-epochs", "1"), "texts/s", needs_run=True),
}


def discover() -> list[str]:
    """Listed benchmarks first (table order), then any other script in benchmarks/."""
    found = sorted(p.stem for p in (ROOT / "benchmarks").glob("*.py") if p.stem not in NOT_BENCHMARKS)
    return list(BENCHMARKS) + [name for name in found if name not in BENCHMARKS]


def result_path(name: str) -> Path:
    return RESULTS / f"{name}.json"


def shown(path: Path) -> str:
    """A path as the docs show it: relative to the repository when inside it."""
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def skip_reason(name: str, bench: Benchmark, run: Path) -> Optional[str]:
    if not (ROOT / "benchmarks" / f"{name}.py").is_file():
        return "script not written yet"
    if bench.needs_run and not (run / "manifest.json").is_file():
        return f"no run directory at {shown(run)} (train one, or pass --run)"
    return None


def run_one(name: str, bench: Benchmark, run: Path, timeout: int) -> dict:
    """Run the script; return a status record (result file is read afterwards)."""
    args = [a.format(run=run, out=result_path(name)) for a in bench.args]
    command = [sys.executable, "-m", f"benchmarks.{name}", *args]
    print(f"== {name}: {' '.join(command[1:])}", flush=True)
    started = time.perf_counter()
    try:
        done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"status": "failed", "reason": f"timed out after {timeout} s"}
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or [""]
        return {"status": "failed", "reason": f"exit {done.returncode}: {tail[0][:200]}", "seconds": seconds}
    if not result_path(name).is_file():
        return {"status": "failed", "reason": f"exited 0 but wrote no {shown(result_path(name))}", "seconds": seconds}
    stamp_result(name)
    return {"status": "ran", "seconds": seconds}


def stamp_result(name: str) -> None:
    """Add machine and date to a result written without them (it was produced just now, here)."""
    path = result_path(name)
    result = json.loads(path.read_text())
    if "machine" not in result or "date" not in result:
        result = {"benchmark": name, "date": time.strftime("%Y-%m-%d %H:%M:%S"), "machine": machine(), **result}
        path.write_text(json.dumps(result, indent=2) + "\n")


def comparisons(result: dict) -> dict[str, dict]:
    """{label: {figure, baseline, ratio}}: one for a single-figure result, several for ``comparisons``
    (each may also name its ``unit`` and ``target``, shown instead of the result's)."""
    if "comparisons" in result:
        return result["comparisons"]
    return {"": {k: result[k] for k in ("figure", "baseline", "ratio")}}


def machine_text(m: dict) -> str:
    return f"{m.get('cpu', '?')}, {m.get('cores', '?')} cores{', CUDA' if m.get('cuda') else ''}" if m else "?"


def number(value: float) -> str:
    return f"{value:,.4g}" if abs(value) < 1000 else f"{value:,.0f}"


def markdown(collected: dict[str, dict]) -> str:
    lines = ["# Benchmarks", "",
             "Written by `python -m benchmarks.run_all` (bounded invocations: `BENCHMARKS` in benchmarks/run_all.py).",
             "Each figure is compared with a baseline measured in the same run on the same machine; ratio = figure / baseline.",
             "", "| benchmark | what | figure | baseline | ratio | target | machine | date |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for name, entry in collected.items():
        result = entry.get("result")
        if result is None:
            lines.append(f"| {name} | {'failed' if entry.get('status') == 'failed' else 'not run'}: {entry['reason']} | | | | | | |")
            continue
        bench = BENCHMARKS.get(name, Benchmark())
        target = f"ratio ≥ {result['target_ratio']}" if "target_ratio" in result else bench.target
        what = result.get("what") or result.get("model_dir", "")
        for row, (label, c) in enumerate(comparisons(result).items()):
            unit = c.get("unit") or ("bytes" if "bytes" in label else result.get("unit", bench.unit))
            unit = f" {unit}" if unit else ""
            lines.append(f"| {name}{f' `{label}`' if label else ''} | {what if row == 0 else '(same run)'} | {number(c['figure'])}{unit} | "
                         f"{number(c['baseline'])}{unit} | {c['ratio']:.3f} | {c.get('target', target)} | "
                         f"{machine_text(result.get('machine', {}))} | {result.get('date', '?')} |")
        if entry.get("status") == "failed":
            lines.append(f"| {name} | latest attempt failed: {entry['reason']} | | | | | | |")
    for name, entry in collected.items():  # a result's own detail table (e.g. every trick), then its notes, below
        table, notes = entry.get("result", {}).get("table"), NOTES / f"{name}.md"
        notes = notes.read_text().strip("\n").split("\n") if notes.is_file() else []
        if table:
            lines += ["", f"## {name}", "", entry["result"].get("what", ""), "", *table] + (["", *notes] if notes else [])
        elif notes:
            lines += ["", f"## {name}", "", *notes]
    return "\n".join(lines) + "\n"


def collect(names: list[str], statuses: dict[str, dict], run: Path) -> dict[str, dict]:
    """Per benchmark: this invocation's status, and its latest result file if any."""
    collected = {}
    for name in names:
        entry = dict(statuses.get(name, {}))
        if result_path(name).is_file():
            entry["result"] = json.loads(result_path(name).read_text())
        elif "reason" not in entry:
            entry["reason"] = skip_reason(name, BENCHMARKS.get(name, Benchmark()), run) or "not selected (--only)"
        collected[name] = entry
    return collected


def main(argv: Optional[list[str]] = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="+", metavar="NAME", help="run these benchmarks; the others keep their latest result")
    parser.add_argument("--run", type=Path, default=ROOT / "runs" / "example2", help="trained run for benchmarks that need one")
    parser.add_argument("--timeout", type=int, default=1800, help="seconds per benchmark")
    parser.add_argument("--collect", action="store_true", help="run nothing: rebuild results.json and the doc from the result files")
    args = parser.parse_args(argv)
    names = discover()
    unknown = set(args.only or ()) - set(names)
    if unknown:
        parser.error(f"--only: unknown benchmark(s) {sorted(unknown)}; known: {names}")
    RESULTS.mkdir(parents=True, exist_ok=True)  # scripts given --out expect its folder
    run, statuses = args.run.resolve(), {}
    for name in () if args.collect else args.only or names:
        bench = BENCHMARKS.get(name, Benchmark())
        reason = skip_reason(name, bench, run)
        statuses[name] = {"status": "not run", "reason": reason} if reason else run_one(name, bench, run, args.timeout)
        print(f"   {name}: {statuses[name]['status']}" + (f": {statuses[name]['reason']}" if "reason" in statuses[name] else ""),
              flush=True)
    collected = collect(names, statuses, run)
    COLLECTED.write_text(json.dumps(collected, indent=2) + "\n")
    DOC.write_text(markdown(collected))
    print(f"wrote {shown(COLLECTED)} and {shown(DOC)}")
    return collected


if __name__ == "__main__":
    main()
