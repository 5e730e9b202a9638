"""Faults under load, on loopback: a Serve replica killed while a fixed-rate load runs, then a soak.

    python -m benchmarks.serve_faults RUN [--rate 5] [--replicas 2] [--kill-s 30] [--soak-s 300]
                                          [--timeout 5] [--out FILE]

Both phases send single-text requests at ``--rate`` per second (bounded: rate x seconds requests,
each with a ``--timeout`` client timeout) to the run deployed on Ray Serve at 127.0.0.1.

- kill: one replica is SIGKILLed (``ray.kill``) a third of the way in. Reported: requests, errors
  (by kind), requests past the timeout (none may hang), the recovery time (from the kill to the
  first request after which every request succeeded) and p99 latency after the kill against the
  p99 before it (baseline, same run).
- soak: p50/p99 latency of the first and last minute (baseline and figure, ratio), errors, and
  every replica's resident memory at the start and the end (ratio; no growth beyond noise).

Writes benchmarks/results/serve_faults.json; exits 1 (after writing) if a request hung or the soak
had errors.
"""
from __future__ import annotations

import argparse
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Callable

import numpy as np
import requests

from benchmarks.common import free_port, write_result
from orchestrator.config import ServeConfig
from orchestrator.rundir import RunDir
from orchestrator.serve.deployment import deploy, shutdown


def fixed_rate(url: str, texts: list[str], rate: float, seconds: float, timeout: float,
               at: dict[float, Callable[[], object]] | None = None) -> list[dict]:
    """Send ``rate x seconds`` requests, one every 1/rate s; ``at`` starts callbacks (in threads of
    their own, so the schedule holds) at given offsets.
    Each row: sent (s from start), latency (s), status (HTTP code, or the error's kind)."""
    rows, lock, started = [], threading.Lock(), time.perf_counter()
    pending = dict(sorted((at or {}).items()))

    def one(i: int, sent: float) -> None:
        begin = time.perf_counter()
        try:
            status = requests.post(f"{url}/predict", json={"text": texts[i % len(texts)]}, timeout=timeout).status_code
        except requests.Timeout:
            status = "timeout"
        except requests.RequestException as exc:
            status = type(exc).__name__
        with lock:
            rows.append({"sent": sent, "latency": time.perf_counter() - begin, "status": status})

    with ThreadPoolExecutor(max_workers=max(8, int(rate * timeout) + 1)) as pool:
        for i in range(int(rate * seconds)):
            due = i / rate
            while pending and next(iter(pending)) <= due:
                threading.Thread(target=pending.pop(next(iter(pending)))).start()
            time.sleep(max(0.0, started + due - time.perf_counter()))
            pool.submit(one, i, time.perf_counter() - started)
    return sorted(rows, key=lambda r: r["sent"])


def replicas() -> list[dict]:
    """The live Serve replicas of the app: actor name, pid, resident memory (MiB)."""
    from ray.util.state import list_actors

    out = []
    for actor in list_actors(filters=[("state", "=", "ALIVE")], detail=True, limit=10_000):
        if actor.class_name.startswith("ServeReplica"):
            with open(f"/proc/{actor.pid}/status") as f:
                rss = next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))
            out.append({"name": actor.name, "pid": actor.pid, "rss_mib": rss / 1024})
    return out


def kill_one_replica(killed: list) -> None:
    import ray

    victim = replicas()[0]
    ray.kill(ray.get_actor(victim["name"], namespace="serve"), no_restart=False)
    killed.append({**victim, "at": time.perf_counter()})


def latency(rows: list[dict], q: float) -> float:
    ok = [r["latency"] for r in rows if r["status"] == 200]
    return float(np.quantile(ok, q)) if ok else float("nan")


def recovery_s(rows: list[dict], kill_at: float) -> float | None:
    """Seconds from the kill to the first request sent after the last failure that ended after the
    kill (every later request succeeded): 0 when none failed, None when the last one failed."""
    failures = [r["sent"] for r in rows if r["status"] != 200 and r["sent"] + r["latency"] >= kill_at]
    if not failures:
        return 0.0
    recovered = next((r["sent"] for r in rows if r["sent"] > max(failures)), None)
    return None if recovered is None else max(0.0, recovered - kill_at)


