"""The hook protocol of the training loop.

Each trick (R-Drop, FGM, EMA, ...) is a small ``Hook`` whose methods default to no-ops; the loop
calls one ``HookList`` at fixed points. The loop owns forward, backward, clipping and stepping;
hooks use ``TrainState.compute_loss`` and ``TrainState.backward`` so autocast, the grad scaler
and gradient accumulation stay in one place.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Optional

import torch
from torch import nn


@dataclass
class TrainState:
    """What hooks may read and call during training."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext
    scaler: Optional[torch.amp.GradScaler] = None
    grad_accum: int = 1
    step: int = 0
    epoch: int = 0

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Logits of a batch under autocast."""
        with self.autocast():
            return self.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])

    def compute_loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Loss of one forward pass on a batch."""
        logits = self.forward(batch)
        return self.loss_fn(logits.float(), batch["labels"])

    def backward(self, loss: torch.Tensor) -> None:
        """Backward of a micro-batch loss, scaled for accumulation and AMP."""
        loss = loss / self.grad_accum
        (self.scaler.scale(loss) if self.scaler is not None else loss).backward()


class Hook:
    """A trick. Override what you need; every method defaults to doing nothing."""

    def on_fit_start(self, state: TrainState) -> None:
        """Before the first step (e.g. NoisyTune perturbs weights, EMA copies them)."""

    def loss(self, state: TrainState, batch: dict[str, torch.Tensor]) -> Optional[torch.Tensor]:
        """Return a replacement training loss for the batch, or None for ``state.compute_loss``."""
        return None

    def after_backward(self, state: TrainState, batch: dict[str, torch.Tensor]) -> None:
        """After the clean loss's backward: adversarial tricks add their gradients here."""

    def after_optimizer_step(self, state: TrainState) -> None:
        """After each optimizer step (e.g. EMA update)."""

    def on_epoch_end(self, state: TrainState, epoch: int) -> None:
        """After each epoch's last step (e.g. SWA collects weights)."""

    @contextlib.contextmanager
    def eval_weights(self, state: TrainState) -> Iterator[None]:
        """Context in which evaluation and checkpointing see this hook's weights (EMA/SWA)."""
        yield

    def state_dict(self) -> dict[str, Any]:
        """State to checkpoint for exact resume."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what ``state_dict`` returned."""


class HookList(Hook):
    """Calls every hook in order; the first non-None ``loss`` wins."""

    def __init__(self, hooks: list[Hook]):
        self.hooks = list(hooks)

    def on_fit_start(self, state: TrainState) -> None:
        for hook in self.hooks:
            hook.on_fit_start(state)

    def loss(self, state: TrainState, batch: dict[str, torch.Tensor]) -> Optional[torch.Tensor]:
        for hook in self.hooks:
            loss = hook.loss(state, batch)
            if loss is not None:
                return loss
        return None

    def after_backward(self, state: TrainState, batch: dict[str, torch.Tensor]) -> None:
        for hook in self.hooks:
            hook.after_backward(state, batch)

    def after_optimizer_step(self, state: TrainState) -> None:
        for hook in self.hooks:
            hook.after_optimizer_step(state)

    def on_epoch_end(self, state: TrainState, epoch: int) -> None:
        for hook in self.hooks:
            hook.on_epoch_end(state, epoch)

    @contextlib.contextmanager
    def eval_weights(self, state: TrainState) -> Iterator[None]:
        with contextlib.ExitStack() as stack:
            for hook in self.hooks:
                stack.enter_context(hook.eval_weights(state))
            yield

    def state_dict(self) -> dict[str, Any]:
        return {type(h).__name__: h.state_dict() for h in self.hooks}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for hook in self.hooks:
            hook.load_state_dict(state.get(type(hook).__name__, {}))
