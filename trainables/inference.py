"""Batched inference: logits for token-id lists, in their original order."""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from torch import nn

from trainables.batching import collate


@torch.inference_mode()
def predict_logits(model: nn.Module, ids: Sequence[Sequence[int]], pad_id: int, batch_size: int = 64,
                   device: str | torch.device = "cpu") -> np.ndarray:
    """Logits [N, C]; texts are batched by length (little padding) and returned in input order."""
    was_training = model.training
    model.eval()
    order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
    chunks = []
    for start in range(0, len(order), batch_size):
        rows = order[start : start + batch_size]
        batch = collate([ids[i] for i in rows], None, pad_id)
        chunks.append(model(**{k: v.to(device) for k, v in batch.items()}).float().cpu())
    model.train(was_training)
    if not chunks:
        return np.zeros((0, 0), dtype=np.float32)
    logits = torch.cat(chunks).numpy()
    out = np.empty_like(logits)
    out[order] = logits
    return out
