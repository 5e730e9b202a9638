"""Training losses, class weights, the symmetric KL of R-Drop, and distillation losses.

Nothing here imports the orchestrator: ``build_loss`` reads the ``TrainConfig``
loss fields (loss, focal_gamma, poly_epsilon, class_weights, label_smoothing).
"""
from __future__ import annotations

from functools import partial
from typing import Callable, Optional, Sequence

import torch
import torch.nn.functional as F

from trainables.config import TrainConfig
from trainables.hooks import Hook, TrainState

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
MULTILABEL_LOSSES = {"bce", "zlpr"}


def class_weights(spec, num_classes: int, class_counts: Optional[Sequence[int]]) -> Optional[torch.Tensor]:
    """``train.class_weights`` as a float tensor [C], or None for "none".

    "balanced" is ``sum(counts) / (C * counts)``, sklearn's ``compute_class_weight`` for
    single-label data; for multilabel data the counts are positives per class. A class absent
    from the counts is weighted as if seen once rather than dividing by zero (small CV folds).
    """
    if isinstance(spec, str) and spec == "none":
        return None
    if isinstance(spec, str) and spec == "balanced":
        if class_counts is None or len(class_counts) != num_classes:
            raise ValueError(f"train.class_weights: 'balanced' needs {num_classes} class counts, got {class_counts!r}")
        counts = torch.as_tensor(class_counts, dtype=torch.float).clamp(min=1)
        return counts.sum() / (num_classes * counts)
    if isinstance(spec, str) or len(spec) != num_classes:
        raise ValueError(f"train.class_weights: expected 'none', 'balanced' or a list of {num_classes} numbers, got {spec!r}")
    return torch.as_tensor(spec, dtype=torch.float)


def _on(weight: Optional[torch.Tensor], like: torch.Tensor) -> Optional[torch.Tensor]:
    # Weights are built on the CPU; logits may live on a GPU.
    return None if weight is None else weight.to(like.device, like.dtype)


def _weighted_mean(per_sample: torch.Tensor, labels: torch.Tensor, weight: Optional[torch.Tensor]) -> torch.Tensor:
    """Mean normalised like torch's weighted CE (divide by the summed target weights), so that
    focal(gamma=0) and poly(eps=0) equal CE with the same weights."""
    if weight is None:
        return per_sample.mean()
    w = _on(weight, per_sample)[labels]
    return (w * per_sample).sum() / w.sum()


def cross_entropy(logits, labels, weight=None, label_smoothing: float = 0.0) -> torch.Tensor:
    """Multiclass CE with optional class weights and label smoothing (torch semantics)."""
    return F.cross_entropy(logits, labels, weight=_on(weight, logits), label_smoothing=label_smoothing)


def focal_loss(logits, labels, gamma: float = 2.0, weight=None) -> torch.Tensor:
    """Focal loss ``-alpha_y (1 - p_y)^gamma log p_y``; ``weight`` gives the per-class alpha."""
    log_pt = logits.log_softmax(-1).gather(1, labels[:, None]).squeeze(1)
    # The clamp keeps d/dp (1-p)^gamma finite when p rounds to 1 and gamma < 1 (else NaN grads).
    modulator = (1 - log_pt.exp()).clamp(min=1e-12) ** gamma
    return _weighted_mean(-modulator * log_pt, labels, weight)


def poly1_loss(logits, labels, epsilon: float = 1.0, weight=None) -> torch.Tensor:
    """Poly-1 loss ``CE + epsilon * (1 - p_y)`` (Leng et al., 2022)."""
    log_pt = logits.log_softmax(-1).gather(1, labels[:, None]).squeeze(1)
    return _weighted_mean(-log_pt + epsilon * (1 - log_pt.exp()), labels, weight)


def seq2seq_nll(scores, labels, weight=None) -> torch.Tensor:
    """Text-to-text loss: teacher-forced NLL of the gold target sequence, ``-scores[gold]``, where
    ``scores`` are sequence log-probabilities (``T5Classifier``). Summed over the target's tokens
    (T5's own loss times the target length) and averaged over examples, so every example counts
    the same whatever its class name's length. Only for log-probabilities: on other logits it is
    unbounded below."""
    return _weighted_mean(-scores.gather(1, labels[:, None]).squeeze(1), labels, weight)


def bce_loss(logits, labels, pos_weight=None) -> torch.Tensor:
    """Multilabel binary cross-entropy on logits; ``pos_weight`` [C] scales the positive terms."""
    return F.binary_cross_entropy_with_logits(logits, labels.to(logits.dtype), pos_weight=_on(pos_weight, logits))


def zlpr_loss(logits, labels) -> torch.Tensor:
    """ZLPR / multilabel categorical cross-entropy (Su Jianlin):
    ``log(1 + sum_neg e^{s_j}) + log(1 + sum_pos e^{-s_i})``, averaged over the batch.
    It pushes positives above 0 and negatives below, so its decision threshold is logit 0."""
    positive = labels > 0.5
    zero = logits.new_zeros(logits.shape[:-1] + (1,))  # the "1 +" inside each log
    neg = torch.logsumexp(torch.cat([logits.masked_fill(positive, float("-inf")), zero], -1), -1)
    pos = torch.logsumexp(torch.cat([(-logits).masked_fill(~positive, float("-inf")), zero], -1), -1)
    return (neg + pos).mean()


