"""The tricks study on the transformer: MiniLM on tweet_eval, each trick against the plain recipe,
paired by fold and seed.

    python -m benchmarks.transformer_tricks [--folds 3] [--workers 2] [--only NAME ...]

Data: the CV pool of benchmarks/quality.py (tweet_eval train+validation less its 25% test split),
cut into ``--folds`` stratified folds. Each variant trains once per fold with seed 42 + fold (the
same fold and seed as plain: a paired comparison, 3 folds = 3 seeds), through the project's own
training loop (``trainables.loop.Trainer``, what every Ray Train fold worker runs). The folds' best-
epoch validation logits together cover the whole pool once, so each variant also has out-of-fold
(OOF) predictions for every pool row: its OOF macro-F1 and the paired bootstrap 95% interval of its
difference to plain are the study's verdict. Runs are appended to
runs/benchmarks/transformer_tricks.jsonl as they finish (a rerun skips those done). Writes
benchmarks/results/transformer_tricks.json (figure = best variant's OOF macro-F1, baseline =
plain's) and prints a Markdown table.
"""
from __future__ import annotations

import argparse
import json
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from multiprocessing import get_context

import numpy as np

from benchmarks.common import ROOT, paired_bootstrap, tweet_quality_config, write_result

EPOCHS = 2
# The plain recipe every variant changes one thing of: the study's own, not the yaml's (whose default
# is the study's outcome): 2 epochs, lr 1e-4 (head 1e-3), mean pooling, max_length 64, no tricks.
PLAIN = {"train.epochs": EPOCHS, "train.lr": 1.0e-4, "train.head_lr": 1.0e-3, "train.label_smoothing": 0.0,
         "model.pooling": "mean", "model.max_length": 64, "tune.search": {}, "distill.enabled": False}
VARIANTS: dict[str, dict] = {
    "plain": {},
    "R-Drop (alpha 1)": {"train.rdrop_alpha": 1.0},
    "multi-sample dropout x5": {"model.multi_sample_dropout": 5},
    "label smoothing 0.1": {"train.label_smoothing": 0.1},
    "focal (gamma 2)": {"train.loss": "focal"},
    "balanced class weights": {"train.class_weights": "balanced"},
    "FGM (eps 1)": {"train.adversarial": "fgm", "train.adv_epsilon": 1.0},
    "AWP": {"train.adversarial": "awp", "train.adv_epsilon": 0.5},
    "EMA 0.99": {"train.ema_decay": 0.99},
    "SWA (3 epochs, from 2)": {"train.epochs": 3, "train.swa_start_epoch": 2},
    "NoisyTune 0.15": {"train.noisytune": 0.15},
    "weighted sampler": {"train.sampler": "weighted"},
    "3 epochs": {"train.epochs": 3},
    "lr 5e-5": {"train.lr": 5.0e-5},
    "max_length 32": {"model.max_length": 32},
    "cls pooling": {"model.pooling": "cls"},
    "LLRD 0.8": {"train.layer_lr_decay": 0.8},
}
LOG = ROOT / "runs" / "benchmarks" / "transformer_tricks.jsonl"
_cache: dict = {}


def train_one(name: str, fold: int, folds: int) -> dict:
    """One variant on one fold of the pool, in a fresh process with one torch thread."""
    import torch

    from orchestrator.config import with_overrides
    from orchestrator.data import load_dataset
    from orchestrator.train.folds import fold_data, prepare_folds
    from trainables.loop import Trainer
    from trainables.models import build_model

    torch.set_num_threads(1)
    cfg = with_overrides(tweet_quality_config(**{"cv.folds": folds, **PLAIN}), VARIANTS[name])
    cfg = with_overrides(cfg, {"seed": cfg.seed + fold})
    key = (cfg.model.max_length, folds)
    if key not in _cache:
        dataset = load_dataset(cfg.data, tweet_quality_config().seed)  # one split for every seed
        _cache[key] = (dataset, prepare_folds(with_overrides(cfg, {"seed": tweet_quality_config().seed}), dataset))
    dataset, shared = _cache[key]
    torch.manual_seed(cfg.seed)
    train_idx, val_idx = shared["plan"][fold]
    data = fold_data(shared["ids"], shared["labels"], train_idx, val_idx, shared["encoder"], len(dataset.classes), False)
    model = build_model(cfg.model, len(dataset.classes), shared["encoder"])
    started = time.perf_counter()
    trainer = Trainer(model, data, cfg.train, seed=cfg.seed)
    history = trainer.fit().history
    return {"variant": name, "fold": fold, "seed": cfg.seed, "val_macro_f1": max(h["val_macro_f1"] for h in history),
            "best_epoch": trainer.fit_state.best_epoch, "seconds": time.perf_counter() - started,
            "val_idx": val_idx.tolist(), "val_logits": trainer.best_val_logits.tolist()}


