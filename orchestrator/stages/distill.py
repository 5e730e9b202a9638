"""The distill stage: the run's ensemble (or one fold model) teaches a student.

cross: any student (``distill.student``) trained like a fold, through Ray Train, with the
``TeacherDistillation`` hook; self: TextBrewer layer-to-layer distillation of an HF fold model into
a shallower copy of itself, in a Ray task. Both learn from the teacher logits of the training pool,
computed once and cached. Everything lands in run/distill/:

  teacher_logits.npy/.json   [K, N, C] logits of every teacher model on the pool (train + val rows)
                             and the key (teacher model files + pool texts) they were computed for
  model/                     the student, a model directory (load_model_dir)
  history.json, metrics.csv  the student's per-epoch metrics
  report.json                student vs teacher: orchestrator/evaluate/measure.py's figures

The student trains on the train rows and picks its best epoch on the val rows (data.fold_plan
with one fold), whatever cv.folds was. It runs inside the stage task of orchestrator/stages/runner.py, which
records it in manifest.json; the heavy parts run in Ray tasks or workers that reserve distill.train's
CPUs (and GPU), so the stage task itself only waits.
"""
from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from orchestrator.config import ConfigError, ExperimentConfig, with_overrides
from orchestrator.data import Dataset, fold_plan, label_array, load_stop_words
from orchestrator.evaluate.ensemble import Ensemble
from orchestrator.evaluate.measure import DEFINITION, Artifact, describe, digest, measure
from orchestrator.evaluate.selection import combined_logits
from orchestrator.rundir import RunDir, write_json
from orchestrator.train.cluster import use_gpu
from orchestrator.train.folds import build_torch_trainer, collect_fold, fold_data, model_meta, record_fold
from trainables.atomic import atomic_save_npy
from trainables.config import ModelConfig
from trainables.distill import TeacherDistillation, self_distill
from trainables.loop import FoldData
from trainables.models import load_model_dir, save_model_dir
from trainables.text.encoders import build_text_encoder
from trainables.text.base import TextEncoder

RAY_NAME = "distill"  # the student's Ray Train run under run/ray/


def run_distill(cfg: ExperimentConfig, run: RunDir, log: Callable[[str], Any] = print) -> dict:
    """Train ``cfg.distill``'s student from the fold models of ``run``; returns report.json's content.

    Self mode copies the layers, and matches the hidden states, of the first chosen fold model (fold 0
    for "ensemble"); its soft labels are the chosen teachers' logits mixed by teacher_mix, as in cross
    mode. Needs a connected Ray (the pipeline's, or ``train.cluster.init_ray()``). Every call trains the
    student afresh; only the teacher logits are reused while the fold models and the pool are unchanged.
    """
    dcfg, student_cfg = cfg.distill, student_config(cfg)
    teacher_dirs, weights = teachers(run, dcfg.teacher)
    if dcfg.mode == "self" and json.loads((teacher_dirs[0] / "model.json").read_text())["model"]["kind"] != "hf":
        raise ConfigError("distill.mode: 'self' copies layers of an hf teacher; the fold models are not hf (use mode 'cross')")
    folder = run.stage_dir("distill")
    folder.mkdir(parents=True, exist_ok=True)
    dataset, train_idx, val_idx = training_pool(run, cfg.seed)
    pool_texts = dataset.train.texts + dataset.val.texts
    logits, cached = on_worker(student_cfg, pool_teacher_logits, teacher_dirs, pool_texts, folder)
    log(f"distill: teacher logits {'reused from' if cached else 'written to'} {folder / 'teacher_logits.npy'}")
    teacher_logits = logits[:, train_idx]  # rows of the student's FoldData.train_ids
    if dcfg.teacher_mix == "average" and len(teacher_dirs) > 1:  # one target: the ensemble's own (weighted) combination
        teacher_logits = combined_logits(teacher_logits, dataset.multilabel, weights)[None]
    started, settings = time.perf_counter(), distill_settings(dcfg)
    if dcfg.mode == "cross":
        train_cross(student_cfg, run, dataset, teacher_logits, train_idx, val_idx, started, settings)
    else:
        on_worker(student_cfg, train_self, student_cfg, dataset, teacher_dirs[0], teacher_logits, train_idx,
                  val_idx, folder, started, settings)
    report = on_worker(student_cfg, compare_with_teacher, run.root, tuple(teacher_dirs), tuple(weights), folder / "model")
    history = json.loads((folder / "history.json").read_text())
    report = {"config": settings, "teacher_logits": "cached" if cached else "computed",
              "train_time_s": history["train_time_s"], "best_epoch": history["best"]["epoch"], **report}
    write_json(folder / "report.json", report)
    log(f"distill: student {report['student']['macro_f1']:.4f} vs teacher {report['teacher']['macro_f1']:.4f} macro F1 "
        f"on {report['split']}, {report['compression']:.1f}x fewer parameters, {report['speedup']:.1f}x faster")
    return report


