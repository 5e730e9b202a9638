"""Ray Train entry point: the only module of trainables/ that imports Ray.

``train_fold_worker(config)`` runs on every TorchTrainer worker: it builds the model, resumes from
Ray's checkpoint after a worker failure (or from ``resume_from`` for incremental training), runs
``Trainer.fit`` and reports each epoch's metrics with a checkpoint holding the full training state
(``train_state.pt``), the best model so far (``best/``, a model directory) and ``history.json``
(every epoch's metrics and the best epoch, as the loop decided it).
"""
from __future__ import annotations

import json
import tempfile
import traceback
from pathlib import Path
from typing import Optional

import numpy as np
import ray
import ray.train
import ray.train.torch
import torch

from trainables.atomic import atomic_write_text
from trainables.config import ModelConfig, TrainConfig
from trainables.loop import Trainer
from trainables.streamed_fold import StreamedFold
from trainables.metrics import VAL_METRICS
from trainables.models import build_model, save_model_dir

TRAIN_STATE = "train_state.pt"
BEST_DIR = "best"
HISTORY_FILE = "history.json"
VAL_LOGITS = "val_logits.npy"  # the best epoch's logits on the fold's validation rows (out-of-fold)
OOF_FILE = "oof.parquet"        # a streamed fold's: its validation rows' keys, labels and predictions
FAILED = "failed"  # the key of a worker's report that its fold raised (train_fold_worker)
FAILURE_NOTE = "failed_rank.json"  # in the fold's Ray run folder: a rank's error, for the ranks of the next attempt


def _seed_everything(seed: int) -> None:
    import random

    import numpy as np

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def write_checkpoint(directory: Path, trainer: Trainer, payload: dict, model_cfg: ModelConfig) -> None:
    """train_state.pt (exact resume) + best/ (the best model so far, loadable on its own) +
    history.json and val_logits.npy (what the driver reads without loading the training state)."""
    torch.save(trainer.state_dict(), directory / TRAIN_STATE)
    if trainer.best_val_logits is not None and isinstance(trainer.data, StreamedFold):
        trainer.data.write_oof(directory / OOF_FILE, trainer.best_val_logits, trainer.best_val_gold)
    elif trainer.best_val_logits is not None:
        np.save(directory / VAL_LOGITS, trainer.best_val_logits)
    fit = trainer.fit_state
    atomic_write_text(directory / HISTORY_FILE, json.dumps({"history": fit.history, "best_epoch": fit.best_epoch, "steps": fit.steps}))
    if trainer.best_weights is not None:
        save_model_dir(directory / BEST_DIR, trainer.raw_model, payload["text_encoder"], model_cfg,
                       payload["meta"], state_dict=trainer.best_weights)


class LiveBoard:
    """TensorBoard scalars as the fold trains: ``train/loss`` per logged step, every epoch's metrics
    (``epoch/<name>``), flushed at once so that they can be watched live; a no-op without a folder."""

    def __init__(self, folder: Optional[str]):
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=folder) if folder else None

    def step(self, step: int, loss: float) -> None:
        if self.writer is not None:
            self.writer.add_scalar("train/loss", loss, step)
            self.writer.flush()

    def epoch(self, metrics: dict) -> None:
        if self.writer is not None:
            for key, value in metrics.items():
                if key != "epoch" and isinstance(value, (int, float)):
                    self.writer.add_scalar(f"epoch/{key}", value, metrics["epoch"])
            self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def load_train_state(directory: str | Path) -> dict:
    return torch.load(Path(directory) / TRAIN_STATE, map_location="cpu", weights_only=False)


def train_fold_worker(config: dict) -> None:
    """Per-worker function of a TorchTrainer; ``config`` holds plain dicts and an ObjectRef to the fold data.

    An exception raised by the code or the data (a bad option, a shape mismatch) would be raised
    again by every retry, so it ends the fold at once: the worker reports it under ``FAILED`` and
    returns. Ray's own errors (a lost object) and a dead worker (SIGKILL, a lost node) are left to
    Ray Train, which restarts the fold from its last checkpoint.

    With several workers a failing rank cannot report alone (``ray.train.report`` waits for every
    rank), so it writes its error to ``config["failure_note"]`` (first writer wins) and raises; Ray
    Train restarts the group, and every rank of the new attempt finds the note and reports the error
    before training. A collective's error (a peer died: gloo/NCCL, connection reset) is not written,
    so a lost worker still restarts from the checkpoint.
    """
    note = Path(config["failure_note"]) if config.get("failure_note") else None
    if note is not None and note.is_file():
        _report_failure(json.loads(note.read_text())["error"])
        return
    try:
        _train_fold(config)
    except ray.exceptions.RayError:
        raise
    except Exception as exc:
        traceback.print_exc()
        message = f"{type(exc).__name__}: {exc}".splitlines()[0]
        if ray.train.get_context().get_world_size() == 1:
            _report_failure(message)
            return
        if note is not None and not _collective_error(exc):
            _write_note(note, message)
        raise


