"""Measuring a model: the one definition of every figure a report shows.

- **metrics**: ``compute_metrics`` of the model's probabilities (an ensemble's combined as in
  orchestrator/evaluate/ensemble.py) on the run's evaluation split, batches of ``BATCH_SIZE``;
- **parameters**: of the torch model(s); an ONNX export has its torch model's count;
- **size_mb**: the weight files (model.pt, model.onnx or model.int8.onnx), in MiB;
- **texts_per_s**: batched inference (``BATCH_SIZE``) over ``SAMPLE_TEXTS`` texts cycled from the
  split, tokenization excluded, on ``THREADS`` thread(s), the fastest of ``TIMED_PASSES`` passes.

Each model directory is measured once per run and backend: its logits on the evaluation split and
its seconds per text go to ``run.measurements_dir``, keyed by the directory's files and the split. The
test report, the distill and prune reports, report.html and the terminal table all read them, so
they agree. An ensemble's figures come from its members: combined logits, summed parameters and
bytes, summed seconds per text (the members run one after the other).
"""
from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np
import torch

from orchestrator.data import label_array
from orchestrator.evaluate.ensemble import Ensemble, EnsembleBase, combine
from orchestrator.evaluate.onnx_ensemble import OnnxEnsemble
from orchestrator.rundir import RunDir, write_json
from trainables.atomic import atomic_save_npy
from trainables.export import INT8_FILE, ONNX_FILE
from trainables.metrics import compute_metrics
from trainables.models import HF_CONFIG_DIR, META_FILE, MODEL_FILE, count_parameters

BATCH_SIZE = 64     # the batch size test/serve use
SAMPLE_TEXTS = 256  # throughput sample: enough batches for a stable rate, bounded for big encoders
TIMED_PASSES = 3    # best of: on shared CPUs the fastest pass is the stable figure
THREADS = 1         # what one serve replica gets (serve/deployment.py REPLICA_CPUS): comparable in any process
WEIGHT_FILES = {"torch": MODEL_FILE, "onnx fp32": ONNX_FILE, "onnx int8": INT8_FILE}
DEFINITION = (f"size: weight files; texts/s: batch {BATCH_SIZE}, {THREADS} thread(s), fastest of {TIMED_PASSES} "
              f"passes over {SAMPLE_TEXTS} texts, tokenization excluded")


@dataclass(frozen=True)
class Artifact:
    """One scoreable model: ``dirs`` are model directories (torch) or export directories (ONNX);
    several directories are an ensemble, combined with ``weights`` (default: equal)."""

    name: str
    backend: str
    dirs: tuple[Path, ...]
    weights: Optional[tuple[float, ...]] = None

    def load_member(self, directory: Path) -> EnsembleBase:
        if self.backend == "torch":
            return Ensemble([directory])
        return OnnxEnsemble([directory], int8=self.backend == "onnx int8", threads=THREADS)


def ensemble_artifact(run: RunDir, name: str = "ensemble") -> Artifact:
    """The run's ensemble (its members and weights) in torch."""
    members = run.ensemble_members()
    return Artifact(name, "torch", tuple(m.model_dir for m in members), tuple(m.weight for m in members))


def digest(directories: Sequence[Path], *parts: str) -> str:
    """Hash of every file of the directories (names and bytes) and of ``parts``."""
    h = hashlib.sha256()
    for directory in directories:
        for path in sorted(p for p in Path(directory).rglob("*") if p.is_file()):
            with path.open("rb") as f:
                h.update(path.relative_to(directory).as_posix().encode() + hashlib.file_digest(f, "sha256").digest())
    for part in parts:
        h.update(b"\0" + part.encode())
    return h.hexdigest()[:20]


def best_rates(runs: dict[str, Callable[[], object]], n: int, passes: int = TIMED_PASSES) -> dict[str, float]:
    """texts/s of each callable (one call handles ``n`` texts): its fastest of ``passes`` calls. The
    calls are taken in turns (every callable's first pass, then every second pass, ...), so a change
    of load on a shared machine reaches all of them alike. The caller has warmed them up already."""
    if passes < 1:
        raise ValueError(f"passes: expected at least 1, got {passes}")
    best = dict.fromkeys(runs, float("inf"))
    for _ in range(passes):
        for name, run in runs.items():
            started = time.perf_counter()
            run()
            best[name] = min(best[name], time.perf_counter() - started)
    return {name: n / max(seconds, 1e-9) for name, seconds in best.items()}


