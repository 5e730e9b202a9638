"""THE training loop: one fold, any model kind, every trick through hooks.

Plain PyTorch: no Ray, no YAML, no HTTP. ``trainables/ray_worker.py`` runs it inside Ray Train;
a notebook can call ``Trainer(...).fit()`` directly.

Order of one optimizer step (nanoGPT style): micro-batches (forward, loss, backward, adversarial
hooks) -> unscale -> clip -> step -> scheduler -> zero_grad -> averaging hooks. Evaluation and the
best checkpoint happen at epoch ends, inside the hooks' ``eval_weights`` (EMA/SWA weights).
"""
from __future__ import annotations

import contextlib
import copy
import math
import random
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Optional, Sequence

import numpy as np
import torch
from torch import nn

from trainables.config import TrainConfig
from trainables.hooks import Hook, HookList, TrainState
from trainables.inference import predict_logits
from trainables.tricks.losses import build_loss
from trainables.metrics import compute_metrics, improves, probabilities
from trainables.tricks.optim import build_optimizer, build_scheduler
from trainables.batching import BucketBatchSampler, collate
from trainables.tricks.build import build_hooks


# One training batch as a fold's data hands it to the loop: token ids per row, their labels, and the
# rows' positions in the fold's training rows (for hooks with per-row data), or None when streamed.
TrainBatch = tuple[list, np.ndarray, Optional[list[int]]]


@dataclass
class FoldData:
    """Token ids and labels of one fold (labels: class ids, or multi-hot rows when multilabel), in memory.

    The loop reads a fold only through ``class_counts``, ``train_batch_count``, ``train_batches`` and
    ``validation``; ``trainables/streamed_fold.py`` implements the same four over Ray Data shards."""

    train_ids: list[list[int]]
    train_labels: np.ndarray
    val_ids: list[list[int]]
    val_labels: np.ndarray
    pad_id: int
    num_classes: int
    multilabel: bool = False

    def class_counts(self) -> list[int]:
        if self.multilabel:
            return self.train_labels.sum(0).astype(int).tolist()
        return np.bincount(self.train_labels, minlength=self.num_classes).tolist()

    def train_batch_count(self, cfg: TrainConfig, seed: int, rank: int = 0, world: int = 1) -> int:
        return len(epoch_batches(self, cfg, seed, 0, rank, world))

    def train_batches(self, cfg: TrainConfig, seed: int, epoch: int, rank: int = 0, world: int = 1) -> Iterator[TrainBatch]:
        for rows in epoch_batches(self, cfg, seed, epoch, rank, world):
            yield [self.train_ids[r] for r in rows], self.train_labels[rows], rows

    def validation(self, model: nn.Module, batch_size: int, device: torch.device) -> tuple[np.ndarray, np.ndarray]:
        """(logits, labels) of the validation rows, in their order."""
        return predict_logits(model, self.val_ids, self.pad_id, batch_size, device), self.val_labels


@dataclass
class EpochResult:
    """What one epoch reports: metrics, whether it is the best so far, whether to stop."""

    metrics: dict[str, float]
    improved: bool
    stop: bool


@dataclass
class FitState:
    """Everything beyond the model needed to resume exactly at an epoch boundary."""

    epoch: int = 0
    best_score: Optional[float] = None
    best_epoch: Optional[int] = None  # 1-based, like the history rows' "epoch"
    bad_epochs: int = 0
    history: list[dict] = field(default_factory=list)
    steps: list[list[float]] = field(default_factory=list)  # [optimizer step, mean train loss since the last entry]


def best_row(history: Sequence[dict]) -> dict:
    """The history row of the best epoch: the last one that improved (``Trainer.track_best`` decided it)."""
    return next(h for h in reversed(history) if h["improved"])


def autocast_factory(amp: str, device: torch.device) -> tuple[Callable[[], contextlib.AbstractContextManager], Optional[torch.amp.GradScaler]]:
    """(autocast context factory, grad scaler). 'auto' = fp16 on CUDA, off on CPU (bf16 is ~5x slower on CPUs without AMX)."""
    if amp == "auto":
        amp = "fp16" if device.type == "cuda" else "off"
    if amp == "off":
        return contextlib.nullcontext, None
    dtype = torch.float16 if amp == "fp16" else torch.bfloat16
    scaler = torch.amp.GradScaler(device.type) if amp == "fp16" and device.type == "cuda" else None
    return (lambda: torch.autocast(device.type, dtype=dtype)), scaler


