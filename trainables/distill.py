"""Knowledge distillation: teacher logits -> any student through the training loop
(``TeacherDistillation``), TextBrewer layer-to-layer distillation of an HF classifier into a
shallower copy of itself (``self_distill``). Measuring either is orchestrator/evaluate/measure.py's job.

Plain PyTorch + TextBrewer: no Ray, no orchestrator. Both modes use ``losses.distill_loss`` for the
soft loss, so ``kind``, ``temperature`` and ``alpha`` mean the same thing in either.
"""
from __future__ import annotations

import copy
import re
import tempfile
from collections import defaultdict
from functools import partial
from typing import Optional, Sequence

import numpy as np
import torch
from torch import nn

from trainables.config import TrainConfig
from trainables.hooks import Hook, TrainState
from trainables.loop import FoldData, Trainer, epoch_batches
from trainables.tricks.losses import build_loss, distill_loss
from trainables.models.hf import HFClassifier, eager_attention
from trainables.tricks.optim import build_optimizer, build_scheduler
from trainables.batching import collate

MIXES = ("average", "take_turns")


class TeacherTargets:
    """The teacher logits [N, C] a student learns from in a given epoch, out of K teachers' [K, N, C].

    average: multiclass takes the mean logit, whose softmax is the fold ensemble's prediction
    (orchestrator/ensemble.py). Multilabel averages the sigmoid probabilities and maps the mean back
    to logits: the soft loss is a per-class Bernoulli, and a mean of logits would let one
    over-confident teacher decide a class (the ensemble averages probabilities for the same reason).
    take_turns: teacher ``epoch % K`` alone, so each teacher's view is learnt undiluted in turn.
    """

    def __init__(self, logits, mix: str = "average", multilabel: bool = False):
        logits = torch.tensor(np.asarray(logits), dtype=torch.float32)  # a copy: object-store arrays are read-only
        if logits.ndim != 3:
            raise ValueError(f"teacher logits: expected [K, N, C], got shape {tuple(logits.shape)}")
        if mix not in MIXES:
            raise ValueError(f"teacher_mix: expected one of {MIXES}, got {mix!r}")
        self.per_epoch = [average_teachers(logits, multilabel)] if mix == "average" else list(logits)

    def __call__(self, epoch: int, rows: torch.Tensor) -> torch.Tensor:
        return self.per_epoch[epoch % len(self.per_epoch)][rows.cpu()]


def average_teachers(logits: torch.Tensor, multilabel: bool) -> torch.Tensor:
    """[K, N, C] -> [N, C]: mean logits, or logit(mean sigmoid) for multilabel (clipped to stay finite)."""
    if not multilabel:
        return logits.mean(0)
    return torch.logit(torch.sigmoid(logits).mean(0), eps=1e-6)


