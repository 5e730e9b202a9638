"""One fold's data streamed from Ray Data shards (``data.streaming``), read by the loop like ``FoldData``.

The training worker never holds the fold: each epoch it iterates its shard of the tokenized pool
(``ray.train.get_dataset_shard``), keeps the rows of its fold's training side, shuffles them in a
bounded window (Ray Data's local shuffle buffer), and cuts each window into batches of similar
length (sorted in the window, batch order shuffled): length bucketing without the whole fold. Every
rank runs the same number of batches (``train_batch_count``, from the row counts the driver took),
so DDP's all-reduce never waits on a rank that ran out: a short rank repeats its epoch's first
batches, a long one stops. Validation iterates the unsplit pool and keeps the fold's rows.

Columns of the pool (``orchestrator/stream/source.py``): ``ids`` (token ids), ``label`` (class id),
``fold`` (0..K-1, or -1 for test rows), ``key`` (the row's hash), ``length`` (of ``ids``). The best epoch's validation
predictions are the fold's out-of-fold rows: ``write_oof`` puts them in the checkpoint as Parquet.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
from torch import nn

from trainables.batching import collate
from trainables.config import TrainConfig
from trainables.loop import TrainBatch

WINDOW_BATCHES = 32  # a shuffle window holds this many batches; bucketing sorts inside it


@dataclass
class StreamedFold:
    train_shard: Any        # ray.data.DataIterator over this rank's share of the pool
    val_shard: Any          # ray.data.DataIterator over the whole pool (not split)
    fold: int               # rows with this fold id validate; other rows with fold >= 0 train
    train_rows: int         # rows on the training side of the fold (all ranks together)
    counts: list[int]       # training rows per class
    pad_id: int
    num_classes: int
    multilabel: bool = False
    val_keys: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))  # of the latest validation pass

    def class_counts(self) -> list[int]:
        return list(self.counts)

    def train_batch_count(self, cfg: TrainConfig, seed: int, rank: int = 0, world: int = 1) -> int:
        return math.ceil(self.train_rows / world / cfg.batch_size)

    def train_batches(self, cfg: TrainConfig, seed: int, epoch: int, rank: int = 0, world: int = 1) -> Iterator[TrainBatch]:
        size, total = cfg.batch_size, self.train_batch_count(cfg, seed, rank, world)
        rng = np.random.default_rng([seed, epoch, rank])
        done, first = 0, []
        for batch in self._bucketed(size, rng, by_length=cfg.sampler == "bucket"):
            if done == total:
                return
            if len(first) < WINDOW_BATCHES:
                first.append(batch)
            done += 1
            yield batch
        if not first:  # not one training row of this fold reached this rank
            raise ValueError(f"fold {self.fold}: rank {rank} of {world} got no training rows; use fewer train.num_workers")
        for k in range(total - done):  # this rank's share came out short: pad as DistributedSampler does
            yield first[k % len(first)]

    def _bucketed(self, size: int, rng: np.random.Generator, by_length: bool) -> Iterator[TrainBatch]:
        """Batches of ``size`` rows (of similar length when ``by_length``), window by window; rows that do
        not fill a batch (a random few) carry over into the next window, the very last ones form a smaller batch."""
        window = size * WINDOW_BATCHES
        ids, labels, lengths = np.empty(0, dtype=object), np.empty(0, dtype=np.int64), np.empty(0, dtype=np.int64)
        parts = self.train_shard.iter_batches(batch_size=window, batch_format="numpy", local_shuffle_buffer_size=window,
                                              local_shuffle_seed=int(rng.integers(2**31)))
        for part in parts:
            keep = (part["fold"] >= 0) & (part["fold"] != self.fold)
            ids, labels = np.concatenate([ids, part["ids"][keep]]), np.concatenate([labels, part["label"][keep]])
            lengths = np.concatenate([lengths, part["length"][keep]])
            shuffled = rng.permutation(len(ids))  # the rows left over are random ones, not the longest
            now, rest = shuffled[: len(ids) // size * size], shuffled[len(ids) // size * size :]
            order = now[np.argsort(lengths[now], kind="stable")] if by_length else now
            cuts = [order[i : i + size] for i in range(0, len(order), size)]
            for j in rng.permutation(len(cuts)):
                yield list(ids[cuts[j]]), labels[cuts[j]], None
            ids, labels, lengths = ids[rest], labels[rest], lengths[rest]
        if len(ids):
            yield list(ids), labels, None

    def validation(self, model: nn.Module, batch_size: int, device: torch.device) -> tuple[np.ndarray, np.ndarray]:
        """(logits, labels) of the fold's rows in the order of their keys (the same every epoch, whatever
        order the blocks came in); their keys stay in ``val_keys`` for ``write_oof``. Batches of
        ``batch_size`` rows of similar length (sorted inside windows), as ``predict_logits`` does in memory."""
        was_training = model.training
        model.eval()
        logits, gold, keys = [], [], []
        with torch.no_grad():
            for part in self.val_shard.iter_batches(batch_size=batch_size * WINDOW_BATCHES, batch_format="numpy"):
                keep = np.flatnonzero(part["fold"] == self.fold)
                keep = keep[np.argsort(part["length"][keep], kind="stable")]
                for start in range(0, len(keep), batch_size):
                    rows = keep[start : start + batch_size]
                    batch = collate(list(part["ids"][rows]), None, self.pad_id)
                    logits.append(model(**{k: v.to(device) for k, v in batch.items()}).float().cpu().numpy())
                    gold.append(part["label"][rows])
                    keys.append(part["key"][rows])
        model.train(was_training)
        if not logits:
            self.val_keys = np.zeros(0, dtype=np.int64)
            return np.zeros((0, self.num_classes), dtype=np.float32), np.zeros(0, dtype=np.int64)
        keys = np.concatenate(keys)
        order = np.argsort(keys, kind="stable")
        self.val_keys = keys[order]
        return np.concatenate(logits)[order], np.concatenate(gold)[order]

    def write_oof(self, path: Path, logits: np.ndarray, gold: np.ndarray) -> None:
        """The fold's out-of-fold predictions (key, label, fold, pred, probs) as one Parquet file, atomically."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        from trainables.metrics import probabilities

        probs = probabilities(logits, False).astype(np.float32)
        table = pa.table({"key": self.val_keys, "label": np.asarray(gold, dtype=np.int64),
                          "fold": np.full(len(gold), self.fold, dtype=np.int64), "pred": probs.argmax(1),
                          "probs": pa.FixedSizeListArray.from_arrays(pa.array(probs.reshape(-1)), max(1, probs.shape[1]))})
        tmp = path.with_name(f".{path.name}.tmp")
        pq.write_table(table, tmp)
        os.replace(tmp, path)