def student_config(cfg: ExperimentConfig) -> ExperimentConfig:
    """cfg with ``distill.student`` as ``model`` and ``distill.train`` as ``train``: what
    build_torch_trainer and the training worker read. Re-validated (e.g. a multilabel loss)."""
    if cfg.distill.train.rdrop_alpha > 0:
        raise ConfigError("distill.train.rdrop_alpha: R-Drop replaces the training loss, so the distillation loss would be skipped; set it to 0")
    try:
        return with_overrides(cfg, {"model": cfg.distill.student.model_dump(mode="json"),
                                    "train": cfg.distill.train.model_dump(mode="json")})
    except ConfigError as exc:
        raise ConfigError(str(exc).replace("override: ", "distill.")) from None


def distill_settings(dcfg) -> dict:
    """The distill options that shape this student (report.json, TensorBoard hparams)."""
    unused = {"enabled", "train", "student"} | ({"student_layers", "intermediate"} if dcfg.mode == "cross" else set())
    return {k: v for k, v in dcfg.model_dump(mode="json").items() if k not in unused}


def teachers(run: RunDir, teacher: str) -> tuple[list[Path], list[float]]:
    """(model directories, weights) of the teachers: the run's ensemble (``RunDir.ensemble_members``)
    for "ensemble", fold k of the best config for "fold:<k>"."""
    if teacher == "ensemble":
        members = run.ensemble_members()
        if not members:
            raise FileNotFoundError("distill: the run has no trained fold models")
        return [m.model_dir for m in members], [m.weight for m in members]
    folds, k = run.fold_model_dirs(), int(teacher.split(":")[1])
    if k >= len(folds):
        raise ConfigError(f"distill.teacher: {teacher!r} but the run has {len(folds)} fold model(s)")
    return [folds[k]], [1.0]


def training_pool(run: RunDir, seed: int) -> tuple[Dataset, np.ndarray, np.ndarray]:
    """The run's saved train/val splits as a Dataset, and the train/val row indices of their pool
    (train rows first, as ``data.fold_plan`` builds it)."""
    data = run.stage("data")
    dataset = Dataset(run.load_split("train"), run.load_split("val"), None, data["classes"], data["multilabel"])
    _, [(train_idx, val_idx)] = fold_plan(dataset, 1, seed)
    return dataset, train_idx, val_idx


def student_data(dataset: Dataset, encoder: TextEncoder, train_idx: np.ndarray, val_idx: np.ndarray) -> FoldData:
    """The student's fold: the pool encoded by its own text encoder, split into train/val rows."""
    ids = encoder.encode(dataset.train.texts + dataset.val.texts)
    labels = label_array(dataset.train.labels + dataset.val.labels, len(dataset.classes), dataset.multilabel)
    return fold_data(ids, labels, train_idx, val_idx, encoder, len(dataset.classes), dataset.multilabel)


# ---- work that runs in Ray tasks reserving a training worker's resources ----------------------------

def on_worker(cfg: ExperimentConfig, fn: Callable, *args) -> Any:
    """``fn(*args)`` in a Ray task that reserves what one training worker of ``cfg`` gets (CPUs, a GPU)
    and uses as many torch threads; waits for its result."""
    import ray

    gpu = use_gpu(cfg)
    threads = max(1, int(cfg.train.torch_threads or cfg.train.cpus_per_worker))
    task = ray.remote(num_cpus=cfg.train.cpus_per_worker, num_gpus=1 if gpu else 0, max_retries=0)(_with_threads)
    return ray.get(task.remote(threads, fn, *args))


def _with_threads(threads: int, fn: Callable, *args) -> Any:
    import torch

    torch.set_num_threads(threads)
    return fn(*args)


