"""The prune stage: TextPruner on the run's HF model (the distilled student when it is an HF model,
else fold 0's) -> ``run/prune/model`` (a normal model directory) and ``run/prune/report.json``
(before/after: orchestrator/evaluate/measure.py's figures on the evaluation split, and the settings).

It runs inside a Ray task (orchestrator/stages/runner.py), so it returns its result and leaves
manifest.json to the driver.
"""
from __future__ import annotations

import json
import random
import shutil
import time
from pathlib import Path
from trainables.config import ModelConfig

import torch

from orchestrator.config import ExperimentConfig, PruneConfig
from orchestrator.data import label_array
from orchestrator.evaluate.measure import DEFINITION, Artifact, measure
from orchestrator.rundir import SPLITS, RunDir, RunDirError, write_json
from trainables import prune
from trainables.models import META_FILE, load_model_dir, save_model_dir
from trainables.models.pruned_shapes import LAYOUT_KEY
from trainables.text.hf import HFTextEncoder

# Training texts (a seeded sample) that rank heads and neurons. Every iteration re-scores them with
# a forward + backward pass, so 4 iterations x 512 texts cost about one training epoch of 2,000 texts.
IMPORTANCE_TEXTS = 512


def run_prune(cfg: ExperimentConfig, run: RunDir, log=print) -> dict:
    """Prune per ``cfg.prune`` and return the report (also written to run/prune/report.json), or
    ``{"status": "skipped", "reason": ...}`` when there is nothing TextPruner can prune."""
    settings = cfg.prune
    if settings.mode == "none":
        return _skipped(run, "prune.mode is none", log)
    source = prune_source(cfg, run)
    kind = json.loads((source / META_FILE).read_text())["model"]["kind"]
    if kind != "hf":
        return _skipped(run, f"{source}: a {kind} model has no transformer encoder to prune", log)
    model, encoder, meta = load_model_dir(source)
    reason = prune.unsupported_reason(model, settings.mode, encoder.tokenizer)
    if reason:
        return _skipped(run, f"{source}: {reason}", log)

    before, vocab_before = measure(run, Artifact("before", "torch", (source,))), model.encoder.config.vocab_size
    log(f"prune: {settings.mode} pruning of {source}")
    started = time.perf_counter()
    model, tokenizer, details = _prune_model(cfg, run, model, encoder, meta)
    seconds = time.perf_counter() - started
    encoder = HFTextEncoder(tokenizer, encoder.max_length)
    out = _save(run.stage_model_dir("prune"), model, encoder, {**meta, "prune": {"mode": settings.mode, "source": str(source)}})
    after = measure(run, Artifact("after", "torch", (out,)))

    report = {
        "mode": settings.mode, "source": str(source), "model_dir": str(out), "split": run.evaluation_split_name,
        "settings": details, "layout": getattr(model.encoder.config, LAYOUT_KEY, None),
        "vocab_size": {"before": vocab_before, "after": model.encoder.config.vocab_size},
        "before": before, "after": after, "measured": DEFINITION, "prune_seconds": seconds,
        "torch_threads": torch.get_num_threads(),
    }
    write_json(run.stage_dir("prune") / "report.json", report)
    metric = cfg.train.metric if cfg.train.metric in before else "macro_f1"
    log(f"prune: parameters {before['parameters']:,} -> {after['parameters']:,}, {metric} {before[metric]:.4f} -> "
        f"{after[metric]:.4f}, {before['texts_per_s']:.0f} -> {after['texts_per_s']:.0f} texts/s")
    return report


def prune_source(cfg: ExperimentConfig, run: RunDir) -> Path:
    """The distilled student when distill is on and made an HF model, else fold 0's model."""
    student = run.stage_model_dir("distill")
    if cfg.distill.enabled and (student / META_FILE).is_file() and \
            json.loads((student / META_FILE).read_text())["model"]["kind"] == "hf":
        return student
    folds = run.fold_model_dirs()
    if not folds:
        raise RunDirError(f"{run.root}: no fold model to prune (folds/<k>/model)")
    return folds[0]


def _skipped(run: RunDir, reason: str, log) -> dict:
    # A pruned model from an earlier config would otherwise be exported as if it were current.
    shutil.rmtree(run.stage_dir("prune"), ignore_errors=True)
    log(f"prune: skipped: {reason}")
    return {"status": "skipped", "reason": reason}


def _targets(settings: PruneConfig, config) -> dict:
    """Heads and FFN neurons kept per layer: the configured ones, else 2/3 of the model's."""
    return {"target_num_heads": settings.target_num_heads or max(1, round(config.num_attention_heads * 2 / 3)),
            "target_ffn_size": settings.target_ffn_size or max(1, round(config.intermediate_size * 2 / 3))}


def _prune_model(cfg: ExperimentConfig, run: RunDir, model, encoder: HFTextEncoder, meta: dict):
    """(model, tokenizer, settings used) after the configured pruning."""
    mode, classes, multilabel = cfg.prune.mode, meta["classes"], meta["multilabel"]
    splits = {name: run.load_split(name) for name in SPLITS if run.has_split(name)}
    texts = [text for split in splits.values() for text in split.texts]
    if mode == "vocabulary":
        model, tokenizer = prune.prune_vocabulary(model, encoder.tokenizer, texts)
        return model, tokenizer, {"vocabulary_texts": len(texts)}

    train = splits["train"]
    rows = sorted(random.Random(cfg.seed).sample(range(len(train.texts)), min(len(train.texts), IMPORTANCE_TEXTS)))
    labels = label_array([train.labels[i] for i in rows], len(classes), multilabel)
    batches = prune.loss_batches(encoder.encode([train.texts[i] for i in rows]), labels, encoder.pad_id, cfg.train.batch_size)
    targets = _targets(cfg.prune, model.encoder.config)
    details = {**targets, "iterations": cfg.prune.iterations, "importance_texts": len(rows)}
    if mode == "transformer":
        return prune.prune_transformer(model, batches, iterations=cfg.prune.iterations, **targets), encoder.tokenizer, details
    model, tokenizer = prune.prune_pipeline(model, encoder.tokenizer, batches, texts, iterations=cfg.prune.iterations, **targets)
    return model, tokenizer, {**details, "vocabulary_texts": len(texts)}


def _save(out: Path, model, encoder: HFTextEncoder, meta: dict) -> Path:
    """Write the model directory beside ``out`` and swap it in, so a failed save leaves no half directory."""
    tmp = out.with_name(f".{out.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    save_model_dir(tmp, model, encoder, ModelConfig.model_validate(meta["model"]), meta)
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return out
