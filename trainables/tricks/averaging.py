"""Weight averaging (EMA or SWA) as one hook over ``torch.optim.swa_utils.AveragedModel``."""
from __future__ import annotations

import contextlib
from typing import Any, Iterator, Optional

import torch
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from trainables.hooks import Hook, TrainState
from trainables.tricks.optim import unwrap_model


class WeightAveraging(Hook):
    """Keeps an average of the parameters and evaluates with it.

    EMA (``ema_decay``): ``avg = decay * avg + (1 - decay) * w`` after every optimizer step,
    starting from the weights after the first step. SWA (``swa_start_epoch``, 1-based like the
    config; the loop's ``epoch`` is 0-based): the equal average of the weights at the end of
    every epoch from that one on. Buffers are not averaged (text models have no BatchNorm).
    """

    def __init__(self, ema_decay: Optional[float] = None, swa_start_epoch: Optional[int] = None):
        if (ema_decay is None) == (swa_start_epoch is None):
            raise ValueError("WeightAveraging: give exactly one of ema_decay and swa_start_epoch")
        self.ema_decay = ema_decay
        self.swa_start_epoch = swa_start_epoch
        self.averaged: Optional[AveragedModel] = None
        self._pending: Optional[dict[str, Any]] = None  # a state loaded before the average exists

    def _average(self, state: TrainState) -> AveragedModel:
        """The AveragedModel, made on first use rather than in on_fit_start: a resumed loop
        skips on_fit_start and only loads the state (kept pending until the model is known)."""
        if self.averaged is None:
            multi_avg_fn = None if self.ema_decay is None else get_ema_multi_avg_fn(self.ema_decay)
            self.averaged = AveragedModel(unwrap_model(state.model), multi_avg_fn=multi_avg_fn)
        if self._pending is not None:
            self.averaged.load_state_dict(self._pending)
            self._pending = None
        return self.averaged

    def should_update(self, epoch: Optional[int]) -> bool:
        """``epoch`` is None after an optimizer step, else the 0-based epoch just finished."""
        if self.ema_decay is not None:
            return epoch is None
        return epoch is not None and epoch + 1 >= self.swa_start_epoch

    def after_optimizer_step(self, state: TrainState) -> None:
        self._maybe_update(state, None)

    def on_epoch_end(self, state: TrainState, epoch: int) -> None:
        self._maybe_update(state, epoch)

    def _maybe_update(self, state: TrainState, epoch: Optional[int]) -> None:
        if self.should_update(epoch):
            self._average(state).update_parameters(unwrap_model(state.model))

    @contextlib.contextmanager
    def eval_weights(self, state: TrainState) -> Iterator[None]:
        """The averaged weights inside the live model, the live ones restored exactly after.
        Before the first update (e.g. SWA's early epochs) the live weights are used.

        The live weights are backed up rather than swapped with the average, so that
        ``state_dict`` stays right inside the context too."""
        average = self._average(state)
        if average.n_averaged.item() == 0:
            yield
            return
        live = list(unwrap_model(state.model).parameters())
        backup = [p.detach().clone() for p in live]
        _copy(live, average.module.parameters())
        try:
            yield
        finally:
            _copy(live, backup)

    def state_dict(self) -> dict[str, Any]:
        if self.averaged is None:
            return self._pending or {}
        return self.averaged.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if not state:
            return
        if self.averaged is None:
            self._pending = state
        else:
            self.averaged.load_state_dict(state)


def _copy(targets, sources) -> None:
    with torch.no_grad():
        for target, source in zip(targets, sources):
            target.copy_(source)
