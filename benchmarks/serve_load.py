"""Serving load: a fixed number of loopback requests at a fixed concurrency against a run deployed on Ray
Serve, compared with offline batched inference of the same ensemble on the same texts, in one run.

    python -m benchmarks.serve_load RUN [--requests 1000] [--concurrency 16] [--texts-per-request 1]
                                        [--texts FILE] [--onnx] [--deadline 110] [--out FILE]

Writes benchmarks/results/serve_load.json: served texts/s (figure) and offline texts/s (baseline), their
ratio (target >= 0.7), p50/p99 request latency, errors (must be 0). Nothing is sent after --deadline
seconds of load; requests left unsent are reported and fail the run (exit 1, after the result is written).
"""
from __future__ import annotations

import argparse
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Optional

import numpy as np

from benchmarks.common import free_port, write_result
from orchestrator.rundir import RunDir
from orchestrator.serve.client import Client, ClientError
from orchestrator.config import ServeConfig
from orchestrator.evaluate.loading import choose_backend, load_ensemble
from orchestrator.serve.deployment import REPLICA_CPUS, deploy, shutdown


def load_texts(run: RunDir, path: Optional[str]) -> list[str]:
    """Lines of ``path``, else the texts of the run's saved test (or val) split."""
    if path:
        return [line for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]
    if not (run.has_split("test") or run.has_split("val")):
        raise SystemExit(f"{run.root}: no data/test.jsonl or data/val.jsonl; pass --texts FILE")
    return run.evaluation_split().texts


def offline_texts_per_s(run: RunDir, backend: str, texts: list[str], batch_size: int) -> tuple[float, list]:
    """The same ensemble in this process, on the threads a replica gets; (texts/s, labels)."""
    import torch

    torch.set_num_threads(REPLICA_CPUS)
    ensemble = load_ensemble(run, backend, threads=REPLICA_CPUS)
    ensemble.predict(texts[:batch_size], batch_size)  # warm-up
    start = time.perf_counter()
    labels = ensemble.predict(texts, batch_size).labels
    return len(texts) / (time.perf_counter() - start), labels


def run_load(url: str, token: Optional[str], requests: list[list[str]], concurrency: int, deadline: float) -> dict:
    """Send every request (one thread-local client per worker); latencies, errors, unsent, responses."""
    local = threading.local()
    latencies: list[Optional[float]] = [None] * len(requests)
    labels: list[Optional[list]] = [None] * len(requests)
    errors: list[str] = []

    def send(i: int) -> None:
        if time.monotonic() > deadline:
            return
        if not hasattr(local, "client"):
            local.client = Client(url, token, timeout=max(1.0, deadline - time.monotonic()))
        start = time.perf_counter()
        try:
            labels[i] = [p["labels"] for p in local.client.predict(requests[i])["predictions"]]
            latencies[i] = time.perf_counter() - start
        except ClientError as exc:
            errors.append(str(exc))

    start = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(send, range(len(requests))))
    wall = time.perf_counter() - start
    done = [x for x in latencies if x is not None]
    return {"wall_s": wall, "latencies": done, "labels": labels, "errors": errors,
            "unsent": len(requests) - len(done) - len(errors)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", help="run directory")
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--texts-per-request", type=int, default=1)
    parser.add_argument("--texts", help="text file, one per line (default: the run's saved test split)")
    parser.add_argument("--onnx", action="store_true", help="serve (and compare) the ONNX exports")
    parser.add_argument("--max-batch-size", type=int, default=ServeConfig().max_batch_size)
    parser.add_argument("--deadline", type=float, default=110.0, help="seconds of load (from the first request) after which nothing is sent")
    parser.add_argument("--address", help="Ray cluster address (default: start a local Ray)")
    parser.add_argument("--out")
    args = parser.parse_args()

    run = RunDir.open(args.run)
    backend = choose_backend(run, args.onnx)
    pool = load_texts(run, args.texts)
    per = args.texts_per_request
    requests = [[pool[(i * per + j) % len(pool)] for j in range(per)] for i in range(args.requests)]
    flat = [t for r in requests for t in r]
    baseline, offline_labels = offline_texts_per_s(run, backend, flat, args.max_batch_size)

    from orchestrator.train.cluster import init_ray

    init_ray(args.address)
    cfg = ServeConfig(port=free_port(), max_batch_size=args.max_batch_size, token="bench")
    try:
        url = deploy(run.root, cfg, onnx=args.onnx)
        Client(url, cfg.token).predict(pool[: args.max_batch_size])  # warm-up
        load = run_load(url, cfg.token, requests, args.concurrency, time.monotonic() + args.deadline)
        batches = Client(url, cfg.token).stats()["batch_sizes"]
    finally:
        shutdown()

    served_texts = per * len(load["latencies"])
    figure = served_texts / load["wall_s"]
    expected = [offline_labels[i * per : (i + 1) * per] for i in range(args.requests)]
    mismatches = sum(got is not None and got != want for got, want in zip(load["labels"], expected))
    latencies_ms = np.array(load["latencies"]) * 1000 if load["latencies"] else np.array([np.nan])
    write_result("serve_load", {
        "what": f"{run.root.name} ({backend}, {REPLICA_CPUS} CPU/replica): {args.requests} requests x {per} text(s), "
                f"concurrency {args.concurrency}, loopback HTTP; baseline = offline batched inference (batch "
                f"{args.max_batch_size}) of the same texts in this process",
        "figure": figure, "baseline": baseline, "ratio": figure / baseline, "target_ratio": 0.7, "unit": "texts/s",
        "p50_ms": float(np.percentile(latencies_ms, 50)), "p99_ms": float(np.percentile(latencies_ms, 99)),
        "errors": len(load["errors"]), "first_errors": load["errors"][:5], "unsent": load["unsent"],
        "label_mismatches": mismatches, "requests": args.requests, "concurrency": args.concurrency,
        "texts_per_request": per, "load_wall_s": load["wall_s"], "executed_batch_sizes": batches,
        "ok": not load["errors"] and not load["unsent"] and not mismatches,
    }, args.out)
    if load["errors"] or load["unsent"] or mismatches:
        raise SystemExit(f"serve_load: {len(load['errors'])} errors, {load['unsent']} unsent, {mismatches} label mismatches")


if __name__ == "__main__":
    main()
