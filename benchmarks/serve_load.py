"""Serving load: a fixed number of loopback requests at a fixed concurrency against a run's models deployed
on Ray Serve one after another, each compared with offline batched inference of the same model on the
same texts, in one run.

    python -m benchmarks.serve_load RUN [--models ensemble,onnx,student] [--requests 1000] [--concurrency 16]
                                        [--texts-per-request 1] [--texts FILE] [--chunk-size 8] [--ingress proxy]
                                        [--deadline 110] [--out FILE]

``--models`` names the run's models as ``orchestrator serve --model`` does (ensemble, onnx: the ensemble's
ONNX exports, int8 where the export stage vouched for it, student, pruned, fold:<k>; default: each of
ensemble, onnx, student and pruned the run has). Writes
benchmarks/results/serve_load.json: per model the served texts/s and the offline texts/s (1 thread, the
replica's), their ratio (target >= 0.9), the mean executed batch size (target >= 8 at 16 clients, from the
replica's /stats, warm-up excluded), p50/p99 request latency, requests/s, errors (must be 0) and label mismatches
(0; for int8 at most 2% of requests, since dynamic quantization depends on the batch); figure/baseline/ratio are the first model's. Nothing is sent after --deadline seconds of a
model's load; requests left unsent fail the run (exit 1, after the result is written).
"""
from __future__ import annotations

import argparse
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Optional

import numpy as np

from benchmarks.common import free_port, write_result
from orchestrator.rundir import RunDir, RunDirError
from orchestrator.serve.client import Client, ClientError
from orchestrator.config import ServeConfig
from orchestrator.evaluate.loading import load_model, served_model
from orchestrator.serve.deployment import REPLICA_CPUS, deploy, replica_device, shutdown

TARGET_RATIO, TARGET_MEAN_BATCH = 0.9, 8.0
ALLOWED_INT8_FLIPS = 0.02  # share of requests whose int8 labels may differ from the offline int8 run's


def load_texts(run: RunDir, path: Optional[str]) -> list[str]:
    """Lines of ``path``, else the texts of the run's saved test (or val) split."""
    if path:
        return [line for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]
    if not (run.has_split("test") or run.has_split("val")):
        raise SystemExit(f"{run.root}: no data/test.jsonl or data/val.jsonl; pass --texts FILE")
    return run.evaluation_split().texts


def offline_texts_per_s(run: RunDir, model: str, texts: list[str], batch_size: int, device: str = "cpu") -> tuple[float, list]:
    """The same model in this process, on the threads (or the device) a replica gets; (texts/s, labels)."""
    import torch

    torch.set_num_threads(REPLICA_CPUS)
    loaded = load_model(run, model, device=device, threads=REPLICA_CPUS)
    loaded.predict(texts[:batch_size], batch_size)  # warm-up
    start = time.perf_counter()
    labels = loaded.predict(texts, batch_size).labels
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


def run_models(run: RunDir) -> list[str]:
    """Which of ensemble, onnx, student and pruned the run can serve."""
    found = []
    for name in ("ensemble", "onnx", "student", "pruned"):
        try:
            found.append(served_model(run, name, onnx=name == "onnx"))
        except RunDirError:
            pass
    return list(dict.fromkeys(found))  # a run with only ONNX exports serves "onnx" for "ensemble" too


def mean_batch(before: dict[str, int], after: dict[str, int]) -> tuple[float, dict[str, int]]:
    """Mean executed batch size between two /stats readings, and the sizes' counts."""
    sizes = {n: c - before.get(n, 0) for n, c in after.items() if c - before.get(n, 0)}
    batches = sum(sizes.values())
    return (sum(int(n) * c for n, c in sizes.items()) / batches if batches else float("nan")), sizes


def measure_model(run: RunDir, model: str, cfg: ServeConfig, requests: list[list[str]], warmup: list[str],
                  concurrency: int, deadline_s: float) -> dict:
    """Offline baseline, then the model served under that load: one row of the table."""
    per = len(requests[0])
    flat = [t for r in requests for t in r]
    baseline, offline_labels = offline_texts_per_s(run, model, flat, cfg.max_batch_size, replica_device(cfg))
    url = deploy(run.root, cfg, model=model)
    client = Client(url, cfg.token)
    client.predict(warmup)
    before = client.stats()
    load = run_load(url, cfg.token, requests, concurrency, time.monotonic() + deadline_s)
    after = client.stats()
    batch, sizes = mean_batch(before["batch_sizes"], after["batch_sizes"])
    served = per * len(load["latencies"])
    expected = [offline_labels[i * per : (i + 1) * per] for i in range(len(requests))]
    latencies_ms = np.array(load["latencies"]) * 1000 if load["latencies"] else np.array([np.nan])
    figure = served / load["wall_s"]
    info = client.info()
    int8 = (info["onnx_precision"] or {}).get("precision") == "int8"
    return {
        "model": model, "backend": info["backend"] + (" int8" if int8 else ""), "texts_per_s": figure, "offline_texts_per_s": baseline,
        "ratio": figure / baseline, "requests_per_s": len(load["latencies"]) / load["wall_s"], "mean_batch": batch,
        "p50_ms": float(np.percentile(latencies_ms, 50)), "p99_ms": float(np.percentile(latencies_ms, 99)),
        "errors": len(load["errors"]), "first_errors": load["errors"][:5], "unsent": load["unsent"],
        "label_mismatches": sum(got is not None and got != want for got, want in zip(load["labels"], expected)),
        # dynamic int8 quantizes activations per batch, so a text near a class boundary may flip with the
        # batch it shares; fp32 models must agree exactly
        "allowed_mismatches": int(ALLOWED_INT8_FLIPS * len(requests)) if int8 else 0,
        "load_wall_s": load["wall_s"], "executed_batch_sizes": sizes,
        "model_busy": (after["busy_s"] - before["busy_s"]) / load["wall_s"],  # share of the load the replica's model ran
    }