def build_loss(train_cfg: TrainConfig, num_classes: int, multilabel: bool, class_counts: Optional[Sequence[int]] = None) -> LossFn:
    """The loss ``fn(logits [B,C], labels) -> scalar`` chosen by ``train_cfg.loss``."""
    kind = train_cfg.loss
    if multilabel != (kind in MULTILABEL_LOSSES):
        raise ValueError(f"train.loss: {kind!r} does not fit {'multilabel' if multilabel else 'single-label'} data")
    if train_cfg.label_smoothing and kind != "ce":
        raise ValueError(f"train.label_smoothing: only used by loss 'ce', not {kind!r}")
    weight = class_weights(train_cfg.class_weights, num_classes, class_counts)
    if kind == "zlpr":
        if weight is not None:
            raise ValueError("train.class_weights: loss 'zlpr' takes no class weights")
        return zlpr_loss
    if kind == "bce":
        return partial(bce_loss, pos_weight=weight)
    if kind == "focal":
        return partial(focal_loss, gamma=train_cfg.focal_gamma, weight=weight)
    if kind == "poly":
        return partial(poly1_loss, epsilon=train_cfg.poly_epsilon, weight=weight)
    if kind == "seq2seq":
        return partial(seq2seq_nll, weight=weight)
    return partial(cross_entropy, weight=weight, label_smoothing=train_cfg.label_smoothing)


def kl_divergence_sym(logits_a: torch.Tensor, logits_b: torch.Tensor, multilabel: bool = False) -> torch.Tensor:
    """``(KL(P||Q) + KL(Q||P)) / 2`` summed over classes, averaged over the batch.

    P, Q are softmax distributions, or per-class Bernoullis (sigmoid) for multilabel. In both
    cases the symmetric KL reduces to ``sum (p - q) * (a - b)``: for softmax the log-partition
    terms cancel because ``sum(p - q) = 0``; for a Bernoulli the log-odds are the logits.
    """
    probs = torch.sigmoid if multilabel else partial(torch.softmax, dim=-1)
    return 0.5 * ((probs(logits_a) - probs(logits_b)) * (logits_a - logits_b)).sum(-1).mean()


def _soft_cross_entropy(logits, target_logits, multilabel: bool) -> torch.Tensor:
    """``-sum_c t_c log s_c`` per example (Bernoulli terms for multilabel), batch mean."""
    if multilabel:
        return F.binary_cross_entropy_with_logits(logits, target_logits.sigmoid(), reduction="none").sum(-1).mean()
    return -(target_logits.softmax(-1) * logits.log_softmax(-1)).sum(-1).mean()


def distill_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    labels: Optional[torch.Tensor] = None,
    kind: str = "kl",
    temperature: float = 1.0,
    alpha: float = 1.0,
    hard_loss_fn: Optional[LossFn] = None,
    multilabel: bool = False,
) -> torch.Tensor:
    """``alpha * soft + (1 - alpha) * hard_loss_fn(student, labels)``.

    soft is, on logits divided by ``temperature`` and scaled by T^2 (Hinton et al.) so that its
    gradients keep their size across temperatures: "kl" KL(teacher || student), "ce" the soft
    cross-entropy (same gradient as kl, plus the teacher's entropy); "mse" is plain logit
    matching on raw logits (no temperature).
    """
    teacher_logits = teacher_logits.detach()
    if kind == "mse":
        soft = F.mse_loss(student_logits, teacher_logits)
    elif kind in ("ce", "kl"):
        t = temperature
        soft = _soft_cross_entropy(student_logits / t, teacher_logits / t, multilabel)
        if kind == "kl":
            soft = soft - _soft_cross_entropy(teacher_logits / t, teacher_logits / t, multilabel)
        soft = soft * t * t
    else:
        raise ValueError(f"distill kind: expected 'ce', 'kl' or 'mse', got {kind!r}")
    if alpha == 1.0:
        return soft
    if hard_loss_fn is None or labels is None:
        raise ValueError("distill: alpha < 1 needs labels and a hard_loss_fn")
    return alpha * soft + (1 - alpha) * hard_loss_fn(student_logits, labels)


class RDrop(Hook):
    """R-Drop (Liang et al., 2021): two dropout passes, loss = mean of their losses
    + alpha * symmetric KL between them. The two passes run as one doubled batch."""

    def __init__(self, alpha: float, multilabel: bool = False):
        self.alpha = alpha
        self.multilabel = multilabel

    def loss(self, state: TrainState, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        doubled = {k: torch.cat([batch[k], batch[k]]) for k in ("input_ids", "attention_mask")}
        a, b = state.forward(doubled).float().chunk(2)
        labels = batch["labels"]
        clean = (state.loss_fn(a, labels) + state.loss_fn(b, labels)) / 2
        return clean + self.alpha * kl_divergence_sym(a, b, self.multilabel)
