"""Classifier head shared by every encoder: dropout (optionally multi-sample) + linear."""
from __future__ import annotations

import torch
from torch import nn


class ClassifierHead(nn.Module):
    """Linear head; with ``samples > 1`` the logits are averaged over that many dropout masks
    during training (multi-sample dropout). In eval mode dropout is off, so one pass suffices."""

    def __init__(self, in_dim: int, num_classes: int, dropout: float = 0.1, samples: int = 1):
        super().__init__()
        self.dropout = nn.Dropout(dropout)
        self.samples = samples
        self.linear = nn.Linear(in_dim, num_classes)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        if not self.training or self.samples == 1:
            return self.linear(self.dropout(features))
        return torch.stack([self.linear(self.dropout(features)) for _ in range(self.samples)]).mean(0)
