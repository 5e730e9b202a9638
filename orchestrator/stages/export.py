"""The export stage: every model of the run (``RunDir.model_sources``) to ONNX, parity-checked on the
evaluation split, into ``export/<name>/``. With int8, each int8 model's macro-F1 is measured against
its fp32 export (orchestrator/evaluate/measure.py) and ``export/int8_check.json`` says whether the
drop is within ``export.max_int8_drop``: serving uses int8 only then (dynamic int8 is known to wreck
some text classifiers)."""
from __future__ import annotations

from orchestrator.config import ExperimentConfig
from orchestrator.evaluate.measure import Artifact, measure
from orchestrator.rundir import RunDir, write_json
from trainables.export import PARITY_FILE, export_model_dir
from trainables.text.encoders import load_text_encoder

EXPORT_THREADS = 1  # ONNX Runtime threads of the export task = the CPUs it reserves


def run_export(cfg: ExperimentConfig, run: RunDir) -> dict:
    """{model name: parity report}; raises when a model's ONNX graph disagrees with torch."""
    split = run.evaluation_split()
    results = {}
    for name, source in run.model_sources().items():
        encoder = load_text_encoder(source)  # each model has its own encoder (e.g. a pruned vocabulary)
        parity = export_model_dir(source, run.export_dir(name), encoder.encode(split.texts),
                                  int8=cfg.export.int8, threads=EXPORT_THREADS)
        if not parity["ok"]:
            raise RuntimeError(f"export {name}: ONNX parity failed (max |diff| {parity['max_abs_diff']:.2e}, "
                               f"same predictions: {parity['same_predictions']}); see {run.export_dir(name) / PARITY_FILE}")
        results[name] = parity
    if cfg.export.int8:
        checks = {name: int8_quality(run, name, cfg.export.max_int8_drop) for name in results}
        write_json(run.int8_check, checks)
        for name, check in checks.items():
            results[name]["int8"].update(check)
    else:
        run.int8_check.unlink(missing_ok=True)  # no int8 models, nothing to vouch for
    return results


def int8_quality(run: RunDir, name: str, max_drop: float) -> dict:
    """macro-F1 of export ``name`` in fp32 and int8 on the evaluation split, the drop, and the verdict."""
    fp32, int8 = (measure(run, Artifact(name, backend, (run.export_dir(name),)))["macro_f1"]
                  for backend in ("onnx fp32", "onnx int8"))
    return {"fp32_macro_f1": fp32, "int8_macro_f1": int8, "macro_f1_drop": fp32 - int8, "max_drop": max_drop,
            "serve_int8": fp32 - int8 <= max_drop}
