"""Adversarial training hooks.

FGM, PGD and FreeLB perturb the rows of the input embedding matrix used by the batch; AWP
perturbs the weight matrices. Each runs in ``after_backward``: the clean gradient is already in
``.grad``, the hook adds the gradient of an adversarial loss through ``TrainState.backward``
(so AMP scaling and accumulation apply) and restores the perturbed weights bit-exactly.
"""
from __future__ import annotations

import contextlib

import torch
from torch import nn

from trainables.hooks import Hook, TrainState
from trainables.tricks.optim import unwrap_model


def _unit(grad: torch.Tensor, size) -> torch.Tensor:
    """``size * grad / ||grad||``; zero for a zero or non-finite gradient (an fp16 overflow:
    the grad scaler skips that step anyway)."""
    norm = grad.norm()
    if norm == 0 or not torch.isfinite(norm):
        return torch.zeros_like(grad)
    return grad * (size / norm)


def _project(delta: torch.Tensor, epsilon: float) -> torch.Tensor:
    """Back onto the L2 ball of radius epsilon."""
    norm = delta.norm()
    return delta * (epsilon / norm) if norm > epsilon else delta


def _set_rows(weight: torch.Tensor, rows: torch.Tensor, values: torch.Tensor) -> None:
    with torch.no_grad():
        weight.index_copy_(0, rows, values)


def _embedding_grad(state: TrainState, batch: dict, weight: torch.Tensor) -> torch.Tensor:
    """d(loss)/d(weight) without touching any ``.grad``. Under DDP the pass runs in ``no_sync``:
    DDP's reducer expects every synced forward to end in a ``.backward()``."""
    with getattr(state.model, "no_sync", contextlib.nullcontext)():
        loss = state.compute_loss(batch)
        if state.scaler is not None:
            loss = state.scaler.scale(loss)  # keeps fp16 gradients from underflowing; the direction is unchanged
        return torch.autograd.grad(loss, weight)[0]


class PGD(Hook):
    """PGD on the embedding matrix (Madry et al., 2018): ``steps`` ascent steps of size
    ``epsilon / steps`` along the normalised gradient, projected onto the epsilon ball; only
    the last step's loss adds its gradient. The first direction is the clean gradient.

    Only this batch's rows are perturbed (and copied for the restore, cheap even for a large
    vocabulary): other rows of ``.grad`` may hold earlier micro-batches' gradients.
    """

    def __init__(self, epsilon: float = 1.0, steps: int = 3):
        self.epsilon = epsilon
        self.steps = steps

    def after_backward(self, state: TrainState, batch: dict[str, torch.Tensor]) -> None:
        weight = unwrap_model(state.model).get_input_embeddings().weight
        if weight.grad is None:
            return
        rows = batch["input_ids"].unique()
        original = weight.detach()[rows]  # advanced indexing copies
        delta, grad = torch.zeros_like(original), weight.grad[rows]
        try:
            for step in range(self.steps):
                delta = _project(delta + _unit(grad, self.epsilon / self.steps), self.epsilon)
                _set_rows(weight, rows, original + delta)
                grad = self.ascend(state, batch, weight, rows, last=step == self.steps - 1)
        finally:
            _set_rows(weight, rows, original)

    def ascend(self, state: TrainState, batch: dict, weight: torch.Tensor, rows: torch.Tensor, last: bool):
        """One adversarial pass at the current perturbation; returns the rows' gradient that
        directs the next step (None after the last)."""
        if last:
            state.backward(state.compute_loss(batch))
            return None
        return _embedding_grad(state, batch, weight)[rows]


class FGM(PGD):
    """FGM (Miyato et al., 2017): one step ``epsilon * g / ||g||``, i.e. PGD with one step."""

    def __init__(self, epsilon: float = 1.0):
        super().__init__(epsilon, steps=1)


class FreeLB(PGD):
    """FreeLB (Zhu et al., 2020): the PGD walk, but every step adds 1/steps of its loss's
    gradient to the parameters ("free" ascent). The clean gradient stays as the loop made it."""

    def ascend(self, state: TrainState, batch: dict, weight: torch.Tensor, rows: torch.Tensor, last: bool):
        before = weight.grad[rows]
        state.backward(state.compute_loss(batch) / self.steps)
        return weight.grad[rows] - before


def _weight_matrices(model: nn.Module) -> list[nn.Parameter]:
    """Trainable parameters with >= 2 dims that are no embedding (so no biases or norms)."""
    embeddings = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    return [p for p in model.parameters() if p.requires_grad and p.ndim >= 2 and id(p) not in embeddings]


class AWP(Hook):
    """Adversarial weight perturbation (Wu et al., 2020), in its common fine-tuning form: one
    step ``w += adv_lr * ||w|| * g / ||g||`` per weight matrix, clipped elementwise to
    ``w0 +- adv_eps * |w0|``, then the adversarial loss's gradient is added."""

    def __init__(self, adv_lr: float = 1.0, adv_eps: float = 0.01):
        self.adv_lr = adv_lr
        self.adv_eps = adv_eps

    def after_backward(self, state: TrainState, batch: dict[str, torch.Tensor]) -> None:
        params = [p for p in _weight_matrices(unwrap_model(state.model)) if p.grad is not None]
        originals = [p.detach().clone() for p in params]
        try:
            with torch.no_grad():
                for param, w0 in zip(params, originals):
                    box = self.adv_eps * w0.abs()
                    param.add_(_unit(param.grad, self.adv_lr * w0.norm()).clamp(-box, box))
            state.backward(state.compute_loss(batch))
        finally:
            with torch.no_grad():
                for param, w0 in zip(params, originals):
                    param.copy_(w0)
