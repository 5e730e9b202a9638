"""Batches of token ids: dynamic padding (``collate``) and length-bucketed batch order."""
from __future__ import annotations

import random
from typing import Iterator, Optional, Sequence

import torch


def collate(ids: Sequence[Sequence[int]], labels: Optional[torch.Tensor], pad_id: int) -> dict[str, torch.Tensor]:
    """Pad a batch to its own longest sequence (dynamic padding)."""
    width = max(1, max(len(x) for x in ids))
    input_ids = torch.full((len(ids), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(ids), width), dtype=torch.long)
    for row, seq in enumerate(ids):
        input_ids[row, : len(seq)] = torch.as_tensor(seq, dtype=torch.long)
        mask[row, : len(seq)] = 1
    batch = {"input_ids": input_ids, "attention_mask": mask}
    if labels is not None:
        batch["labels"] = labels
    return batch


class BucketBatchSampler:
    """Batches of similar length: shuffle, sort within pools of ``pool`` batches, shuffle batch order.

    Padding shrinks to almost nothing while every epoch still sees a fresh random order. The sort key
    is ``length * (1 + uniform(-noise, noise))`` (AllenNLP's noisy sorting): rows of nearly equal
    length mix across neighbouring batches, so a batch is not one narrow length band. A small pool
    keeps each batch's label mix close to the data's even when length correlates with the label;
    a pool covering the whole set sorts it, and then every batch is one length slice. ``strata`` (one
    value per row, e.g. its label) interleaves the strata so every batch keeps the pool's mix of them.
    """

    def __init__(self, lengths: Sequence[int], batch_size: int, seed: int = 0, pool: int = 50, shuffle: bool = True,
                 noise: float = 0.0, strata: Optional[Sequence[int]] = None):
        if pool < 1:
            raise ValueError(f"pool must be >= 1 batch, got {pool}")
        if not 0.0 <= noise < 1.0:
            raise ValueError(f"noise must be in [0, 1), got {noise}")
        self.lengths = list(lengths)
        self.batch_size = batch_size
        self.seed = seed
        self.pool = pool
        self.shuffle = shuffle
        self.noise = noise
        self.strata = None if strata is None else list(strata)
        if self.strata is not None and len(self.strata) != len(self.lengths):
            raise ValueError(f"strata: {len(self.strata)} values for {len(self.lengths)} rows")
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return (len(self.lengths) + self.batch_size - 1) // self.batch_size

    def __iter__(self) -> Iterator[list[int]]:
        rng = random.Random(self.seed * 1_000_003 + self.epoch)
        order = list(range(len(self.lengths)))
        if self.shuffle:
            rng.shuffle(order)
        if self.noise:
            keys = [n * (1.0 + rng.uniform(-self.noise, self.noise)) for n in self.lengths]
        else:
            keys = self.lengths
        span = self.batch_size * self.pool
        batches = []
        for start in range(0, len(order), span):
            chunk = sorted(order[start : start + span], key=keys.__getitem__)
            if self.strata is not None:
                chunk = self._interleave(chunk)
            batches += [chunk[i : i + self.batch_size] for i in range(0, len(chunk), self.batch_size)]
        if self.shuffle:
            rng.shuffle(batches)
        return iter(batches)

    def _interleave(self, chunk: list[int]) -> list[int]:
        """Reorder a length-sorted chunk by each row's length quantile within its own stratum: every
        batch then holds the strata in the chunk's proportions, each stratum's rows of similar length."""
        members: dict[int, list[int]] = {}
        for row in chunk:
            members.setdefault(self.strata[row], []).append(row)
        quantile = {row: (rank + 0.5) / len(rows) for rows in members.values() for rank, row in enumerate(rows)}
        return sorted(chunk, key=quantile.__getitem__)
