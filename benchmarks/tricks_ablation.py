"""Each training trick against the plain loop on one real data set (example1, char TextCNN), same seed,
same epochs: validation macro-F1 and seconds per epoch.

    python -m benchmarks.tricks_ablation [--epochs 4] [--rows 0]

Writes benchmarks/results/tricks_ablation.json (figure = best trick's F1, baseline = plain F1) and
prints a Markdown table.
"""
from __future__ import annotations

import argparse

import numpy as np
import torch

from benchmarks.common import ROOT, write_result
from orchestrator.config import load_config, with_overrides
from orchestrator.data import load_dataset
from orchestrator.train.folds import prepare_folds
from orchestrator.train.folds import fold_data
from trainables.loop import Trainer
from trainables.models import build_model

TRICKS: dict[str, dict] = {
    "plain": {},
    "focal (gamma 2)": {"train.loss": "focal"},
    "focal + balanced weights": {"train.loss": "focal", "train.class_weights": "balanced"},
    "poly-1": {"train.loss": "poly"},
    "label smoothing 0.1": {"train.label_smoothing": 0.1},
    "R-Drop (alpha 1)": {"train.rdrop_alpha": 1.0},
    "FGM": {"train.adversarial": "fgm", "train.adv_epsilon": 0.5},
    "PGD (3 steps)": {"train.adversarial": "pgd", "train.adv_epsilon": 0.5},
    "FreeLB (3 steps)": {"train.adversarial": "freelb", "train.adv_epsilon": 0.5},
    "AWP": {"train.adversarial": "awp", "train.adv_epsilon": 0.5},
    "multi-sample dropout x5": {"model.multi_sample_dropout": 5},
    "NoisyTune 0.15": {"train.noisytune": 0.15},
    "EMA 0.99": {"train.ema_decay": 0.99},
    "SWA from epoch 2": {"train.swa_start_epoch": 2},
    "weighted sampler": {"train.sampler": "weighted"},
    "cosine schedule": {"train.schedule": "cosine"},
    "Adafactor": {"train.optimizer": "adafactor"},
}


def run_one(cfg, dataset, shared) -> dict:
    torch.manual_seed(cfg.seed)
    data = fold_data(shared["ids"], shared["labels"], *shared["plan"][0], shared["encoder"], len(dataset.classes), dataset.multilabel)
    model = build_model(cfg.model, len(dataset.classes), shared["encoder"])
    history = Trainer(model, data, cfg.train, seed=cfg.seed).fit().history
    return {"val_macro_f1": max(h["val_macro_f1"] for h in history), "last_val_macro_f1": history[-1]["val_macro_f1"],
            "s_per_epoch": float(np.mean([h["epoch_time_s"] for h in history]))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--rows", type=int, default=0, help="subsample training rows (0 = all 8,522)")
    parser.add_argument("--only", nargs="*", help="trick names to run (plain always runs)")
    parser.add_argument("--out")
    args = parser.parse_args()
    base = with_overrides(load_config(ROOT / "experiments" / "example1.yaml"),
                          {"train.epochs": args.epochs, "train.early_stopping_patience": None,
                           **({"data.max_rows": args.rows} if args.rows else {})})
    dataset = load_dataset(base.data, base.seed)
    shared = prepare_folds(base, dataset)
    names = ["plain", *(n for n in TRICKS if n != "plain" and (not args.only or n in args.only))]
    rows = {}
    for name in names:
        rows[name] = run_one(with_overrides(base, TRICKS[name]), dataset, shared)
        print(f"{name:28s} F1 {rows[name]['val_macro_f1']:.4f}  {rows[name]['s_per_epoch']:.1f} s/epoch", flush=True)
    plain = rows["plain"]
    for row in rows.values():
        row["f1_gain"] = row["val_macro_f1"] - plain["val_macro_f1"]
        row["time_ratio"] = row["s_per_epoch"] / plain["s_per_epoch"]
    best = max(rows, key=lambda n: rows[n]["val_macro_f1"])
    table = ["| trick | val macro-F1 | gain | s/epoch | time × plain |", "| --- | --- | --- | --- | --- |"]
    table += [f"| {n} | {r['val_macro_f1']:.4f} | {r['f1_gain']:+.4f} | {r['s_per_epoch']:.1f} | {r['time_ratio']:.2f} |" for n, r in rows.items()]
    print("\n".join(table))
    write_result("tricks_ablation", {
        "what": f"example1 char TextCNN, {args.epochs} epochs, best-epoch val macro-F1 per trick (same seed)",
        "figure": rows[best]["val_macro_f1"], "baseline": plain["val_macro_f1"],
        "ratio": rows[best]["val_macro_f1"] / plain["val_macro_f1"], "best_trick": best, "tricks": rows, "table": table,
    }, args.out)


if __name__ == "__main__":
    main()
