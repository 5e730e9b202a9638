"""Every model a run produced, side by side: the fold ensemble, one single fold, the distilled
student, the pruned model and their ONNX fp32/int8 exports, on the run's evaluation split.

The figures are orchestrator/evaluate/measure.py's (one definition, measured once per model), so a
row agrees with test/metrics.json, distill/report.json and prune/report.json for the same model.
"""
from __future__ import annotations

from typing import Callable, Optional

from orchestrator.evaluate.measure import WEIGHT_FILES, Artifact, measure
from orchestrator.rundir import RunDir

COLUMNS = ("model", "backend", "device", "macro_f1", "accuracy", "size_mb", "parameters", "texts_per_s")


def run_artifacts(run: RunDir) -> list[Artifact]:
    """The run's models in table order, each in torch and in whichever ONNX precisions were exported.
    With several folds one single fold (fold 0) stands for them: every fold's test metrics are in
    test/folds.json already."""
    sources = run.model_sources()  # export/<name>/ holds the export of sources[name]
    folds = tuple(name for name in sources if name.startswith("fold_"))
    groups = {f"ensemble ({len(folds)} fold{'s' if len(folds) > 1 else ''})": folds}
    if len(folds) > 1:
        groups[f"single fold ({folds[0].replace('_', ' ')})"] = folds[:1]
    groups.update({name: (name,) for name in sources if name not in folds})
    out = []
    for label, names in groups.items():
        out.append(Artifact(label, "torch", tuple(sources[n] for n in names)))
        exported = tuple(run.export_dir(n) for n in names)
        out += [Artifact(label, backend, exported) for backend in ("onnx fp32", "onnx int8")
                if all((d / WEIGHT_FILES[backend]).is_file() for d in exported)]
    return out


def stage_comparison(run: RunDir, log: Optional[Callable[[str], object]] = None) -> list[dict]:
    """A row per artifact of the run (keys: ``COLUMNS``). ONNX rows take the parameter count of the
    torch row they were exported from (int8 stores the same parameters in fewer bytes)."""
    rows, params = [], {}
    for artifact in run_artifacts(run):
        if log:
            log(f"compare: {artifact.name} ({artifact.backend})")
        figures = measure(run, artifact)
        row = {"model": artifact.name, "backend": artifact.backend, **{c: figures[c] for c in COLUMNS[2:]}}
        row["parameters"] = params.setdefault(artifact.name, row["parameters"])
        rows.append(row)
    return rows