def kill_phase(url: str, texts: list[str], rate: float, seconds: float, timeout: float) -> dict:
    killed: list[dict] = []
    started = time.perf_counter()
    rows = fixed_rate(url, texts, rate, seconds, timeout, at={seconds / 3: lambda: kill_one_replica(killed)})
    kill_at = killed[0]["at"] - started
    before, after = [r for r in rows if r["sent"] < kill_at], [r for r in rows if r["sent"] >= kill_at]
    kinds: dict[str, int] = {}
    for r in rows:
        if r["status"] != 200:
            kinds[str(r["status"])] = kinds.get(str(r["status"]), 0) + 1
    return {"requests": len(rows), "errors": sum(kinds.values()), "error_kinds": kinds,
            "past_timeout": sum(r["latency"] > timeout + 1.0 for r in rows), "killed_replica": killed[0]["name"],
            "kill_at_s": kill_at, "recovery_s": recovery_s(rows, kill_at),
            "p99_before_s": latency(before, 0.99), "p99_after_s": latency(after, 0.99),
            "p99_after_vs_before": latency(after, 0.99) / latency(before, 0.99)}


def soak_phase(url: str, texts: list[str], rate: float, seconds: float, timeout: float) -> dict:
    memory_start = replicas()
    rows = fixed_rate(url, texts, rate, seconds, timeout)
    memory_end = replicas()
    window = min(60.0, seconds / 3)
    first, last = [r for r in rows if r["sent"] < window], [r for r in rows if r["sent"] >= seconds - window]
    start_mib, end_mib = sum(r["rss_mib"] for r in memory_start), sum(r["rss_mib"] for r in memory_end)
    return {"requests": len(rows), "seconds": seconds, "errors": sum(r["status"] != 200 for r in rows),
            "p50_s": latency(rows, 0.5), "p99_s": latency(rows, 0.99),
            "p99_first_window_s": latency(first, 0.99), "p99_last_window_s": latency(last, 0.99),
            "p99_last_vs_first": latency(last, 0.99) / latency(first, 0.99), "window_s": window,
            "replica_rss_mib_start": start_mib, "replica_rss_mib_end": end_mib, "rss_end_vs_start": end_mib / start_mib,
            "replicas_start": memory_start, "replicas_end": memory_end}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run")
    parser.add_argument("--rate", type=float, default=5.0)
    parser.add_argument("--replicas", type=int, default=2)
    parser.add_argument("--kill-s", type=float, default=30.0)
    parser.add_argument("--soak-s", type=float, default=300.0)
    parser.add_argument("--timeout", type=float, default=5.0)
    parser.add_argument("--out")
    args = parser.parse_args()

    from orchestrator.train.cluster import init_ray

    run = RunDir.open(args.run)
    texts = run.evaluation_split().texts
    init_ray()
    url = deploy(run.root, ServeConfig(port=free_port(), replicas=args.replicas))
    try:
        fixed_rate(url, texts, args.rate, 5, args.timeout)  # warm-up
        kill = kill_phase(url, texts, args.rate, args.kill_s, args.timeout)
        time.sleep(10)  # the replacement replica settles
        soak = soak_phase(url, texts, args.rate, args.soak_s, args.timeout)
    finally:
        shutdown()
    write_result("serve_faults", {
        "what": (f"{run.root.name} on Ray Serve, {args.replicas} replicas, {args.rate:g} single-text requests/s on "
                 f"loopback, client timeout {args.timeout:g} s: one replica killed {args.kill_s / 3:.0f} s into a "
                 f"{args.kill_s:g} s load; then a {args.soak_s:g} s soak"),
        "kill": kill, "soak": soak,
        "comparisons": {
            "kill_p99_after_vs_before": {
                "figure": kill["p99_after_s"], "baseline": kill["p99_before_s"], "ratio": kill["p99_after_vs_before"],
                "unit": "s", "target": f"none past the timeout (here {kill['past_timeout']}), {kill['errors']} error(s), "
                                      + (f"recovered in {kill['recovery_s']:.2f} s" if kill["recovery_s"] is not None else "not recovered"),
                "met": kill["past_timeout"] == 0},
            "soak_p99_last_vs_first_window": {
                "figure": soak["p99_last_window_s"], "baseline": soak["p99_first_window_s"], "ratio": soak["p99_last_vs_first"],
                "unit": "s", "target": f"no errors (here {soak['errors']}), p99 not growing", "met": soak["errors"] == 0},
            "soak_replica_rss_end_vs_start": {
                "figure": soak["replica_rss_mib_end"], "baseline": soak["replica_rss_mib_start"],
                "ratio": soak["rss_end_vs_start"], "unit": "MiB", "target": "ratio ≤ 1.05 (noise)",
                "met": soak["rss_end_vs_start"] <= 1.05},
        },
    }, args.out)
    if kill["past_timeout"] or soak["errors"]:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