def table(rows: list[dict]) -> list[str]:
    """The per-model table, as Markdown lines (docs/benchmarks.md)."""
    lines = ["| model | backend | served texts/s | offline texts/s | ratio | mean batch | model busy | requests/s | p50 ms | p99 ms |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['backend']} | {r['texts_per_s']:.1f} | {r['offline_texts_per_s']:.1f} | {r['ratio']:.3f} "
                     f"| {r['mean_batch']:.2f} | {r['model_busy']:.0%} | {r['requests_per_s']:.1f} | {r['p50_ms']:.0f} | {r['p99_ms']:.0f} |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", help="run directory")
    parser.add_argument("--models", help="comma-separated: ensemble, onnx, student, pruned, fold:<k> (default: each of "
                                         "ensemble, onnx, student and pruned the run has)")
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--texts-per-request", type=int, default=1)
    parser.add_argument("--texts", help="text file, one per line (default: the run's saved test split)")
    parser.add_argument("--max-batch-size", type=int, default=ServeConfig().max_batch_size)
    parser.add_argument("--chunk-size", type=int, default=ServeConfig().chunk_size, help="serve.chunk_size: most texts per forward pass")
    parser.add_argument("--deadline", type=float, default=110.0, help="seconds of a model's load (from its first request) after which nothing is sent")
    parser.add_argument("--gpus-per-replica", type=float, default=0.0, help="serve.gpus_per_replica (above 0: the replica "
                                                                            "and the offline baseline run the torch models on CUDA)")
    parser.add_argument("--address", help="Ray cluster address (default: start a local Ray)")
    parser.add_argument("--ingress", choices=["proxy", "haproxy"], default="proxy", help="serve.ingress: Ray Serve's proxy or HAProxy")
    parser.add_argument("--out")
    args = parser.parse_args()

    run = RunDir.open(args.run)
    models = [served_model(run, name) for name in args.models.split(",")] if args.models else run_models(run)
    pool = load_texts(run, args.texts)
    per = args.texts_per_request
    requests = [[pool[(i * per + j) % len(pool)] for j in range(per)] for i in range(args.requests)]

    from orchestrator.train.cluster import init_ray

    init_ray(args.address, args.ingress)
    cfg = ServeConfig(port=free_port(), max_batch_size=args.max_batch_size, chunk_size=args.chunk_size, ingress=args.ingress, token="bench", gpus_per_replica=args.gpus_per_replica)
    try:
        rows = [measure_model(run, model, cfg, requests, pool[: args.max_batch_size], args.concurrency, args.deadline)
                for model in models]
    finally:
        shutdown()
    for row in rows:
        row["targets_met"] = row["ratio"] >= TARGET_RATIO and row["mean_batch"] >= TARGET_MEAN_BATCH
    ok = all(not r["errors"] and not r["unsent"] and r["label_mismatches"] <= r["allowed_mismatches"] for r in rows)
    first = rows[0]
    # Ray Serve's high-throughput mode (HAProxy in front of replicas that take HTTP themselves): --ingress
    # haproxy, or a Ray started with its environment variables (docs/serving.md)
    ingress = "HAProxy" if os.environ.get("RAY_SERVE_ENABLE_HA_PROXY") == "1" else "Serve proxy"
    write_result("serve_load", {
        "what": f"{run.root.name} ({', '.join(models)}; {REPLICA_CPUS} CPU/replica; {ingress}): {args.requests} requests x {per} "
                f"text(s), concurrency {args.concurrency}, loopback HTTP; baseline = offline batched inference (batch "
                f"{args.max_batch_size}) of the same texts in this process",
        "figure": first["texts_per_s"], "baseline": first["offline_texts_per_s"], "ratio": first["ratio"],
        "target_ratio": TARGET_RATIO, "target_mean_batch": TARGET_MEAN_BATCH, "unit": "texts/s",
        "requests": args.requests, "concurrency": args.concurrency, "texts_per_request": per, "ingress": ingress,
        "models": rows, "ok": ok,
        "table": table(rows),
    }, args.out)
    if not ok:
        raise SystemExit("serve_load: " + "; ".join(f"{r['model']}: {r['errors']} errors, {r['unsent']} unsent, "
                                                    f"{r['label_mismatches']} label mismatches" for r in rows))


if __name__ == "__main__":
    main()
