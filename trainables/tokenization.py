"""Text -> token ids, batching with dynamic padding, and length-bucketed batch order.

Every model kind gets a ``TextEncoder``: ``encode(texts)`` returns truncated, unpadded id lists
and ``pad_id``; ``save(dir)`` writes what ``load_text_encoder(dir)`` needs to rebuild it.
"""
from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Iterator, Optional, Protocol, Sequence

import torch

ENCODER_FILE = "text_encoder.json"


class TextEncoder(Protocol):
    pad_id: int
    max_length: int

    def encode(self, texts: Sequence[str]) -> list[list[int]]: ...

    def save(self, directory: str | Path) -> None: ...


class HFTextEncoder:
    """A transformers tokenizer: ids with special tokens, truncated to max_length."""

    kind = "hf"

    def __init__(self, tokenizer, max_length: int):
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0

    @classmethod
    def from_pretrained(cls, name_or_path: str, max_length: int) -> "HFTextEncoder":
        from transformers import AutoTokenizer

        return cls(AutoTokenizer.from_pretrained(name_or_path), max_length)

    def encode(self, texts: Sequence[str]) -> list[list[int]]:
        return self.tokenizer(list(texts), truncation=True, max_length=self.max_length)["input_ids"]

    def save(self, directory: str | Path) -> None:
        directory = Path(directory)
        self.tokenizer.save_pretrained(directory / "tokenizer")
        (directory / ENCODER_FILE).write_text(json.dumps({"kind": self.kind, "max_length": self.max_length}))


def load_text_encoder(directory: str | Path) -> TextEncoder:
    """Rebuild the encoder that ``save`` wrote into directory."""
    directory = Path(directory)
    meta = json.loads((directory / ENCODER_FILE).read_text())
    if meta["kind"] == "hf":
        return HFTextEncoder.from_pretrained(str(directory / "tokenizer"), meta["max_length"])
    if meta["kind"] == "t5":
        from trainables.models.t5 import T5TextEncoder

        return T5TextEncoder.load(directory)
    from trainables.vocab import VocabTextEncoder

    return VocabTextEncoder.load(directory)


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
