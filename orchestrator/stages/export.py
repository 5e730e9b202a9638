"""The export stage: every model of the run (``RunDir.model_sources``) to ONNX, parity-checked on the
evaluation split, into ``export/<name>/``."""
from __future__ import annotations

from orchestrator.config import ExperimentConfig
from orchestrator.rundir import RunDir
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
    return results