def epoch_batches(data: FoldData, cfg: TrainConfig, seed: int, epoch: int, rank: int = 0, world: int = 1) -> list[list[int]]:
    """Index batches of one epoch, deterministic in (seed, epoch); rank r of world takes every world-th batch.
    With several ranks the list is first padded with its own first batches (as DistributedSampler pads
    rows) so every rank runs the same number of steps: DDP's gradient all-reduce waits for each rank."""
    n, size = len(data.train_ids), cfg.batch_size
    if cfg.sampler == "bucket":
        sampler = BucketBatchSampler([len(x) for x in data.train_ids], size, seed=seed, pool=cfg.bucket_pool,
                                     noise=cfg.bucket_noise, strata=label_strata(data) if cfg.bucket_stratify else None)
        sampler.set_epoch(epoch)
        batches = list(sampler)
    else:
        gen = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
        if cfg.sampler == "weighted":
            order = torch.multinomial(torch.as_tensor(sample_weights(data), dtype=torch.double), n, replacement=True, generator=gen).tolist()
        else:
            order = torch.randperm(n, generator=gen).tolist()
        batches = [order[i : i + size] for i in range(0, n, size)]
    batches += batches[: -len(batches) % world]
    return batches[rank::world]


def label_strata(data: FoldData) -> list[int]:
    """One stratum per row for label-mixed bucketing: its class (multilabel: its rarest label, -1 for none)."""
    if not data.multilabel:
        return np.asarray(data.train_labels).astype(int).tolist()
    return rarest_labels(data).tolist()


def rarest_labels(data: FoldData) -> np.ndarray:
    """Multilabel: each row's least frequent label (by training count), -1 for a row with none."""
    labels = np.asarray(data.train_labels) > 0
    counts = np.asarray(data.class_counts())
    rarest = np.where(labels, counts[None, :], np.iinfo(np.int64).max).argmin(1)
    return np.where(labels.any(1), rarest, -1).astype(int)


def sample_weights(data: FoldData) -> np.ndarray:
    """WeightedRandomSampler weights: 1/class count (multilabel: of the row's rarest label)."""
    counts = np.maximum(np.asarray(data.class_counts(), dtype=float), 1.0)
    if not data.multilabel:
        return 1.0 / counts[data.train_labels]
    rarest = rarest_labels(data)
    return np.where(rarest >= 0, 1.0 / counts[rarest], 1.0 / counts.max())