def cycled(texts: list[str], n: int) -> list[str]:
    """``n`` texts: ``texts`` repeated as often as needed, then cut."""
    return (texts * (n // max(len(texts), 1) + 1))[:n]


def score(model: EnsembleBase, texts: list[str], gold: np.ndarray, batch_size: int = BATCH_SIZE) -> dict:
    """``compute_metrics`` of the model's (ensemble) predictions on ``texts``."""
    return compute_metrics(gold, model.predict_proba(texts, batch_size), model.multilabel, model.threshold)


def evaluation_data(run: RunDir) -> tuple[list[str], np.ndarray]:
    """Texts and gold labels (``label_array``) of the run's evaluation split."""
    split, data = run.evaluation_split(), run.stage("data")
    return split.texts, label_array(split.labels, len(data["classes"]), data["multilabel"])


def _timed(model: EnsembleBase, texts: list[str]) -> float:
    """Seconds per text of ``model`` on ``texts`` (the definition in the module docstring)."""
    ids = model.encode(cycled(texts, SAMPLE_TEXTS))
    before = torch.get_num_threads()
    torch.set_num_threads(THREADS)
    try:
        rate = best_rates({"": lambda: model.fold_logits(ids, BATCH_SIZE)}, len(ids))[""]
    finally:
        torch.set_num_threads(before)
    return 1.0 / rate


def _member(run: RunDir, artifact: Artifact, directory: Path) -> tuple[np.ndarray, dict]:
    """([N, C] logits on the evaluation split, {parameters, bytes, seconds_per_text, device}) of one
    model directory: measured here the first time, read from ``run.measurements_dir`` after."""
    split = run.evaluation_split()
    key = digest([directory], artifact.backend, json.dumps([split.texts, split.labels]),
                 f"{BATCH_SIZE}/{SAMPLE_TEXTS}/{TIMED_PASSES}/{THREADS}")
    logits_path, info_path = run.measurements_dir / f"{key}.npy", run.measurements_dir / f"{key}.json"
    if info_path.is_file():  # written last: its presence means the logits are whole
        return np.load(logits_path), json.loads(info_path.read_text())
    model = artifact.load_member(directory)
    logits = model.fold_logits(model.encode(split.texts), BATCH_SIZE)[0]  # also the timing's warm-up
    info = {"model_dir": str(directory), "backend": artifact.backend, "device": getattr(model, "device", "cpu"),
            "parameters": count_parameters(model.models) if isinstance(model, Ensemble) else None,
            "bytes": (Path(directory) / WEIGHT_FILES[artifact.backend]).stat().st_size,
            "seconds_per_text": _timed(model, split.texts), "split": run.evaluation_split_name}
    run.measurements_dir.mkdir(parents=True, exist_ok=True)
    atomic_save_npy(logits_path, logits)
    write_json(info_path, info)
    return logits, info


def fold_logits(run: RunDir, artifact: Artifact) -> np.ndarray:
    """[K, N, C] logits of the artifact's members on the evaluation split (measured once)."""
    return np.stack([_member(run, artifact, d)[0] for d in artifact.dirs])


def measure(run: RunDir, artifact: Artifact) -> dict:
    """The artifact's figures on the evaluation split: every ``compute_metrics`` key, ``parameters``,
    ``size_mb``, ``texts_per_s``, ``device``, ``models`` (members) and ``split``."""
    members = [_member(run, artifact, d) for d in artifact.dirs]
    meta = json.loads((artifact.dirs[0] / META_FILE).read_text())
    _, gold = evaluation_data(run)
    probs = combine(np.stack([logits for logits, _ in members]), meta["multilabel"], artifact.weights)
    params = [info["parameters"] for _, info in members]
    return {**compute_metrics(gold, probs, meta["multilabel"], meta.get("threshold", 0.5)),
            "parameters": None if None in params else sum(params),
            "size_mb": sum(info["bytes"] for _, info in members) / 2**20,
            "texts_per_s": 1.0 / sum(info["seconds_per_text"] for _, info in members),
            "device": members[0][1]["device"], "models": len(members), "split": run.evaluation_split_name}


def model_figures(model: torch.nn.Module) -> dict:
    """Parameters (all, trainable) and fp32 size in memory of a model that is not saved yet."""
    size = sum(t.numel() * t.element_size() for t in (*model.parameters(), *model.buffers()))
    return {"parameters": count_parameters(model),
            "trainable_parameters": sum(p.numel() for p in model.parameters() if p.requires_grad), "size_mb": size / 2**20}


def describe(model_dir: Path) -> str:
    """small:arch, t5:name, or hf:name (n layers): a self-distilled student keeps its teacher's name."""
    model = json.loads((Path(model_dir) / META_FILE).read_text())["model"]
    if model["kind"] == "small":
        return f"small:{model['arch']}"
    if model["kind"] == "hf":
        layers = json.loads((Path(model_dir) / HF_CONFIG_DIR / "config.json").read_text())["num_hidden_layers"]
        return f"hf:{model['name']} ({layers} layers)"
    return f"{model['kind']}:{model['name']}"

