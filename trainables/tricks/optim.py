"""Optimizer, learning-rate schedule and weight initialisation, plus NoisyTune.

``build_optimizer``/``build_scheduler`` read a ``trainables.config.TrainConfig``:
optimizer, lr, head_lr, layer_lr_decay, weight_decay, schedule, warmup_ratio (and noisytune for
NoisyTune).
"""
from __future__ import annotations

import re

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


_LAYER = re.compile(r"\.(?:layer|layers|block|h)\.(\d+)\.")


def layer_depth(name: str, num_layers: int) -> int:
    """How many layers below the top a body parameter sits: the top encoder layer 0, layer i
    ``num_layers - 1 - i``, the embeddings ``num_layers`` (lowest); anything else (pooler, final
    norm) 0. Layers are found by their index in the name (``encoder.layer.3.``, T5's ``block.3.``)."""
    match = _LAYER.search(name)
    if match:
        return num_layers - 1 - int(match.group(1))
    return num_layers if "embed" in name or ".shared." in name else 0


def param_groups(model: nn.Module, lr: float, head_lr: float | None, weight_decay: float,
                 layer_lr_decay: float | None = None) -> list[dict]:
    """(body | head) x (decay | no decay) groups, the body split by layer when ``layer_lr_decay`` is set.

    Parameters with fewer than two dimensions (biases, LayerNorm/RMSNorm weights) get no weight
    decay: shrinking them towards 0 only hurts. ``head.`` parameters get ``head_lr`` (default lr).
    Layer-wise lr decay (LLRD): the top encoder layer gets ``lr``, each layer below the lr of the
    layer above x ``layer_lr_decay``, the embeddings the lowest (``layer_depth``).
    """
    named = [(n, p) for n, p in unwrap_model(model).named_parameters() if p.requires_grad]
    num_layers = 1 + max((int(m.group(1)) for n, _ in named if (m := _LAYER.search(n))), default=-1)
    groups: dict[tuple[bool, bool, int], list[nn.Parameter]] = {}
    for name, param in named:
        head = name.startswith(HEAD_PREFIX)
        depth = 0 if head or not layer_lr_decay else layer_depth(name, num_layers)
        groups.setdefault((head, param.ndim >= 2, depth), []).append(param)
    return [
        {"params": params, "lr": (head_lr or lr) if head else lr * (layer_lr_decay or 1.0) ** depth,
         "weight_decay": weight_decay if decay else 0.0}
        for (head, decay, depth), params in groups.items()
    ]


def build_optimizer(model: nn.Module, train_cfg: TrainConfig) -> torch.optim.Optimizer:
    """adamw / adam / sgd (momentum 0.9) / adafactor over ``param_groups``.

    adam and sgd apply weight decay as an L2 term (their torch meaning); adamw and adafactor
    decouple it. Adafactor runs with a fixed lr (relative_step=False) so that per-group lrs and
    the schedules of ``build_scheduler`` apply to it like to the others, except under
    ``schedule: adafactor``: then it sets its own relative-step lr (the T5 recipe's
    ``relative_step=True, scale_parameter=True, warmup_init=True, lr=None``), and lr, head_lr and
    layer_lr_decay do not apply.
    """
    groups = param_groups(model, train_cfg.lr, train_cfg.head_lr, train_cfg.weight_decay, train_cfg.layer_lr_decay)
    name = train_cfg.optimizer
    if name == "adamw":
        return torch.optim.AdamW(groups, lr=train_cfg.lr)
    if name == "adam":
        return torch.optim.Adam(groups, lr=train_cfg.lr)
    if name == "sgd":
        return torch.optim.SGD(groups, lr=train_cfg.lr, momentum=0.9)
    if name == "adafactor":
        from transformers.optimization import Adafactor

        if train_cfg.schedule == "adafactor":
            return Adafactor(groups, lr=None, scale_parameter=True, relative_step=True, warmup_init=True)
        return Adafactor(groups, lr=train_cfg.lr, scale_parameter=False, relative_step=False, warmup_init=False)
    raise ValueError(f"train.optimizer: expected adamw, adam, sgd or adafactor, got {name!r}")


def build_scheduler(optimizer: torch.optim.Optimizer, train_cfg: TrainConfig, total_steps: int) -> torch.optim.lr_scheduler.LRScheduler:
    """Linear warmup over ``round(warmup_ratio * total_steps)`` optimizer steps, then linear
    decay to 0, cosine decay to 0, or constant. Call ``step()`` after every optimizer step.

    ``adafactor``: Adafactor's own relative-step lr (``build_optimizer``), which transformers'
    ``AdafactorSchedule`` reads out (``get_last_lr``) so that it is logged like any other.
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
    if train_cfg.schedule == "adafactor":
        from transformers.optimization import AdafactorSchedule

        return AdafactorSchedule(optimizer)
    raise ValueError(f"train.schedule: expected linear, cosine, constant or adafactor, got {train_cfg.schedule!r}")


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