class Trainer:
    """Trains one model on one fold. ``fit`` yields control to ``on_epoch`` after every epoch."""

    def __init__(self, model: nn.Module, data: FoldData, cfg: TrainConfig, seed: int = 42,
                 device: str | torch.device = "cpu", rank: int = 0, world: int = 1, log: Callable[[str], None] = lambda _: None,
                 extra_hooks: Sequence[Hook] = ()):
        """``extra_hooks`` join the config's tricks (e.g. distillation, which needs teacher logits)."""
        self.data, self.cfg, self.seed, self.rank, self.world, self.log = data, cfg, seed, rank, world, log
        self.device = torch.device(device)
        self.model = model.to(self.device)
        self.raw_model = getattr(model, "module", model)  # unwrapped when DDP wraps it
        self.batches_per_epoch = data.train_batch_count(cfg, seed, rank, world)
        self.steps_per_epoch = math.ceil(self.batches_per_epoch / cfg.grad_accum)
        optimizer = build_optimizer(self.raw_model, cfg)
        self.scheduler = build_scheduler(optimizer, cfg, total_steps=self.steps_per_epoch * cfg.epochs)
        autocast, scaler = autocast_factory(cfg.amp, self.device)
        loss_fn = build_loss(cfg, data.num_classes, data.multilabel, data.class_counts())
        self.state = TrainState(model=self.model, optimizer=optimizer, loss_fn=loss_fn, autocast=autocast,
                                scaler=scaler, grad_accum=cfg.grad_accum)
        self.hooks: HookList = HookList([*build_hooks(cfg, data.multilabel).hooks, *extra_hooks])
        self.fit_state = FitState()
        self.best_weights: Optional[dict[str, torch.Tensor]] = None
        self.val_logits: Optional[np.ndarray] = None       # of the latest evaluate()
        self.best_val_logits: Optional[np.ndarray] = None  # of the best epoch: its out-of-fold predictions
        self.val_gold = self.best_val_gold = None           # the labels validation returned with them
        self._started = False
        self.interrupted = False  # fit ended mid-epoch on stop_requested
        self.on_step: Callable[[int, float], None] = lambda *_: None
        self.stop_requested: Callable[[], bool] = lambda: False

    # ---- training ---------------------------------------------------------------------------
    def fit(self, on_epoch: Callable[["Trainer", EpochResult], None] = lambda *_: None,
            until_epoch: Optional[int] = None, on_step: Callable[[int, float], None] = lambda *_: None,
            stop_requested: Callable[[], bool] = lambda: False) -> FitState:
        """Train from the current state to the last epoch (or ``until_epoch``) or early stop;
        ``on_step(step, loss)`` sees each entry of ``fit_state.steps`` as it is logged. When
        ``stop_requested()`` turns true (checked before every batch) training ends there, mid-epoch,
        without another ``on_epoch``: the caller no longer wants this fold (``interrupted`` is set)."""
        self.on_step, self.stop_requested = on_step, stop_requested
        if not self._started:
            self.hooks.on_fit_start(self.state)
            self._started = True
        last = min(self.cfg.epochs, until_epoch or self.cfg.epochs)
        while self.fit_state.epoch < last:
            result = self.run_epoch()
            if result is None:
                break
            on_epoch(self, result)
            if result.stop:
                break
        return self.fit_state

    def run_epoch(self) -> Optional[EpochResult]:
        """One epoch and its evaluation; None if ``stop_requested`` interrupted it."""
        epoch, cfg, state = self.fit_state.epoch, self.cfg, self.state
        state.epoch = epoch
        self.model.train()
        batches, last = self.data.train_batches(cfg, self.seed, epoch, self.rank, self.world), self.batches_per_epoch
        started, seen, loss_sum, window = time.perf_counter(), 0, 0.0, [0.0, 0]
        for i, (ids, labels, rows) in enumerate(batches):
            if self.stop_requested():
                self.interrupted = True
                return None
            batch = self._batch(ids, labels, rows)
            loss = self.hooks.loss(state, batch)
            if loss is None:
                loss = state.compute_loss(batch)
            state.backward(loss)
            self.hooks.after_backward(state, batch)
            value = loss.item() * len(ids)
            loss_sum, seen, window = loss_sum + value, seen + len(ids), [window[0] + value, window[1] + len(ids)]
            if (i + 1) % cfg.grad_accum == 0 or i + 1 == last:
                self._optimizer_step()
                if state.step % cfg.log_every_steps == 0 or i + 1 == last:
                    self.fit_state.steps.append([state.step, window[0] / window[1]])
                    self.on_step(state.step, window[0] / window[1])
                    window = [0.0, 0]
        self.hooks.on_epoch_end(state, epoch)
        train_time = time.perf_counter() - started
        with self.hooks.eval_weights(state):
            metrics = self.evaluate()
            improved = self.track_best(metrics, epoch + 1)
        metrics.update(epoch=epoch + 1, improved=int(improved), train_loss=loss_sum / max(seen, 1), epoch_time_s=train_time,
                       train_samples_per_s=seen / max(train_time, 1e-9), lr=float(self.scheduler.get_last_lr()[0]))
        self.fit_state.history.append(metrics)
        self.fit_state.epoch = epoch + 1
        patience = cfg.early_stopping_patience
        stop = patience is not None and self.fit_state.bad_epochs >= patience
        self.log(f"epoch {epoch + 1}/{cfg.epochs} " + " ".join(f"{k}={v:.4f}" for k, v in metrics.items() if k.startswith("val_")))
        return EpochResult(metrics, improved, stop)

    def _batch(self, ids: list, labels: np.ndarray, rows: Optional[Sequence[int]]) -> dict[str, torch.Tensor]:
        labels = torch.as_tensor(labels, dtype=torch.float32 if self.data.multilabel else torch.long)
        batch = collate(ids, labels, self.data.pad_id)
        if rows is not None:
            batch["index"] = torch.as_tensor(rows, dtype=torch.long)  # rows of train: hooks look up per-row data (teacher logits)
        return {k: v.to(self.device, non_blocking=True) for k, v in batch.items()}

    def _optimizer_step(self) -> None:
        state, optimizer = self.state, self.state.optimizer
        if state.scaler is not None:
            state.scaler.unscale_(optimizer)
        if self.cfg.grad_clip:
            nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.grad_clip)
        if state.scaler is not None:
            state.scaler.step(optimizer)
            state.scaler.update()
        else:
            optimizer.step()
        self.scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        state.step += 1
        self.hooks.after_optimizer_step(state)

    # ---- evaluation ---------------------------------------------------------------------------
    def evaluate(self) -> dict[str, float]:
        """Validation loss and metrics (val_*) of the current (or averaged) weights."""
        logits, gold = self.data.validation(self.raw_model, self.cfg.eval_batch_size, self.device)
        self.val_logits, self.val_gold = logits, gold
        labels = torch.tensor(gold, dtype=torch.float32 if self.data.multilabel else torch.long)  # copy: object-store arrays are read-only
        loss = self.state.loss_fn(torch.as_tensor(logits), labels).item()
        scores = compute_metrics(gold, probabilities(logits, self.data.multilabel), self.data.multilabel, self.cfg.threshold)
        return {"val_loss": loss, **{f"val_{k}": float(v) for k, v in scores.items() if isinstance(v, (int, float))}}

    def track_best(self, metrics: dict[str, float], epoch: int) -> bool:
        """Decide whether ``epoch`` (1-based) is the best so far and keep a CPU copy of its weights
        (called inside eval_weights, so EMA/SWA count)."""
        score = metrics[f"val_{self.cfg.metric}"]
        improved = improves(self.cfg.metric, score, self.fit_state.best_score)
        if improved:
            self.fit_state.best_score, self.fit_state.best_epoch, self.fit_state.bad_epochs = score, epoch, 0
            self.best_weights = {k: v.detach().cpu().clone() for k, v in self.raw_model.state_dict().items()}
            self.best_val_logits, self.best_val_gold = self.val_logits, self.val_gold
        else:
            self.fit_state.bad_epochs += 1
        return improved

    # ---- checkpoint / resume ----------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Full training state at an epoch boundary: resuming from it continues bit-for-bit."""
        return {
            "model": self.raw_model.state_dict(),
            "optimizer": self.state.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.state.scaler.state_dict() if self.state.scaler is not None else None,
            "hooks": self.hooks.state_dict(),
            "step": self.state.step,
            "fit_state": copy.deepcopy(vars(self.fit_state)),
            "best_weights": self.best_weights,
            "best_val_logits": self.best_val_logits,
            "best_val_gold": self.best_val_gold,
            "rng": {"torch": torch.get_rng_state(), "python": random.getstate(), "numpy": np.random.get_state(),
                    "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None},
            "started": self._started,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.raw_model.load_state_dict(state["model"])
        self.state.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if self.state.scaler is not None and state["scaler"] is not None:
            self.state.scaler.load_state_dict(state["scaler"])
        self.hooks.load_state_dict(state["hooks"])
        self.state.step = state["step"]
        self.fit_state = FitState(**state["fit_state"])
        self.best_weights = state["best_weights"]
        self.best_val_logits = state.get("best_val_logits")
        self.best_val_gold = state.get("best_val_gold")
        self._started = state["started"]
        rng = state["rng"]
        torch.set_rng_state(rng["torch"])
        random.setstate(rng["python"])
        np.random.set_state(rng["numpy"])
        if rng["cuda"] is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(rng["cuda"])
