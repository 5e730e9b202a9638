"""One Ray Train TorchTrainer per fold, and the fold's result once it has trained.

Each fold's TorchTrainer runs ``trainables.ray_worker.train_fold_worker`` on its workers. Its Ray
run is named ``trial_<id>`` (a Tune trial; ``distill`` for the student) under the run's own storage
path (no timestamps), so re-running resumes from the latest checkpoint. The best epoch is the
loop's decision (history.json in the checkpoint); its model is copied once, from the last Ray
checkpoint into the trial folder ``trials/<id>/model``.
"""
from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np

from orchestrator.config import ConfigError, ExperimentConfig
from orchestrator.data import Dataset, fold_plan, label_array, load_stop_words
from orchestrator.rundir import RunDir, write_json
from orchestrator.train.cluster import use_gpu
from orchestrator.train.errors import TrainingError
from trainables.atomic import atomic_write_text
from trainables.loop import FoldData, best_row
from trainables.ray_worker import BEST_DIR, FAILED, FAILURE_NOTE, HISTORY_FILE, TRAIN_STATE, OOF_FILE, VAL_LOGITS, train_fold_worker
from trainables.text.base import TextEncoder
from trainables.text.encoders import build_text_encoder


def failure(result: Any) -> Optional[str]:
    """The error a fold's worker reported (``ray_worker.FAILED``), or None."""
    return (result.metrics or {}).get(FAILED)


@dataclass
class FoldResult:
    fold: int
    model_dir: Path
    history: list[dict]
    best: dict
    train_time_s: float


def fold_data(ids: list[list[int]], labels: np.ndarray, train_idx: np.ndarray, val_idx: np.ndarray,
              encoder: TextEncoder, num_classes: int, multilabel: bool) -> FoldData:
    return FoldData(
        train_ids=[ids[i] for i in train_idx], train_labels=labels[train_idx],
        val_ids=[ids[i] for i in val_idx], val_labels=labels[val_idx],
        pad_id=encoder.pad_id, num_classes=num_classes, multilabel=multilabel,
    )


def prepare_folds(cfg: ExperimentConfig, dataset: Dataset) -> dict:
    """Tokenize the train+val pool once; the fold plan, labels and encoder that every trial shares."""
    stop_words = load_stop_words(cfg.data.stop_words) if cfg.data.stop_words else []
    encoder = build_text_encoder(cfg.model, dataset.train.texts, stop_words)
    pool, plan = fold_plan(dataset, cfg.cv.folds, cfg.seed)
    return {"ids": encoder.encode(pool.texts), "labels": label_array(pool.labels, len(dataset.classes), dataset.multilabel),
            "plan": plan, "encoder": encoder, "meta": model_meta(cfg, dataset.classes, dataset.multilabel)}


def model_meta(cfg: ExperimentConfig, classes: list[str], multilabel: bool) -> dict:
    """What a model directory records besides weights: classes and how to read outputs."""
    return {"classes": classes, "multilabel": multilabel, "threshold": cfg.train.threshold, "experiment": cfg.name}


# Seconds between the Ray Train controller's polls of its workers (Ray's default: 2). A poll also
# takes the worker's next ray.train.report off a one-slot queue, so each report of an epoch shorter
# than the interval blocks the worker until the next poll: with 2 s, 6 epochs of 0.35 s took 12 s
# (docs/architecture.md, CV trial seconds). A poll that does not answer in time is only a missed health
# check (a worker counts as dead after RAY_TRAIN_WORKER_HEALTH_CHECK_TIMEOUT_S, 10 min), so a short
# interval stays safe on a loaded machine. The environment variable, where set, wins.
TENSORBOARD_DIR = "tensorboard"
HEALTH_CHECK_INTERVAL_ENV = "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S"
HEALTH_CHECK_INTERVAL_S = 0.25


def build_torch_trainer(cfg: ExperimentConfig, run: RunDir, name: str, payload_ref: Any, folder: Path,
                        callbacks: Sequence = (), resume_from: Optional[str] = None, pool: Any = None,
                        stop_file: Optional[Path] = None):
    """A TorchTrainer for one fold, stored as the Ray run ``name`` (``run.ray_run(name)``); its worker
    writes TensorBoard scalars live into ``folder``/tensorboard/, where collect_fold puts the rest.
    ``pool`` (a streamed run's Ray Dataset) reaches the workers as two shards: "train" split
    across them, "val" whole (trainables/streamed_fold.py). The workers end the fold early once
    ``stop_file`` exists (``tune.StopStoppedFolds`` writes it)."""
    from ray.train import CheckpointConfig, DataConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    # read by TorchTrainer.fit() here and passed on to its controller actor (Ray Train V2 propagates
    # the RAY_TRAIN_* variables set in the process that fits)
    os.environ.setdefault(HEALTH_CHECK_INTERVAL_ENV, str(HEALTH_CHECK_INTERVAL_S))

    gpu = use_gpu(cfg)
    note = run.ray_run(name) / FAILURE_NOTE  # a new fit trains again: only its own attempts share the note
    note.parent.mkdir(parents=True, exist_ok=True)
    note.unlink(missing_ok=True)
    return TorchTrainer(
        train_fold_worker,
        train_loop_config={"payload": payload_ref, "train": cfg.train.model_dump(mode="json"),
                           "model": cfg.model.model_dump(mode="json"), "seed": cfg.seed, "resume_from": resume_from,
                           "failure_note": str(note), "stop_file": str(stop_file.resolve()) if stop_file else None,
                           "tensorboard_dir": str((folder / TENSORBOARD_DIR).resolve())},
        scaling_config=ScalingConfig(num_workers=cfg.train.num_workers, use_gpu=gpu,
                                     resources_per_worker={"CPU": cfg.train.cpus_per_worker, **({"GPU": 1} if gpu else {})}),
        run_config=RunConfig(
            name=name, storage_path=str(run.ray_storage), callbacks=list(callbacks),
            checkpoint_config=CheckpointConfig(num_to_keep=1),
            failure_config=FailureConfig(max_failures=2),
        ),
        **({"datasets": {"train": pool, "val": pool}, "dataset_config": DataConfig(datasets_to_split=["train"])} if pool is not None else {}),
    )


