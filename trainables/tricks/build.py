"""The hooks a ``TrainConfig`` turns on, in the order the loop should call them."""
from __future__ import annotations

from trainables.config import TrainConfig
from trainables.tricks.adversarial import AWP, FGM, PGD, FreeLB
from trainables.tricks.averaging import WeightAveraging
from trainables.hooks import Hook, HookList
from trainables.tricks.losses import RDrop
from trainables.tricks.optim import NoisyTune


def _adversarial(train_cfg: TrainConfig) -> Hook:
    kind, eps, steps = train_cfg.adversarial, train_cfg.adv_epsilon, train_cfg.adv_steps
    if kind == "fgm":
        return FGM(eps)
    if kind == "pgd":
        return PGD(eps, steps)
    if kind == "freelb":
        return FreeLB(eps, steps)
    if kind == "awp":
        return AWP(adv_lr=eps)  # adv_epsilon is AWP's relative step; its clip box keeps the default
    raise ValueError(f"train.adversarial: expected none, fgm, pgd, freelb or awp, got {kind!r}")


def build_hooks(train_cfg: TrainConfig, multilabel: bool) -> HookList:
    """NoisyTune first (it changes the weights before training reads them), then R-Drop
    (replaces the loss), adversarial (adds gradients after backward), weight averaging last
    (it averages the weights each optimizer step or epoch has produced)."""
    if train_cfg.ema_decay is not None and train_cfg.swa_start_epoch is not None:
        raise ValueError("train.swa_start_epoch: cannot be combined with train.ema_decay; pick one weight average")
    hooks: list[Hook] = []
    if train_cfg.noisytune > 0:
        hooks.append(NoisyTune(train_cfg.noisytune))
    if train_cfg.rdrop_alpha > 0:
        hooks.append(RDrop(train_cfg.rdrop_alpha, multilabel))
    if train_cfg.adversarial != "none":
        hooks.append(_adversarial(train_cfg))
    if train_cfg.ema_decay is not None or train_cfg.swa_start_epoch is not None:
        hooks.append(WeightAveraging(train_cfg.ema_decay, train_cfg.swa_start_epoch))
    return HookList(hooks)
