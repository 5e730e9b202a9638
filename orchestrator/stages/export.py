"""The export stage: every model of the run (``RunDir.model_sources``) to ONNX, parity-checked on the
evaluation split, into ``export/<name>/``. With int8, each int8 model's macro-F1 is measured against
its fp32 export (orchestrator/evaluate/measure.py) and ``export/int8_check.json`` says whether the
drop is within ``export.max_int8_drop``: serving uses int8 only then (dynamic int8 is known to wreck
some text classifiers). With ``export.hf``, every hf-kind model is also written as a Hugging Face
folder, ``export/hf/<name>/`` (trainables/hf_format.py), checked against the model's probabilities."""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np

from orchestrator.config import ExperimentConfig
from orchestrator.evaluate.ensemble import Ensemble
from orchestrator.evaluate.loading import model_folder
from orchestrator.evaluate.measure import Artifact, measure
from orchestrator.rundir import RunDir, RunDirError, write_json
from trainables.export import PARITY_FILE, export_model_dir
from trainables.hf_format import MODELING_FILE, NoHFForm, export_hf, hf_logits
from trainables.metrics import probabilities
from trainables.text.encoders import load_text_encoder

HF_PARITY_TEXTS = 64  # evaluation texts the Hugging Face export is checked on

EXPORT_THREADS = 1  # ONNX Runtime threads of the export task = the CPUs it reserves


def run_export(cfg: ExperimentConfig, run: RunDir) -> dict:
    """{model name: ONNX parity report} (``export.onnx``), and under "hf" {model name: Hugging Face
    export} (``export.hf``); raises when an export disagrees with the torch model."""
    results = run_onnx_export(cfg, run) if cfg.export.onnx else {}
    if cfg.export.hf:
        results["hf"] = {}
        for name, source in run.model_sources().items():
            try:
                results["hf"][name] = export_hf_folder(run, name, source, run.hf_export_dir(name))
            except RunDirError as exc:  # no Hugging Face form (a small model, T5, a pruned encoder): said, not fatal
                results["hf"][name] = {"skipped": str(exc)}
    return results


def run_onnx_export(cfg: ExperimentConfig, run: RunDir) -> dict:
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


def export_hf_model(run: RunDir, model: str, out: Path) -> dict:
    """``model`` of the run ("fold:<k>", "student", "pruned") as a Hugging Face folder ``out``
    (trainables/hf_format.py), checked against the project's own predictions on evaluation texts:
    {folder, max_abs_diff of probabilities, same_labels, texts}."""
    if model == "ensemble":
        raise RunDirError("export --format hf: an ensemble has no single Hugging Face form; export fold:<k> or the student")
    if out.exists() and not (out.is_dir() and (not any(out.iterdir()) or (out / MODELING_FILE).is_file())):
        raise RunDirError(f"export --out {out}: exists and is not an earlier Hugging Face export; choose a new folder")
    return export_hf_folder(run, model, model_folder(run, model), out)


def export_hf_folder(run: RunDir, model: str, folder: Path, out: Path) -> dict:
    """The model directory ``folder`` (called ``model`` in the card) as a Hugging Face folder ``out``,
    checked against the model's own probabilities before it is put in place (a failed export leaves
    nothing half-written)."""
    figures = measure(run, Artifact(model, "torch", (folder,)))
    tmp = out.with_name(f".{out.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    ours = Ensemble([folder], device="cpu")
    try:
        export_hf(folder, tmp, model_card(run, model, ours, figures))
        texts = run.evaluation_split().texts[:HF_PARITY_TEXTS]
        want = ours.predict_proba(texts)
        got = probabilities(hf_logits(tmp, texts).numpy(), ours.multilabel)
        diff, same = float(np.abs(got - want).max()), bool((got.argmax(1) == want.argmax(1)).all())
        if diff > 1e-4 or not same:
            raise RuntimeError(f"export --format hf: transformers' probabilities differ from the model's by {diff:.2e}")
        shutil.rmtree(out, ignore_errors=True)
        tmp.rename(out)
    except NoHFForm as exc:
        raise RunDirError(str(exc)) from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return {"folder": str(out), "max_abs_diff": diff, "same_labels": same, "texts": len(texts)}


def model_card(run: RunDir, model: str, ours: Ensemble, figures: dict) -> str:
    """README.md of a Hugging Face export: what it is, its labels, how to load it, and its figures on
    the run's evaluation split (orchestrator/evaluate/measure.py)."""
    from orchestrator.evaluate.measure import describe

    manifest, folder = run.manifest(), Path(ours.model_dirs[0])
    classes, max_length = ours.classes, ours.encoder.max_length
    metrics = "\n".join(f"| {k} | {figures[k]:.4f} |" for k in ("macro_f1", "accuracy", "micro_f1", "weighted_f1") if k in figures)
    return f"""---
library_name: transformers
pipeline_tag: text-classification
tags: [text-classification, text-orchestrator]
---
# {manifest.get("name", run.root.name)}: {model}

Exported by text-orchestrator from the run `{run.root.name}` (config hash `{manifest.get("config_hash", "unknown")}`):
its model `{model}`, {describe(folder)}, {figures.get("parameters") or 0:,} parameters.

The head is the project's own (pooling + one linear layer), so transformers loads it with remote code:

```python
from transformers import pipeline
classify = pipeline("text-classification", model="path/to/this/folder", trust_remote_code=True, top_k=None)
classify(["a text"], truncation=True)  # truncation: texts were cut at {max_length} tokens in training
```

Labels ({len(classes)}): {", ".join(f"`{c}`" for c in classes)}.

On the run's {figures["split"]} split:

| metric | value |
| --- | --- |
{metrics}
"""
