"""Every model a run produced, side by side: the fold ensemble, one single fold, the distilled
student, the pruned model and their ONNX fp32/int8 exports, on the run's evaluation split.

The figures are orchestrator/evaluate/measure.py's (one definition, measured once per model), so a
row agrees with test/metrics.json, distill/report.json and prune/report.json for the same model.
"""
from __future__ import annotations

import json
from typing import Callable, Optional

from orchestrator.evaluate.measure import WEIGHT_FILES, Artifact, measure
from orchestrator.rundir import RunDir

COLUMNS = ("model", "backend", "device", "macro_f1", "accuracy", "size_mb", "parameters", "texts_per_s")


def run_artifacts(run: RunDir) -> list[Artifact]:
    """The run's models in table order, each in torch and in whichever ONNX precisions were exported:
    the ensemble (its members weighted as in ensemble.json), one single fold (fold 0 of the best
    config stands for them: every fold's test metrics are in test/folds.json already), then the
    student and the pruned model."""
    sources, members = run.model_sources(), run.ensemble_members()  # export/<name>/ holds the export of sources[name]
    names = tuple(m.name for m in members)
    weights = tuple(m.weight for m in members)
    folds = sum(n.startswith("fold_") for n in names)
    label = (f"ensemble ({folds} fold{'s' if folds > 1 else ''})" if folds == len(names)
             else f"ensemble selection ({len(names)} models)")
    groups = {label: (names, weights)}
    single = run.fold_model_dirs()[:1]
    if len(names) > 1 and single:
        sources = {**sources, "fold_0": single[0]}
        groups["single fold (fold 0)"] = (("fold_0",), None)
    groups.update({name: ((name,), None) for name in sources if name not in names and name != "fold_0"})
    out = []
    for label, (group, group_weights) in groups.items():
        out.append(Artifact(label, "torch", tuple(sources[n] for n in group), group_weights))
        exported = tuple(run.export_dir(n) for n in group)
        out += [Artifact(label, backend, exported, group_weights) for backend in ("onnx fp32", "onnx int8")
                if all((d / WEIGHT_FILES[backend]).is_file() for d in exported)]
    return out


def stage_comparison(run: RunDir, log: Optional[Callable[[str], object]] = None) -> list[dict]:
    """A row per artifact of the run (keys: ``COLUMNS``). ONNX rows take the parameter count of the
    torch row they were exported from (int8 stores the same parameters in fewer bytes)."""
    if not run.has_split(run.evaluation_split_name) or not run.evaluation_split().texts:
        if log:  # K folds pool val into training: only a test split is left to measure on
            log("compare: skipped: the run has no evaluation split (set data.test or data.test_fraction)")
        return []
    rows, params = [], {}
    for artifact in run_artifacts(run):
        if log:
            log(f"compare: {artifact.name} ({artifact.backend})")
        figures = measure(run, artifact)
        row = {"model": artifact.name, "backend": artifact.backend, **{c: figures[c] for c in COLUMNS[2:]}}
        row["parameters"] = params.setdefault(artifact.name, row["parameters"])
        rows.append(row)
    return rows


def ensemble_rows(choice: dict) -> list[dict]:
    """The selected ensemble next to the best config's folds (OOF and test macro-F1), from
    evaluation's "ensemble" record; empty unless ensemble selection chose the run's ensemble."""
    if not choice or choice.get("kind") != "selection":
        return []
    weights = ", ".join(f"{w['weight']:.2f} × {json.dumps(w['params'], sort_keys=True)}" for w in choice["config_weights"])
    return [
        {"ensemble": f"selection ({choice['members']} models)", "oof_macro_f1": choice.get("oof", {}).get("macro_f1"),
         "test_macro_f1": choice.get("test", {}).get("macro_f1"), "configs": weights},
        {"ensemble": "best config (its folds)", "oof_macro_f1": choice["best_config_oof"]["macro_f1"],
         "test_macro_f1": choice.get("best_config_test", {}).get("macro_f1"), "configs": "1.00 × the best by cross-fold mean"},
    ]
