#!/usr/bin/env bash
# The GPU path, in one bounded script for a machine with CUDA (the `device` tool's, or any):
#   1. the `gpu`-marked tests: fp16 with GradScaler and bf16 training, EMA/SWA on the device, CUDA vs CPU
#      logits, a Serve replica that reserves a GPU (tests/test_gpu.py);
#   2. example2 on the GPU (train.use_gpu=yes, amp auto = fp16): training samples/s per fold and test
#      macro-F1, to set against the CPU figures in the README (0.985; ~40-60 samples/s);
#   3. the serve_load table for that run with a GPU replica (serve.gpus_per_replica=1).
# Everything it measures goes to ${OUT:-benchmarks/results/gpu}: gpu_check.json, the logs, nvidia-smi.
#
#     OUT=/tmp/gpu bash benchmarks/gpu_check.sh        # about 6-8 minutes on one H200
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-benchmarks/results/gpu}
mkdir -p "$OUT"
PY=${PYTHON:-python}
nvidia-smi > "$OUT/nvidia-smi.txt" 2>&1 || echo "nvidia-smi not found" > "$OUT/nvidia-smi.txt"
"$PY" -c "import torch, sys; print(torch.__version__, torch.version.cuda, torch.cuda.get_device_name(0)); sys.exit(0 if torch.cuda.is_available() else 1)" \
    > "$OUT/torch.txt" 2>&1 || { echo "no CUDA in $PY: see $OUT/torch.txt" >&2; exit 1; }

timeout 240 "$PY" -m pytest -q -m gpu tests/test_gpu.py -rs > "$OUT/tests.log" 2>&1
tests=$?

RUNS=$(mktemp -d)
timeout 300 "$PY" -m orchestrator run experiments/example2.yaml --verbose --set name=example2_gpu --set "runs_dir=$RUNS" \
    --set train.use_gpu=yes --set train.torch_threads=4 --set train.cpus_per_worker=4 --set cv.parallel=1 \
    > "$OUT/example2.log" 2>&1
example2=$?

serve=skipped
if [ "$example2" -eq 0 ]; then
    timeout 180 "$PY" -m benchmarks.serve_load "$RUNS/example2_gpu" --requests 600 --concurrency 16 --gpus-per-replica 1 \
        --out "$OUT/serve_load.json" > "$OUT/serve_load.log" 2>&1
    serve=$?
fi

"$PY" - "$RUNS/example2_gpu" "$OUT" "$tests" "$example2" "$serve" <<'EOF'
import json, sys
from pathlib import Path
root, out, tests, example2, serve = Path(sys.argv[1]), Path(sys.argv[2]), *sys.argv[3:]
result = {"tests_exit": int(tests), "example2_exit": int(example2), "serve_load_exit": serve,
          "device": (out / "torch.txt").read_text().strip()}
manifest = root / "manifest.json"
if manifest.is_file():
    result["example2_metrics"] = json.loads(manifest.read_text()).get("metrics", {})
    rates = []
    for history in sorted(root.glob("folds/*/history.json")):
        rows = json.loads(history.read_text())["history"]
        rates += [r["train_samples_per_s"] for r in rows if "train_samples_per_s" in r]
    result["train_samples_per_s"] = {"per_epoch": rates, "mean": sum(rates) / len(rates) if rates else None}
(out / "gpu_check.json").write_text(json.dumps(result, indent=2) + "\n")
print(json.dumps(result, indent=2))
EOF