def write_epoch_logs(folder: Path, history: list[dict], best: dict, hparams: dict) -> None:
    """Per-epoch metrics as metrics.csv, and the hyperparameters used with the best epoch's scores in
    TensorBoard. The per-epoch scalars are there already when the worker wrote them live (LiveBoard);
    else (TextBrewer's loop, a worker on a node without shared storage) they are written here."""
    from torch.utils.tensorboard import SummaryWriter

    columns = sorted({k for h in history for k in h})
    lines = [",".join(columns)] + [",".join(str(h.get(c, "")) for c in columns) for h in history]
    atomic_write_text(folder / "metrics.csv", "\n".join(lines) + "\n")
    board = folder / TENSORBOARD_DIR
    live = any(board.glob("events.out.tfevents.*"))
    with SummaryWriter(log_dir=str(board)) as writer:
        for h in [] if live else history:
            for key, value in h.items():
                if key != "epoch":
                    writer.add_scalar(f"epoch/{key}", value, h["epoch"])
        flat = {k: v if isinstance(v, (int, float, str, bool)) else str(v) for k, v in hparams.items()}
        writer.add_hparams(flat, {f"hparam/{k}": v for k, v in best.items() if k.startswith("val_")}, run_name=".")


def collect_fold(result: Any, fold: int, folder: Path, started: float, hparams: Optional[dict] = None,
                 label: Optional[str] = None) -> FoldResult:
    """Copy the best model out of the fold's last Ray checkpoint into ``folder``/model (and its
    validation logits to ``folder``/val_logits.npy) and record its history in
    ``folder``/history.json, metrics.csv and tensorboard/. A worker's error is raised as a
    TrainingError naming ``label`` (default "fold <k>")."""
    if failure(result) is not None:
        raise TrainingError(f"{label or f'fold {fold}'}: {failure(result)}")
    if result.checkpoint is None:
        raise RuntimeError(f"fold {fold}: training reported no checkpoint")
    target = folder / "model"
    folder.mkdir(parents=True, exist_ok=True)
    with result.checkpoint.as_directory() as ckpt:
        written = json.loads((Path(ckpt) / HISTORY_FILE).read_text())
        history, steps = written["history"], written.get("steps", [])
        tmp = target.with_name(".model.tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(Path(ckpt) / BEST_DIR, tmp)
        shutil.rmtree(target, ignore_errors=True)
        tmp.rename(target)
        for name in (VAL_LOGITS, OOF_FILE):
            if (Path(ckpt) / name).exists():
                shutil.copyfile(Path(ckpt) / name, folder / name)
    return record_fold(folder, fold, history, time.perf_counter() - started, hparams or {}, steps)


def record_fold(folder: Path, fold: int, history: list[dict], elapsed: float, hparams: dict,
                steps: Sequence[Sequence[float]] = ()) -> FoldResult:
    """metrics.csv, tensorboard/ and history.json (with the per-step train loss, ``steps``; written
    last: its presence marks the folder complete, and a resumed Tune trial reuses it) of a fold whose
    model is in ``folder``/model."""
    best = best_row(history)
    write_epoch_logs(folder, history, best, hparams)
    write_json(folder / "history.json", {"history": history, "best": best, "train_time_s": elapsed, "hparams": hparams,
                                         "steps": [list(s) for s in steps]})
    return FoldResult(fold, folder / "model", history, best, elapsed)


def fold_checkpoints(source: RunDir, folds: int) -> list[str]:
    """Latest Ray checkpoint (full training state) of each fold model of an earlier run, for
    incremental training: folds/<k> came from trial trials.json[best].trial_ids[k], whose
    TorchTrainer stored its checkpoints under ray/trial_<id>/."""
    trials = json.loads(source.trials_json.read_text())
    best = next(t for t in trials["trials"] if t["params"] == trials["best_config"])
    if len(best["trial_ids"]) != folds:
        raise ConfigError(f"--resume-from {source.root}: it has {len(best['trial_ids'])} fold(s), cv.folds is {folds}")
    found = []
    for trial_id in best["trial_ids"]:
        states = sorted(source.ray_run(f"trial_{trial_id}").glob(f"checkpoint_*/{TRAIN_STATE}"))
        if not states:
            raise ConfigError(f"--resume-from {source.root}: no training state left for trial {trial_id}")
        found.append(str(states[-1].parent))
    return found


def load_fold_result(folder: Path, fold: int) -> Optional[FoldResult]:
    """The fold kept in ``folder`` (folds/<k>/ or trials/<id>/), or None when it is not complete:
    collect_fold writes history.json last, so its presence marks a finished folder."""
    path = folder / "history.json"
    if not (path.is_file() and (folder / "model" / "model.json").is_file()):
        return None
    info = json.loads(path.read_text())
    return FoldResult(fold, folder / "model", info["history"], info["best"], info["train_time_s"])
