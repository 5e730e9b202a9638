"""How close a BERT-type encoder runs to this CPU's fp32 matrix-multiply peak.

An encoder's inference is nearly all matrix multiplies, so texts/s can never pass
``gemm peak FLOP/s / FLOPs per text``. ``compress`` reports this next to its ONNX-vs-torch figures:
when torch eager already runs near the peak, no fp32 runtime can be much faster than it.

    python -m benchmarks.roofline [--threads 1]    # the measured peaks only
"""
from __future__ import annotations

import argparse
import json
from collections.abc import Sequence

import numpy as np

# One FFN matrix multiply of MiniLM-L6 at batch 32 x 64 tokens: [2048, 384] x [384, 1536].
SHAPE = (2048, 384, 1536)


def gemm_gflops(threads: int = 1, shape: Sequence[int] = SHAPE, repeat: int = 20) -> dict[str, float]:
    """Best fp32 GFLOP/s of one [m, k] x [k, n] matrix multiply in torch and in ONNX Runtime (MLAS),
    timed in turns by ``compare.best_rates`` (one call "handles" its FLOPs)."""
    import onnxruntime as ort
    import torch
    from onnx import TensorProto, helper, numpy_helper

    from orchestrator.evaluate.measure import best_rates

    m, k, n = shape
    rng = np.random.default_rng(0)
    a = rng.standard_normal((m, k), dtype=np.float32)
    b = rng.standard_normal((k, n), dtype=np.float32)
    graph = helper.make_graph([helper.make_node("MatMul", ["a", "b"], ["c"])], "gemm",
                              [helper.make_tensor_value_info("a", TensorProto.FLOAT, [m, k])],
                              [helper.make_tensor_value_info("c", TensorProto.FLOAT, [m, n])],
                              initializer=[numpy_helper.from_array(b, "b")])
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    session = ort.InferenceSession(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString(),
                                   options, providers=["CPUExecutionProvider"])
    ta, tb = torch.from_numpy(a), torch.from_numpy(b)
    runs = {"torch": lambda: torch.matmul(ta, tb), "onnxruntime": lambda: session.run(None, {"a": a})}

    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        with torch.inference_mode():
            for run in runs.values():  # warm-up
                run()
            flops = best_rates(runs, 2 * m * k * n, repeat)
    finally:
        torch.set_num_threads(previous)
    return {name: f / 1e9 for name, f in flops.items()}


def encoder_flops(config: dict, lengths: Sequence[int]) -> float:
    """FLOPs of a BERT-type encoder over texts of these token lengths: every layer's Q, K, V, output
    and FFN projections, plus attention scores and their weighted sum (embeddings, norms, softmax
    and the classifier head are left out: under 1%)."""
    h, ffn, layers = config["hidden_size"], config["intermediate_size"], config["num_hidden_layers"]
    total = 0.0
    for t in lengths:
        projections = t * (4 * h * h + 2 * h * ffn)
        attention = 2 * t * t * h
        total += 2.0 * layers * (projections + attention)
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    print(json.dumps({"threads": args.threads, "shape": SHAPE, "gflops": gemm_gflops(args.threads)}, indent=2))


if __name__ == "__main__":
    main()
