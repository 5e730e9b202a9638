"""Every model a run produced, side by side: the fold ensemble, each fold, the distilled student, the
pruned model and their ONNX fp32/int8 exports, scored on the run's evaluation split.

Each artifact is loaded as an ``EnsembleBase`` (a single model is an ensemble of one), so scoring
and timing go through the same ``Ensemble``/``OnnxEnsemble`` code that ``test`` and ``serve`` use.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch

from orchestrator.rundir import RunDir
from orchestrator.evaluate.ensemble import Ensemble, EnsembleBase
from orchestrator.evaluate.onnx_ensemble import OnnxEnsemble
from orchestrator.pipeline import evaluation_split
from orchestrator.stages.runner import export_sources
from orchestrator.train.folds import label_array
from trainables.export import INT8_FILE, ONNX_FILE
from trainables.metrics import compute_metrics
from trainables.models import MODEL_FILE

SAMPLE_TEXTS = 256  # throughput sample: enough batches for a stable rate, bounded for big encoders
BATCH_SIZE = 64     # the batch size test/serve use, so the ensemble row reproduces test/metrics.json
TIMED_PASSES = 3    # best of: on shared CPUs the fastest pass is the stable figure
COLUMNS = ("model", "backend", "device", "macro_f1", "accuracy", "size_mb", "parameters", "texts_per_s")
BACKENDS = {"torch": MODEL_FILE, "onnx fp32": ONNX_FILE, "onnx int8": INT8_FILE}


@dataclass(frozen=True)
class Artifact:
    """One scoreable model: ``dirs`` are model directories (torch) or export directories (ONNX)."""

    name: str
    backend: str
    dirs: tuple[Path, ...]

    @property
    def weight_files(self) -> list[Path]:
        return [d / BACKENDS[self.backend] for d in self.dirs]

    def load(self) -> EnsembleBase:
        if self.backend == "torch":
            return Ensemble(self.dirs)  # the device evaluate_run used, so the ensemble row matches test/
        # as many ONNX Runtime threads as torch has, so the backends are timed on equal terms
        return OnnxEnsemble(self.dirs, int8=self.backend == "onnx int8", threads=torch.get_num_threads())


def run_artifacts(run: RunDir) -> list[Artifact]:
    """The run's models in table order, each in torch and in whichever ONNX precisions were exported.
    With several folds one single fold (fold 0) stands for them: every fold's test metrics are in
    test/folds.json already, and timing K more models would multiply the cost of the table."""
    sources = export_sources(run)  # export/<name>/ holds the export of sources[name]
    folds = tuple(name for name in sources if name.startswith("fold_"))
    groups = {f"ensemble ({len(folds)} fold{'s' if len(folds) > 1 else ''})": folds}
    if len(folds) > 1:
        groups[f"single fold ({folds[0].replace('_', ' ')})"] = folds[:1]
    groups.update({name: (name,) for name in sources if name not in folds})
    out = []
    for label, names in groups.items():
        out.append(Artifact(label, "torch", tuple(sources[n] for n in names)))
        exported = tuple(run.root / "export" / n for n in names)
        out += [Artifact(label, backend, exported) for backend in ("onnx fp32", "onnx int8")
                if all((d / BACKENDS[backend]).is_file() for d in exported)]
    return out


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


def texts_per_second(predict: Callable[[], object], n: int) -> float:
    """Best of ``TIMED_PASSES`` passes; the caller has warmed the model up already."""
    return best_rates({"": predict}, n)[""]


def evaluation_data(run: RunDir) -> tuple[list[str], np.ndarray]:
    """Texts and gold labels (``label_array``) of ``evaluation_split(run)``."""
    split = evaluation_split(run)
    data = run.stage("data")
    return split.texts, label_array(split.labels, len(data["classes"]), data["multilabel"])


def score(model: EnsembleBase, texts: list[str], gold: np.ndarray, batch_size: int = BATCH_SIZE) -> dict:
    """``compute_metrics`` of the model's (ensemble) predictions on ``texts``."""
    return compute_metrics(gold, model.predict_proba(texts, batch_size), model.multilabel, model.threshold)


def measure(artifact: Artifact, texts: list[str], gold, sample: list[str]) -> dict:
    """One table row: metrics on all ``texts``, size of the weight files, parameters, texts/s on ``sample``."""
    model = artifact.load()
    metrics = score(model, texts, gold)  # also the warm-up of the timed passes
    ids = model.encode(sample)  # tokenization is not timed: it is the same for every backend
    rate = texts_per_second(lambda: model.combine(model.fold_logits(ids, BATCH_SIZE)), len(ids))
    return {"model": artifact.name, "backend": artifact.backend, "device": getattr(model, "device", "cpu"),
            "macro_f1": metrics["macro_f1"], "accuracy": metrics["accuracy"],
            "size_mb": sum(f.stat().st_size for f in artifact.weight_files) / 2**20,
            "parameters": sum(p.numel() for m in model.models for p in m.parameters()) if isinstance(model, Ensemble) else None,
            "texts_per_s": rate}


def cycled(texts: list[str], n: int) -> list[str]:
    """``n`` texts: ``texts`` repeated as often as needed, then cut."""
    return (texts * (n // max(len(texts), 1) + 1))[:n]


def stage_comparison(run: RunDir, sample_texts: int = SAMPLE_TEXTS,
                     log: Optional[Callable[[str], object]] = None) -> list[dict]:
    """A row per artifact of the run (keys: ``COLUMNS``), scored on ``evaluation_split(run)``.

    ONNX rows take the parameter count of the torch row they were exported from (int8 stores the
    same parameters in fewer bytes)."""
    texts, gold = evaluation_data(run)
    sample = cycled(texts, sample_texts)
    rows, params = [], {}
    for artifact in run_artifacts(run):
        if log:
            log(f"compare: {artifact.name} ({artifact.backend})")
        row = measure(artifact, texts, gold, sample)
        row["parameters"] = params.setdefault(artifact.name, row["parameters"])
        rows.append(row)
    return rows
