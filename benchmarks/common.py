"""Shared benchmark (and test) plumbing: machine description, the JSON result file, a free port."""
from __future__ import annotations

import json
import os
import platform
import socket
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"


def machine() -> dict[str, Any]:
    import torch

    return {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
            "torch_threads": torch.get_num_threads(), "cuda": torch.cuda.is_available(),
            "python": platform.python_version(), "torch": torch.__version__}


def write_result(name: str, result: dict[str, Any], out: str | None = None) -> Path:
    """Write benchmarks/results/<name>.json (or ``out``) with machine and date, print it, return the path."""
    path = Path(out) if out else RESULTS / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"benchmark": name, "date": time.strftime("%Y-%m-%d %H:%M:%S"), "machine": machine(), **result}
    path.write_text(json.dumps(payload, indent=2) + "\n")
    print(json.dumps(payload, indent=2))
    return path


def free_port(host: str = "127.0.0.1") -> int:
    """A port nothing listens on now (another process may still take it before it is used)."""
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def tweet_quality_config(**overrides):
    """experiments/tweet_emotion_cv.yaml on tweet_eval train+validation as one file, of which a
    stratified 25% is held out as the test split (``data.test_fraction``) and the rest is the CV pool:
    the data of benchmarks/quality.py and benchmarks/transformer_tricks.py."""
    from orchestrator.config import load_config, with_overrides

    source = ROOT / "data" / "tweet_eval_emotion"
    pooled = ROOT / "runs" / "benchmarks" / "tweet_eval_emotion_train_validation.json"
    if not pooled.exists():
        rows = [row for name in ("train.json", "validation.json") for row in json.loads((source / name).read_text())]
        pooled.parent.mkdir(parents=True, exist_ok=True)
        tmp = pooled.with_suffix(".tmp")
        tmp.write_text(json.dumps(rows))
        os.replace(tmp, pooled)
    base = load_config(ROOT / "experiments" / "tweet_emotion_cv.yaml")
    return with_overrides(base, {"data.train": str(pooled), "data.val": None, "data.test_fraction": 0.25, **overrides})


def paired_bootstrap(gold, pred, base_pred, n_resamples: int = 1000, seed: int = 0) -> dict[str, float]:
    """Macro-F1 of ``pred`` and ``base_pred`` on ``gold``, and the paired bootstrap 95% interval
    (percentile, scipy.stats.bootstrap, rows resampled together) of each and of their difference."""
    import numpy as np
    from scipy.stats import bootstrap
    from sklearn.metrics import f1_score

    def f1(g, p):
        return f1_score(g, p, average="macro", zero_division=0)

    data = (np.asarray(gold), np.asarray(pred), np.asarray(base_pred))
    out = {"f1": f1(data[0], data[1]), "baseline_f1": f1(data[0], data[2])}
    out["diff"] = out["f1"] - out["baseline_f1"]
    for key, stat in (("f1", lambda g, p, b: f1(g, p)), ("diff", lambda g, p, b: f1(g, p) - f1(g, b))):
        ci = bootstrap(data, stat, paired=True, vectorized=False, n_resamples=n_resamples, method="percentile",
                       random_state=seed).confidence_interval
        out[f"{key}_lo"], out[f"{key}_hi"] = float(ci.low), float(ci.high)
    return out