def _collective_error(exc: Exception) -> bool:
    """An error of torch.distributed's transport: what the ranks still alive see when a peer dies."""
    import torch.distributed as dist

    text = str(exc)
    return isinstance(exc, getattr(dist, "DistError", ())) or any(
        mark in text for mark in ("gloo", "NCCL", "Connection reset", "Connection closed", "Broken pipe"))


def _write_note(note: Path, message: str) -> None:
    """Create ``note`` holding ``message`` unless another rank's error got there first."""
    try:
        with open(note, "x") as out:
            out.write(json.dumps({"error": message, "rank": ray.train.get_context().get_world_rank()}))
    except FileExistsError:
        pass


def _report_failure(message: str) -> None:
    """Every rank reports the fold's error under ``FAILED``; NaN scores (Tune insists on its metric in
    every result; a searcher treats NaN as a failed trial) and, from rank 0, an empty checkpoint (the
    trainer's Result carries the metrics of its latest checkpoint)."""
    metrics = {FAILED: message, **dict.fromkeys(VAL_METRICS, float("nan"))}
    if ray.train.get_context().get_world_rank() != 0:
        ray.train.report(metrics)
        return
    with tempfile.TemporaryDirectory(prefix="fold-failed-") as tmp:
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp))


def _streamed_fold(payload: dict) -> StreamedFold:
    """A streamed run's fold (``data.streaming``): this worker's shard of the pool, and the whole pool to validate on."""
    stream = payload["stream"]
    return StreamedFold(ray.train.get_dataset_shard("train"), ray.train.get_dataset_shard("val"), stream["fold"],
                        stream["train_rows"], stream["counts"], payload["text_encoder"].pad_id, len(payload["meta"]["classes"]))


def _train_fold(config: dict) -> None:
    import sklearn.metrics  # noqa: F401  trainables.metrics imports it lazily: load it before the first epoch's clock
    payload = config["payload"]
    if isinstance(payload, ray.ObjectRef):
        payload = ray.get(payload)
    train_cfg, model_cfg = TrainConfig.model_validate(config["train"]), ModelConfig.model_validate(config["model"])
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    torch.set_num_threads(max(1, int(train_cfg.torch_threads or train_cfg.cpus_per_worker)))
    _seed_everything(config["seed"])
    data = payload["data"] if "data" in payload else _streamed_fold(payload)
    model = build_model(model_cfg, data.num_classes, payload["text_encoder"], classes=payload["meta"]["classes"])
    device = ray.train.torch.get_device()
    if world > 1:
        model = ray.train.torch.prepare_model(model)
    trainer = Trainer(model, data, train_cfg, seed=config["seed"], device=device, rank=rank, world=world,
                      log=print if rank == 0 else (lambda _: None), extra_hooks=payload.get("hooks", ()))
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as ckpt_dir:
            trainer.load_state_dict(load_train_state(ckpt_dir))
    elif config.get("resume_from"):
        trainer.load_state_dict(load_train_state(config["resume_from"]))
    # Where this worker process started (> 0 after a restart from a checkpoint) and on which node:
    # reported with every epoch, so restarts and fold placement show in the run's Tune results.
    placement = {"start_epoch": trainer.fit_state.epoch, "node_id": ray.get_runtime_context().get_node_id()}

    board = LiveBoard(config.get("tensorboard_dir") if rank == 0 else None)

    def on_epoch(trainer: Trainer, result) -> None:
        metrics = {**result.metrics, "stopped": int(result.stop), **placement}
        if rank != 0:
            ray.train.report(metrics)
            return
        board.epoch(result.metrics)
        with tempfile.TemporaryDirectory(prefix="fold-ckpt-") as tmp:
            write_checkpoint(Path(tmp), trainer, payload, model_cfg)
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp))

    stop_file = Path(config["stop_file"]) if config.get("stop_file") else None
    try:  # a scheduler that stops the fold's trial (the race, ASHA) writes stop_file: the fold ends at its next batch
        trainer.fit(on_epoch, on_step=board.step, stop_requested=(lambda: stop_file.exists()) if stop_file else (lambda: False))
    finally:
        board.close()