class TeacherDistillation(Hook):
    """Replaces the training loss by ``distill_loss`` against the teacher logits of the batch rows.

    The loop uses the first non-None hook loss instead of its own, so the hard-label loss is counted
    once, inside ``distill_loss`` with weight ``1 - alpha``. A config hook that also replaces the loss
    (R-Drop) comes first in the list and would win: do not combine them.
    """

    def __init__(self, teacher_logits, kind: str = "kl", temperature: float = 4.0, alpha: float = 0.9,
                 multilabel: bool = False, mix: str = "average"):
        self.targets = TeacherTargets(teacher_logits, mix, multilabel)
        self.kind, self.temperature, self.alpha, self.multilabel = kind, temperature, alpha, multilabel

    def loss(self, state: TrainState, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        logits = state.forward(batch).float()
        teacher = self.targets(state.epoch, batch["index"]).to(logits.device)
        return distill_loss(logits, teacher, batch["labels"], self.kind, self.temperature, self.alpha,
                            state.loss_fn, self.multilabel)


# ---- self-distillation with TextBrewer --------------------------------------------------------------

_LAYER_INDEX = re.compile(r"\.layer\.(\d+)\.")


def shallower_copy(teacher: HFClassifier, layers: Sequence[int]) -> HFClassifier:
    """A student with ``len(layers)`` encoder layers: the teacher's config, embeddings, head and,
    as student layer i, teacher layer ``layers[i]``."""
    depth = teacher.encoder.config.num_hidden_layers
    if not layers or any(not 0 <= k < depth for k in layers):
        raise ValueError(f"student_layers: expected teacher layers in [0, {depth}), got {list(layers)}")
    config = copy.deepcopy(teacher.encoder.config)
    config.num_hidden_layers = len(layers)
    student = HFClassifier.from_config(config, teacher.head.linear.out_features, dropout=teacher.head.dropout.p,
                                       samples=teacher.head.samples, pooling=teacher.pooling)
    source = teacher.state_dict()
    # ".layer.<i>." names encoder layer i in BERT, RoBERTa, ELECTRA, DeBERTa, XLM-R, DistilBERT, XLNet
    student.load_state_dict({key: source[_LAYER_INDEX.sub(lambda m: f".layer.{layers[int(m[1])]}.", key, count=1)]
                             for key in student.state_dict()})
    return student


class _Brewable(nn.Module):
    """An HFClassifier as TextBrewer calls it, ``model(**batch)`` -> (logits, encoder outputs).

    Forward hooks on the encoder ask it for hidden states (and attentions) and keep its output, so
    the classifier's own pooling and head run unchanged.
    """

    def __init__(self, model: HFClassifier, attentions: bool):
        super().__init__()
        self.model, self.attentions = model, attentions

    def forward(self, input_ids, attention_mask, **_):  # labels and row index ride along in the batch
        kept = {}
        ask = self.model.encoder.register_forward_pre_hook(
            lambda m, args, kwargs: (args, {**kwargs, "output_hidden_states": True, "output_attentions": self.attentions}),
            with_kwargs=True)
        keep = self.model.encoder.register_forward_hook(lambda m, args, out: kept.setdefault("out", out))
        try:
            logits = self.model(input_ids=input_ids, attention_mask=attention_mask)
        finally:
            ask.remove()
            keep.remove()
        return logits.float(), kept["out"]


def _features(outputs) -> dict:
    logits, encoder = outputs
    found = {"logits": logits, "hidden": encoder.hidden_states, "attention": encoder.attentions}
    return {k: v for k, v in found.items() if v is not None}


def student_adaptor(loss_fn, batch: dict, outputs) -> dict:
    """TextBrewer's view of the student: logits, hidden states, attentions, input mask, hard-label loss."""
    features = _features(outputs)
    return {**features, "inputs_mask": batch["attention_mask"], "losses": loss_fn(features["logits"], batch["labels"])}


def teacher_adaptor(targets: Optional[TeacherTargets], batches: _EpochBatches, batch: dict, outputs) -> dict:
    """TextBrewer's view of the teacher; with ``targets`` the soft labels are the (cached, mixed)
    teacher logits of the batch rows instead of this one teacher's."""
    features = _features(outputs)
    if targets is not None:
        features["logits"] = targets(batches.epoch, batch["index"]).to(features["logits"].device)
    return features


def _kd_loss_type(kind: str, multilabel: bool) -> str:
    """Register ``distill_loss``'s soft term with TextBrewer (its own "ce" has no T^2 scaling and no
    multilabel form) and return its name for ``DistillationConfig(kd_loss_type=...)``."""
    from textbrewer.presets import register_new

    def soft(logits_s, logits_t, temperature):
        return distill_loss(logits_s, logits_t, kind=kind, temperature=temperature, multilabel=multilabel)

    name = f"orchestrator_{kind}_{'multilabel' if multilabel else 'multiclass'}"
    register_new("kd_loss", name, soft)
    return name


def intermediate_matches(layers: Sequence[int], features: Sequence[str]) -> list[dict]:
    """Student layer i <-> teacher layer ``layers[i]``: hidden states (index 0 = embeddings, so the
    layer outputs are 1-based) by MSE, attention probabilities by MSE."""
    matches = []
    if "hidden" in features:
        pairs = [(0, 0)] + [(t + 1, s + 1) for s, t in enumerate(layers)]
        matches += [{"layer_T": t, "layer_S": s, "feature": "hidden", "loss": "hidden_mse", "weight": 1} for t, s in pairs]
    if "attention" in features:
        matches += [{"layer_T": t, "layer_S": s, "feature": "attention", "loss": "attention_mse", "weight": 1}
                    for s, t in enumerate(layers)]
    return matches


class _EpochBatches:
    """The loop's training batches (``loop.epoch_batches``), a fresh order per pass; ``epoch``
    counts the passes TextBrewer has started (for take_turns)."""

    def __init__(self, data: FoldData, cfg, seed: int):
        self.data, self.cfg, self.seed, self.epoch = data, cfg, seed, -1

    def __len__(self) -> int:
        return len(epoch_batches(self.data, self.cfg, self.seed, 0))

    def __iter__(self):
        self.epoch += 1
        dtype = torch.float32 if self.data.multilabel else torch.long
        for rows in epoch_batches(self.data, self.cfg, self.seed, self.epoch):
            batch = collate([self.data.train_ids[r] for r in rows], torch.as_tensor(self.data.train_labels[rows], dtype=dtype),
                            self.data.pad_id)
            yield {**batch, "index": torch.as_tensor(rows, dtype=torch.long)}


class _LossLog:
    """Stands in for TextBrewer's TensorBoard writer: per-epoch means of every loss term it logs."""

    def __init__(self):
        self.sums, self.counts = defaultdict(float), defaultdict(int)

    def add_scalar(self, name: str, value: float, step: int) -> None:
        name = name.removeprefix("scalar/").removeprefix("unweighted_")
        self.sums[name] += float(value)
        self.counts[name] += 1

    def pop_means(self) -> dict[str, float]:
        means = {f"train_{k}": self.sums[k] / self.counts[k] for k in self.sums}
        self.sums.clear()
        self.counts.clear()
        return means


def self_distill(teacher: HFClassifier, student_layers: Sequence[int], data: FoldData, train_cfg: TrainConfig,
                 intermediate: Sequence[str] = ("hidden",), kind: str = "kl", temperature: float = 4.0,
                 alpha: float = 0.9, teacher_logits=None, teacher_mix: str = "average", seed: int = 42,
                 device: str | torch.device = "cpu") -> tuple[HFClassifier, list[dict]]:
    """Distil ``teacher`` into ``shallower_copy(teacher, student_layers)`` with TextBrewer's GeneralDistiller.

    Loss = alpha * soft(student, teacher logits) + (1 - alpha) * hard-label loss + the intermediate
    matches (weight 1 each). ``teacher_logits`` [K, N, C] on ``data.train_ids`` (e.g. the fold
    ensemble's), mixed by ``teacher_mix``, replace ``teacher``'s own logits as soft labels; the
    hidden states/attentions always come from ``teacher``. The optimizer and schedule are the loop's
    (``train_cfg``); TextBrewer runs in fp32 (its fp16 needs apex) and every epoch, no early stopping.
    Returns the student with the weights of its best validation epoch, and the per-epoch history.
    """
    from textbrewer import DistillationConfig, GeneralDistiller, TrainingConfig

    torch.manual_seed(seed)
    device = torch.device(device)
    student = shallower_copy(teacher, student_layers)
    teacher.to(device).eval()
    evaluator = Trainer(student, data, train_cfg, seed=seed, device=device)  # the loop's validation metrics
    loss_fn = build_loss(train_cfg, data.num_classes, data.multilabel, data.class_counts())
    batches = _EpochBatches(data, train_cfg, seed)
    targets = TeacherTargets(teacher_logits, teacher_mix, data.multilabel) if teacher_logits is not None else None
    attentions = "attention" in intermediate
    losses, history = _LossLog(), []

    def on_epoch(model, step):  # TextBrewer's callback, once at the end of every epoch
        metrics = {"epoch": len(history) + 1, **losses.pop_means(), **evaluator.evaluate()}
        metrics["improved"] = int(evaluator.track_best(metrics, metrics["epoch"]))
        history.append(metrics)

    with eager_attention(attentions, teacher, student), tempfile.TemporaryDirectory(prefix="textbrewer-") as output_dir:
        distiller = GeneralDistiller(
            TrainingConfig(device=device, output_dir=output_dir, gradient_accumulation_steps=train_cfg.grad_accum),
            DistillationConfig(temperature=temperature, kd_loss_type=_kd_loss_type(kind, data.multilabel),
                               kd_loss_weight=alpha, hard_label_weight=1 - alpha,
                               intermediate_matches=intermediate_matches(student_layers, intermediate)),
            _Brewable(teacher, attentions), _Brewable(student, attentions),
            partial(teacher_adaptor, targets, batches), partial(student_adaptor, loss_fn))
        distiller.tb_writer = losses  # its only loss log; output_dir gets a weights file per epoch, unused
        total_steps = len(batches) // train_cfg.grad_accum * train_cfg.epochs
        distiller.train(build_optimizer(student, train_cfg), batches, num_epochs=train_cfg.epochs,
                        scheduler_class=partial(build_scheduler, train_cfg=train_cfg, total_steps=total_steps),
                        scheduler_args={}, max_grad_norm=train_cfg.grad_clip or -1.0, callback=on_epoch)
    student.load_state_dict(evaluator.best_weights)
    return student.eval(), history
