"""Which models of a run answer a prediction, loaded in this process: the ensemble (its members,
weighted), one fold, the student or the pruned model, on torch; or the ensemble's ONNX exports on ONNX
Runtime, int8 only where the export stage measured it within ``export.max_int8_drop``. What the CLI's
``predict``/``test``, ``orchestrator.load`` and every Serve replica load."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

from orchestrator.evaluate.ensemble import Ensemble, EnsembleBase
from orchestrator.rundir import RunDir, RunDirError
from trainables.export import INT8_FILE, ONNX_FILE
from trainables.models import META_FILE

MODELS = "ensemble, fold:<k>, student, pruned or onnx"


def onnx_members(run: RunDir) -> list[tuple[Path, float]]:
    """(export directory, weight) of every ensemble member (``export/<name>/``); for a run directory
    without an ensemble.json, every ``export/fold_<k>/`` equally. Empty unless all are exported."""
    members = run.ensemble_members()
    if members:
        found = [(run.export_dir(m.name), m.weight) for m in members]
        return found if all((d / ONNX_FILE).is_file() for d, _ in found) else []
    dirs = sorted((p for p in run.stage_dir("export").glob("fold_*") if (p / ONNX_FILE).is_file()),
                  key=lambda p: int(p.name.removeprefix("fold_")))
    return [(d, 1.0 / len(dirs)) for d in dirs]


def choose_backend(run: RunDir, onnx: bool = False) -> str:
    """"onnx" when asked or when the run has only ONNX exports, else "torch"; RunDirError if it has neither."""
    members = run.ensemble_members()
    if not onnx and members and all((m.model_dir / META_FILE).is_file() for m in members):
        return "torch"
    if onnx_members(run):
        return "onnx"
    wanted = f"ONNX exports (export/<member>/{ONNX_FILE})" if onnx else "ensemble models or ONNX exports"
    raise RunDirError(f"{run.root}: no {wanted} to serve")


def onnx_precision(run: RunDir) -> tuple[str, str]:
    """("int8" | "fp32", why): int8 only where the export stage measured every member's int8 model within
    ``export.max_int8_drop`` macro-F1 of fp32 (export/int8_check.json)."""
    dirs = [d for d, _ in onnx_members(run)]
    if not run.int8_check.is_file() or not all((d / INT8_FILE).is_file() for d in dirs):
        return "fp32", "no checked int8 export"
    checks = json.loads(run.int8_check.read_text())
    folds = [checks.get(d.name) for d in dirs]
    if None in folds:
        return "fp32", "an int8 export was not checked"
    worst = max(folds, key=lambda c: c["macro_f1_drop"])
    if not all(c["serve_int8"] for c in folds):
        return "fp32", f"int8 loses {worst['macro_f1_drop']:.4f} macro-F1 against fp32 (export.max_int8_drop {worst['max_drop']})"
    return "int8", f"int8 within {worst['max_drop']} macro-F1 of fp32 (largest drop {worst['macro_f1_drop']:.4f})"


def load_ensemble(run: RunDir, backend: str, threads: Optional[int] = None, int8: bool = False) -> EnsembleBase:
    """The fold ensemble the service runs: torch on CPU, or ONNX Runtime (fp32, or ``int8``) with
    ``threads`` per session."""
    if backend == "onnx":
        from orchestrator.evaluate.onnx_ensemble import OnnxEnsemble
        from orchestrator.extras import require

        require("compress", "ONNX inference (ONNX Runtime)", ("onnxruntime",))

        exported = onnx_members(run)
        return OnnxEnsemble([d for d, _ in exported], int8=int8, threads=threads, weights=[w for _, w in exported])
    return Ensemble.of_run(run, device="cpu")


def model_folder(run: RunDir, model: str) -> Path:
    """The model directory of one model of the run: "fold:<k>" (fold k of the best config), "student"
    (distill/model) or "pruned" (prune/model)."""
    if model.startswith("fold:") and model[5:].isdigit():
        folder = run.model_dir(int(model[5:]))
    elif model in ("student", "pruned"):
        folder = run.stage_model_dir("distill" if model == "student" else "prune")
    else:
        raise RunDirError(f"model {model!r}: expected {MODELS}")
    if not (folder / META_FILE).is_file():
        raise RunDirError(f"{run.root}: no {model} model ({folder} has no {META_FILE})")
    return folder


def served_model(run: RunDir, model: Optional[str] = None, onnx: bool = False) -> str:
    """Which model a service of the run answers with: ``model`` (one of MODELS) when given, else "onnx"
    when asked or when the run has only ONNX exports, else "ensemble". RunDirError if the run lacks it."""
    if model is None or model in ("ensemble", "onnx"):
        return "onnx" if choose_backend(run, onnx or model == "onnx") == "onnx" else "ensemble"
    model_folder(run, model)
    return model


def load_model(run: RunDir, model: str = "ensemble", device: Optional[str] = None, threads: Optional[int] = None) -> EnsembleBase:
    """``model`` of the run: "ensemble" (torch), "fold:<k>", "student", "pruned" (``model_folder``) or
    "onnx" (the ensemble's exports, int8 where checked, ``threads`` per session)."""
    if model == "ensemble":
        return Ensemble.of_run(run, device)
    if model == "onnx":
        if not onnx_members(run):
            raise RunDirError(f"{run.root}: no ONNX exports (export/<member>/{ONNX_FILE}); run the export stage first")
        return load_ensemble(run, "onnx", threads=threads, int8=onnx_precision(run)[0] == "int8")
    return Ensemble([model_folder(run, model)], device)
