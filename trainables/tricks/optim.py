"""Optimizer, learning-rate schedule and weight initialisation, plus NoisyTune.

``build_optimizer``/``build_scheduler`` read a ``trainables.config.TrainConfig``:
optimizer, lr, head_lr, weight_decay, schedule, warmup_ratio (and noisytune for NoisyTune).
"""
from __future__ import annotations

import torch
from torch import nn

from trainables.config import TrainConfig
from trainables.hooks import Hook, TrainState

HEAD_PREFIX = "head."


def unwrap_model(model: nn.Module) -> nn.Module:
    """The model inside a (Distributed)DataParallel wrapper, so that parameter names
    (``head.``) and ``get_input_embeddings`` are those of the model contract."""
    wrappers = (nn.parallel.DistributedDataParallel, nn.DataParallel)
    return model.module if isinstance(model, wrappers) else model


def param_groups(model: nn.Module, lr: float, head_lr: float | None, weight_decay: float) -> list[dict]:
    """Up to four groups: (body | head) x (decay | no decay).

    Parameters with fewer than two dimensions (biases, LayerNorm/RMSNorm weights) get no weight
    decay: shrinking them towards 0 only hurts. ``head.`` parameters get ``head_lr`` (default lr).
    """
    groups: dict[tuple[bool, bool], list[nn.Parameter]] = {}
    for name, param in unwrap_model(model).named_parameters():
        if param.requires_grad:
            groups.setdefault((name.startswith(HEAD_PREFIX), param.ndim >= 2), []).append(param)
    return [
        {"params": params, "lr": (head_lr or lr) if head else lr, "weight_decay": weight_decay if decay else 0.0}
        for (head, decay), params in groups.items()
    ]


def build_optimizer(model: nn.Module, train_cfg: TrainConfig) -> torch.optim.Optimizer:
    """adamw / adam / sgd (momentum 0.9) / adafactor over ``param_groups``.

    adam and sgd apply weight decay as an L2 term (their torch meaning); adamw and adafactor
    decouple it. Adafactor runs with a fixed lr (relative_step=False) so that per-group lrs and
    the schedules of ``build_scheduler`` apply to it like to the others.
    """
    groups = param_groups(model, train_cfg.lr, train_cfg.head_lr, train_cfg.weight_decay)
    name = train_cfg.optimizer
    if name == "adamw":
        return torch.optim.AdamW(groups, lr=train_cfg.lr)
    if name == "adam":
        return torch.optim.Adam(groups, lr=train_cfg.lr)
    if name == "sgd":
        return torch.optim.SGD(groups, lr=train_cfg.lr, momentum=0.9)
    if name == "adafactor":
        from transformers.optimization import Adafactor

        return Adafactor(groups, lr=train_cfg.lr, scale_parameter=False, relative_step=False, warmup_init=False)
    raise ValueError(f"train.optimizer: expected adamw, adam, sgd or adafactor, got {name!r}")


def build_scheduler(optimizer: torch.optim.Optimizer, train_cfg: TrainConfig, total_steps: int) -> torch.optim.lr_scheduler.LRScheduler:
    """Linear warmup over ``round(warmup_ratio * total_steps)`` optimizer steps, then linear
    decay to 0, cosine decay to 0, or constant. Call ``step()`` after every optimizer step.

    Adafactor uses these same schedules; transformers' AdafactorSchedule is only a read-out of
    Adafactor's own relative-step lr, which ``build_optimizer`` does not use.
    """
    from transformers import (get_constant_schedule_with_warmup, get_cosine_schedule_with_warmup,
                              get_linear_schedule_with_warmup)

    warmup = round(train_cfg.warmup_ratio * total_steps)
    if train_cfg.schedule == "linear":
        return get_linear_schedule_with_warmup(optimizer, warmup, total_steps)
    if train_cfg.schedule == "cosine":
        return get_cosine_schedule_with_warmup(optimizer, warmup, total_steps)
    if train_cfg.schedule == "constant":
        return get_constant_schedule_with_warmup(optimizer, warmup)
    raise ValueError(f"train.schedule: expected linear, cosine or constant, got {train_cfg.schedule!r}")


_INITS = {
    "xavier": nn.init.xavier_uniform_,
    "kaiming": lambda w: nn.init.kaiming_normal_(w, nonlinearity="relu"),
    "normal": lambda w: nn.init.normal_(w, mean=0.0, std=0.02),
}


def init_weights(module: nn.Module, scheme: str) -> None:
    """Re-initialise the weights of every Linear, Conv, Embedding and RNN inside ``module`` with
    xavier (uniform), kaiming (normal, relu gain) or normal(0, 0.02), and zero their biases.
    "default" keeps PyTorch's own initialisation. Apply only to non-pretrained weights."""
    if scheme == "default":
        return
    if scheme not in _INITS:
        raise ValueError(f"model.init: expected default, xavier, kaiming or normal, got {scheme!r}")
    init = _INITS[scheme]
    with torch.no_grad():
        for sub in module.modules():
            if isinstance(sub, (nn.Linear, nn.modules.conv._ConvNd, nn.Embedding, nn.RNNBase)):
                for name, param in sub.named_parameters(recurse=False):
                    if name.startswith("bias"):  # RNNs name theirs bias_ih_l0, bias_hh_l0, ...
                        nn.init.zeros_(param)
                    else:
                        init(param)
            if isinstance(sub, nn.Embedding) and sub.padding_idx is not None:
                sub.weight[sub.padding_idx].zero_()  # keep the padding vector at 0, as nn.Embedding does


class NoisyTune(Hook):
    """NoisyTune (Wu et al., 2022): before fine-tuning add U(-lambda/2, lambda/2) * std(param)
    to every parameter with more than one element. Seeded by the global torch RNG. The loop
    must not call on_fit_start again on resume (it would add noise twice)."""

    def __init__(self, noise_lambda: float):
        self.noise_lambda = noise_lambda

    def on_fit_start(self, state: TrainState) -> None:
        with torch.no_grad():
            for param in state.model.parameters():
                if param.numel() > 1:
                    param.add_((torch.rand_like(param) - 0.5) * self.noise_lambda * param.std())
