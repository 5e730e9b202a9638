"""Training throughput: the project's loop (length-bucketed batches, dynamic padding) against a plain
loop (random batches padded to their longest row) on the same data, model and seed, in one run.

    python -m benchmarks.train_throughput [--rows 1200] [--epochs 1] [--model minilm-l6]

Writes benchmarks/results/train_throughput.json: samples/s of each, their ratio, val macro-F1 of each.
"""
from __future__ import annotations

import argparse

import numpy as np
import torch

from benchmarks.common import ROOT, write_result
from orchestrator.config import ExperimentConfig, with_overrides
from orchestrator.data import load_dataset
from orchestrator.pipeline import fold_plan
from orchestrator.training import fold_data, label_array
from trainables.loop import Trainer, epoch_batches
from trainables.models import build_model, build_text_encoder


def padded_tokens(data, cfg, seed: int) -> int:
    """Token slots computed in one epoch (rows x longest row of each batch)."""
    return sum(len(rows) * max(len(data.train_ids[r]) for r in rows) for rows in epoch_batches(data, cfg, seed, 0))


def measure(cfg: ExperimentConfig, data, encoder, classes: int, sampler: str) -> dict:
    train = cfg.train.model_copy(update={"sampler": sampler})
    torch.manual_seed(cfg.seed)
    model = build_model(cfg.model, classes, encoder)
    trainer = Trainer(model, data, train, seed=cfg.seed)
    history = trainer.fit().history
    real = sum(len(x) for x in data.train_ids) * train.epochs
    slots = padded_tokens(data, train, cfg.seed) * train.epochs
    return {"samples_per_s": float(np.mean([h["train_samples_per_s"] for h in history])),
            "val_macro_f1": history[-1]["val_macro_f1"], "padding_share": 1 - real / slots}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1200, help="training rows of data/example1")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--model", default="minilm-l6")
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--out")
    args = parser.parse_args()
    cfg = with_overrides(ExperimentConfig(), {
        "data": {"train": str(ROOT / "data/example1/train.csv"), "val": str(ROOT / "data/example1/val.csv"),
                 "text_column": "sentence", "label_column": "label", "max_rows": args.rows},
        "model.name": args.model, "model.max_length": args.max_length,
        "train.epochs": args.epochs, "train.batch_size": 16, "train.lr": 1e-4, "train.early_stopping_patience": None,
    })
    dataset = load_dataset(cfg.data, cfg.seed)
    encoder = build_text_encoder(cfg.model, dataset.train.texts)
    pool, plan = fold_plan(dataset, 1, cfg.seed)
    ids = encoder.encode(pool.texts)
    labels = label_array(pool.labels, len(dataset.classes), dataset.multilabel)
    data = fold_data(ids, labels, *plan[0], encoder, len(dataset.classes), dataset.multilabel)
    plain = measure(cfg, data, encoder, len(dataset.classes), "random")
    ours = measure(cfg, data, encoder, len(dataset.classes), "bucket")
    write_result("train_throughput", {
        "what": f"{args.model} training samples/s on {args.rows} rows of example1 (max_length {args.max_length}), {args.epochs} epoch(s)",
        "figure": ours["samples_per_s"], "baseline": plain["samples_per_s"], "ratio": ours["samples_per_s"] / plain["samples_per_s"],
        "target_ratio": 1.4, "bucketed": ours, "plain_random_batches": plain,
        "f1_no_worse": ours["val_macro_f1"] >= plain["val_macro_f1"] - 0.01,
    }, args.out)


if __name__ == "__main__":
    main()