def done_runs() -> dict[tuple[str, int], dict]:
    if not LOG.exists():
        return {}
    rows = [json.loads(line) for line in LOG.read_text().splitlines() if line.strip()]
    return {(r["variant"], r["fold"]): r for r in rows}


def summarise(runs: dict[tuple[str, int], dict], folds: int) -> dict[str, dict]:
    """Per variant: per-fold paired differences to plain, OOF macro-F1, the paired bootstrap of the OOF difference."""
    from orchestrator.data import label_array, load_dataset
    from orchestrator.train.folds import fold_plan

    cfg = tweet_quality_config(**{"cv.folds": folds})
    pool, _ = fold_plan(load_dataset(cfg.data, cfg.seed), folds, cfg.seed)
    gold = np.asarray(label_array(pool.labels, 4, False))

    def oof(name):
        pred = np.full(len(gold), -1)
        for f in range(folds):
            run = runs[(name, f)]
            pred[run["val_idx"]] = np.asarray(run["val_logits"]).argmax(1)
        return pred

    complete = [n for n in VARIANTS if all((n, f) in runs for f in range(folds))]
    base = oof("plain")
    rows = {}
    for name in complete:
        diffs = [runs[(name, f)]["val_macro_f1"] - runs[("plain", f)]["val_macro_f1"] for f in range(folds)]
        seconds = sum(runs[(name, f)]["seconds"] for f in range(folds))
        rows[name] = {**paired_bootstrap(gold, oof(name), base), "fold_diffs": diffs, "wins": sum(d > 0 for d in diffs),
                      "seconds": seconds, "time_ratio": seconds / sum(runs[("plain", f)]["seconds"] for f in range(folds))}
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--folds", type=int, default=3, help="folds of the pool = paired seeds")
    parser.add_argument("--workers", type=int, default=2, help="trainings at once, one torch thread each")
    parser.add_argument("--only", nargs="*", help="variants to run (plain always runs)")
    parser.add_argument("--out")
    args = parser.parse_args()
    names = ["plain", *(n for n in VARIANTS if n != "plain" and (not args.only or n in args.only))]
    runs = done_runs()
    todo = [(n, f) for n in names for f in range(args.folds) if (n, f) not in runs]
    LOG.parent.mkdir(parents=True, exist_ok=True)
    with ProcessPoolExecutor(args.workers, mp_context=get_context("spawn")) as pool, LOG.open("a") as log:
        futures = [pool.submit(train_one, n, f, args.folds) for n, f in todo]
        for future in as_completed(futures):
            row = future.result()
            runs[(row["variant"], row["fold"])] = row
            log.write(json.dumps(row) + "\n")
            log.flush()
            print(f"{row['variant']:26s} fold {row['fold']} F1 {row['val_macro_f1']:.4f} ({row['seconds']:.0f} s)", flush=True)
    rows = summarise(runs, args.folds)
    table = ["| variant | OOF macro-F1 | Δ vs plain (95% CI) | per-fold Δ | wins | time × plain |", "| --- | --- | --- | --- | --- | --- |"]
    table += [f"| {n} | {r['f1']:.4f} | {r['diff']:+.4f} ({r['diff_lo']:+.4f}, {r['diff_hi']:+.4f}) | "
              f"{' '.join(f'{d:+.3f}' for d in r['fold_diffs'])} | {r['wins']}/{args.folds} | {r['time_ratio']:.2f} |"
              for n, r in rows.items()]
    print("\n".join(table))
    best = max(rows, key=lambda n: rows[n]["f1"])
    write_result("transformer_tricks", {
        "what": f"MiniLM on tweet_eval's CV pool, {args.folds} folds x paired seed, {EPOCHS} epochs unless the variant says; "
                "OOF macro-F1 per variant, paired bootstrap 95% CI of the difference to plain",
        "unit": "macro-F1", "figure": rows[best]["f1"], "baseline": rows["plain"]["f1"],
        "ratio": rows[best]["f1"] / rows["plain"]["f1"], "best_variant": best, "variants": rows, "table": table,
    }, args.out)


if __name__ == "__main__":
    main()
