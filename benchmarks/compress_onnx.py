"""Throughput of one fold model: torch eager vs ONNX Runtime fp32 vs int8, at batch 1 and 32.

    python -m benchmarks.compress_onnx runs/NAME/folds/0/model [--texts FILE] [--n 256] [--threads 1] [--out FILE]

Texts come from ``--texts`` (JSONL with a "text" field, or one text per line), by default the
run's ``data/test.jsonl``, cycled or cut to ``--n``. Tokenization is done once and not timed.
Writes JSON: per comparison ``{figure, baseline, ratio}`` (texts/s, ratio = figure / baseline; file
bytes for the int8-vs-fp32 size) and the export's parity dict.
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Callable, Optional, Sequence

import torch

from trainables.export import INT8_FILE, ONNX_FILE, export_model_dir, onnx_logits, onnx_session
from trainables.inference import predict_logits
from trainables.models import load_model_dir


def load_texts(path: Path, n: int) -> list[str]:
    lines = [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    texts = [json.loads(line)["text"] for line in lines] if path.suffix == ".jsonl" else lines
    if not texts:
        raise SystemExit(f"--texts: {path} has no texts")
    return (texts * (n // len(texts) + 1))[:n]


def texts_per_second(run: Callable[[], object], n: int, repeat: int) -> float:
    """Best of ``repeat`` timed passes after one warm-up: on shared CPUs the minimum is the stable
    figure, the mean mostly measures the neighbours."""
    run()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return n / min(times)


def comparison(figure: float, baseline: float) -> dict:
    return {"figure": figure, "baseline": baseline, "ratio": figure / baseline}


def main(argv: Optional[Sequence[str]] = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model_dir", type=Path)
    parser.add_argument("--texts", type=Path, help="default: the run's data/test.jsonl")
    parser.add_argument("--n", type=int, default=256, help="texts per timed pass")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 32])
    parser.add_argument("--threads", type=int, default=1, help="torch and ONNX Runtime intra-op threads")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--out", type=Path, help="write the JSON here too")
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    model, encoder, _ = load_model_dir(args.model_dir)
    ids = encoder.encode(load_texts(args.texts or args.model_dir.parents[2] / "data" / "test.jsonl", args.n))
    with tempfile.TemporaryDirectory() as tmp:
        parity = export_model_dir(args.model_dir, tmp, ids, int8=True)
        files = {"onnx_fp32": Path(tmp) / ONNX_FILE, "onnx_int8": Path(tmp) / INT8_FILE}
        sessions = {name: onnx_session(path, args.threads) for name, path in files.items()}
        sizes = {name: path.stat().st_size for name, path in files.items()}
        rates = {}
        for batch_size in args.batch_sizes:
            rates["torch", batch_size] = texts_per_second(
                lambda: predict_logits(model, ids, encoder.pad_id, batch_size), len(ids), args.repeat)
            for name, session in sessions.items():
                rates[name, batch_size] = texts_per_second(
                    lambda: onnx_logits(session, ids, encoder.pad_id, batch_size), len(ids), args.repeat)

    comparisons = {f"{name}_vs_torch_batch{b}": comparison(rates[name, b], rates["torch", b])
                   for name in sessions for b in args.batch_sizes}
    comparisons["int8_vs_fp32_file_bytes"] = comparison(sizes["onnx_int8"], sizes["onnx_fp32"])
    result = {"model_dir": str(args.model_dir), "texts": len(ids), "threads": args.threads, "unit": "texts/s",
              "comparisons": comparisons, "parity": parity}
    text = json.dumps(result, indent=2)
    if args.out:
        args.out.write_text(text + "\n")
    print(text)
    return result


if __name__ == "__main__":
    main()
