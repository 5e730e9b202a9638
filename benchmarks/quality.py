"""Is the project's classifier better than a plain fine-tune? tweet_eval emotion, one held-out split.

    python -m benchmarks.quality [--peer-epochs 4] [--skip-project]

A stratified 25% of tweet_eval train+validation is held out as the test split; the rest is the CV
pool (``benchmarks.common.tweet_quality_config``). On that same test split, in one run:
- **peer**: a plain transformers fine-tune of the same MiniLM (AutoModelForSequenceClassification,
  AdamW 8e-5, linear warmup 10%, best epoch on a stratified 10% validation split of the pool);
- the project's recipe (experiments/tweet_emotion_cv.yaml, run through ``run_experiment``): one
  single fold, the best config's fold ensemble, the ensemble selection (the run's ensemble) and the
  distilled single encoder (the distill stage's student).
Each method's macro-F1 comes with a bootstrap 95% interval and its paired difference to the peer
(``benchmarks.common.paired_bootstrap``). Writes benchmarks/results/quality.json (figure = the
run's ensemble, baseline = peer, ratio) and prints a Markdown table.
"""
from __future__ import annotations

import argparse
import time

import numpy as np

from benchmarks.common import ROOT, paired_bootstrap, tweet_quality_config, write_result

RUNS = ROOT / "runs" / "benchmarks"


def plain_finetune(train_texts, train_labels, test_texts, classes: int, epochs: int, seed: int) -> tuple[np.ndarray, dict]:
    """The peer: what a user writes without this project. Returns test probabilities and its figures."""
    import torch
    from sklearn.model_selection import train_test_split
    from sklearn.metrics import f1_score
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, get_linear_schedule_with_warmup

    from trainables.pretrained import resolve_pretrained

    torch.manual_seed(seed)
    path = resolve_pretrained("minilm-l6")
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=classes)
    tr_x, va_x, tr_y, va_y = train_test_split(train_texts, train_labels, test_size=0.1, stratify=train_labels, random_state=seed)

    def batches(texts, labels=None, size=32, shuffle=False):
        order = np.random.default_rng(seed + len(texts)).permutation(len(texts)) if shuffle else np.arange(len(texts))
        for i in range(0, len(texts), size):
            rows = order[i:i + size]
            enc = tokenizer([texts[r] for r in rows], truncation=True, max_length=64, padding=True, return_tensors="pt")
            yield enc, None if labels is None else torch.tensor([labels[r] for r in rows])

    def predict(texts):
        model.eval()
        with torch.no_grad():
            return torch.cat([model(**enc).logits.softmax(-1) for enc, _ in batches(texts, size=64)]).numpy()

    optimizer = torch.optim.AdamW(model.parameters(), lr=8e-5, weight_decay=0.01)
    steps = epochs * -(-len(tr_x) // 32)
    scheduler = get_linear_schedule_with_warmup(optimizer, int(0.1 * steps), steps)
    best, best_state, started = -1.0, None, time.perf_counter()
    for epoch in range(epochs):
        model.train()
        for enc, y in batches(tr_x, tr_y, shuffle=True):
            loss = model(**enc, labels=y).loss
            loss.backward()
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad()
        f1 = f1_score(va_y, predict(va_x).argmax(1), average="macro")
        if f1 > best:
            best, best_state = f1, {k: v.clone() for k, v in model.state_dict().items()}
    model.load_state_dict(best_state)
    return predict(test_texts), {"val_macro_f1": best, "train_time_s": time.perf_counter() - started}


def project_predictions(run) -> dict[str, tuple[np.ndarray, dict]]:
    """Test-split probabilities and figures of the run's single fold, best-config fold ensemble,
    ensemble selection and distilled student (orchestrator/evaluate/measure.py: measured once)."""
    from orchestrator.evaluate.ensemble import combine
    from orchestrator.evaluate.measure import Artifact, ensemble_artifact, fold_logits, measure

    folds = tuple(run.fold_model_dirs())
    artifacts = {"single fold (fold 0)": Artifact("fold 0", "torch", folds[:1]),
                 "fold ensemble (best config)": Artifact("folds", "torch", folds),
                 "ensemble selection": ensemble_artifact(run)}
    student = run.stage_model_dir("distill")
    if (student / "model.json").is_file():
        artifacts["distilled single MiniLM"] = Artifact("student", "torch", (student,))
    out = {}
    for name, artifact in artifacts.items():
        figures = measure(run, artifact)
        probs = combine(fold_logits(run, artifact), False, artifact.weights)
        out[name] = (probs, {"models": figures["models"], "texts_per_s": figures["texts_per_s"], "parameters": figures["parameters"]})
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--peer-epochs", type=int, default=4)
    parser.add_argument("--name", default="quality", help="run name under runs/benchmarks/")
    parser.add_argument("--resume", action="store_true", help="reuse the run's trained folds and stages where unchanged")
    parser.add_argument("--out")
    args = parser.parse_args()
    import torch

    from orchestrator.pipeline import run_experiment
    from orchestrator.rundir import RunDir

    cfg = tweet_quality_config(name=args.name, runs_dir=str(RUNS))
    started = time.perf_counter()
    summary = run_experiment(cfg, resume=args.resume, overwrite=not args.resume, log=lambda m: print(m, flush=True))
    project_s = time.perf_counter() - started
    run = RunDir.open(summary.run.root)
    split, train, val = run.evaluation_split(), run.load_split("train"), run.load_split("val")
    classes = run.stage("data")["classes"]
    gold = np.asarray(split.labels)
    methods = project_predictions(run)
    torch.set_num_threads(2)
    peer_probs, peer = plain_finetune(train.texts + val.texts, [int(x) for x in train.labels + val.labels],
                                      split.texts, len(classes), args.peer_epochs, cfg.seed)
    peer_pred = peer_probs.argmax(1)
    rows = {"peer: plain fine-tune": {**paired_bootstrap(gold, peer_pred, peer_pred), **peer}}
    for name, (probs, figures) in methods.items():
        rows[name] = {**paired_bootstrap(gold, probs.argmax(1), peer_pred), **figures}
    table = ["| method | test macro-F1 (95% CI) | Δ vs peer (95% CI) | models | texts/s |", "| --- | --- | --- | --- | --- |"]
    for name, r in rows.items():
        table.append(f"| {name} | {r['f1']:.4f} ({r['f1_lo']:.4f}–{r['f1_hi']:.4f}) | {r['diff']:+.4f} ({r['diff_lo']:+.4f}, "
                     f"{r['diff_hi']:+.4f}) | {r.get('models', 1)} | {r.get('texts_per_s', float('nan')):.1f} |")
    print("\n".join(table))
    figure = rows["ensemble selection"]["f1"]
    write_result("quality", {
        "what": f"tweet_eval emotion, {len(gold)} held-out rows (25% of train+validation), macro-F1; peer = plain "
                f"transformers fine-tune of MiniLM ({args.peer_epochs} epochs), project = experiments/tweet_emotion_cv.yaml",
        "unit": "macro-F1", "figure": figure, "baseline": rows["peer: plain fine-tune"]["f1"],
        "ratio": figure / rows["peer: plain fine-tune"]["f1"], "project_run_s": project_s, "methods": rows, "table": table,
        "target": "ensemble ≥ peer + 0.02 with the paired CI above 0; student ≥ peer + 0.01",
    }, args.out)


if __name__ == "__main__":
    main()