def pool_teacher_logits(fold_dirs: Sequence[Path], texts: Sequence[str], folder: Path) -> tuple[np.ndarray, bool]:
    """([K, N, C] logits of the K teacher models on ``texts``, whether they came from the cache in
    ``folder`` (kept while the teachers and the texts are unchanged)."""
    key = digest(fold_dirs, "\0".join(texts))
    array, info = folder / "teacher_logits.npy", folder / "teacher_logits.json"
    if array.is_file() and info.is_file() and json.loads(info.read_text()).get("key") == key:
        return np.load(array), True
    ensemble = Ensemble(fold_dirs)
    logits = ensemble.fold_logits(ensemble.encode(texts))
    atomic_save_npy(array, logits)
    write_json(info, {"key": key, "shape": list(logits.shape), "fold_models": [str(d) for d in fold_dirs]})  # last: it validates the array
    return logits, False


def train_cross(cfg: ExperimentConfig, run: RunDir, dataset: Dataset, teacher_logits: np.ndarray,
                train_idx: np.ndarray, val_idx: np.ndarray, started: float, settings: dict) -> None:
    """The student (``cfg.model``) trained like a fold by one TorchTrainer, its loss replaced by the
    TeacherDistillation hook; best model and history go to run/distill/."""
    import ray

    dcfg = cfg.distill
    stop_words = load_stop_words(cfg.data.stop_words) if cfg.data.stop_words else []
    encoder = build_text_encoder(cfg.model, dataset.train.texts, stop_words)
    hook = TeacherDistillation(teacher_logits, dcfg.loss, dcfg.temperature, dcfg.alpha, dataset.multilabel, dcfg.teacher_mix)
    payload = {"data": student_data(dataset, encoder, train_idx, val_idx), "text_encoder": encoder,
               "meta": model_meta(cfg, dataset.classes, dataset.multilabel), "hooks": [hook]}
    shutil.rmtree(run.ray_run(RAY_NAME), ignore_errors=True)  # Ray Train would resume an earlier student's run
    trainer = build_torch_trainer(cfg, run, RAY_NAME, ray.put(payload), run.stage_dir("distill"))
    collect_fold(trainer.fit(), 0, run.stage_dir("distill"), started,
                 {**settings, "student": cfg.model.arch if cfg.model.kind == "small" else cfg.model.name}, label="distill student")


def train_self(cfg: ExperimentConfig, dataset: Dataset, teacher_dir: Path, teacher_logits: np.ndarray,
               train_idx: np.ndarray, val_idx: np.ndarray, folder: Path, started: float, settings: dict) -> None:
    """TextBrewer self-distillation of the HF fold model in ``teacher_dir`` (its layers and hidden
    states; soft labels from ``teacher_logits``); student and history go to ``folder``."""
    import torch

    dcfg = cfg.distill
    teacher, encoder, meta = load_model_dir(teacher_dir)  # the student keeps the teacher's tokenizer
    student, history = self_distill(
        teacher, dcfg.student_layers, student_data(dataset, encoder, train_idx, val_idx), cfg.train, dcfg.intermediate, dcfg.loss, dcfg.temperature, dcfg.alpha,
        teacher_logits, dcfg.teacher_mix, cfg.seed, "cuda" if torch.cuda.is_available() else "cpu")
    save_model_dir(folder / "model", student, encoder, ModelConfig.model_validate(meta["model"]), model_meta(cfg, dataset.classes, dataset.multilabel))
    settings = {**settings, "student": f"{len(dcfg.student_layers)} of {teacher.encoder.config.num_hidden_layers} layers"}
    record_fold(folder, 0, history, time.perf_counter() - started, settings)


def compare_with_teacher(run_root: Path, teacher_dirs: tuple[Path, ...], weights: tuple[float, ...], student_dir: Path) -> dict:
    """Teacher(s) (combined like the ensemble, with its weights) and student on the run's evaluation split."""
    run = RunDir(Path(run_root))
    teacher, student = (measure(run, Artifact(name, "torch", dirs, w)) | {"model": describe(dirs[0])}
                        for name, dirs, w in (("teacher", teacher_dirs, weights), ("student", (student_dir,), None)))
    return {"split": run.evaluation_split_name, "rows": len(run.evaluation_split().texts), "measured": DEFINITION,
            "teacher": teacher, "student": student,
            "compression": teacher["parameters"] / student["parameters"],
            "speedup": student["texts_per_s"] / teacher["texts_per_s"]}
