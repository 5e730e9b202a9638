"""A streamed run's out-of-fold and test predictions, made and written by Ray Data, scored from counts.

One pass over the pool: an actor holding the K fold models scores each row, a pooled row by the one
model that did not train on it (its OOF prediction), a test row by the ensemble (mean of the K
models' probabilities). Rows go to ``predictions/split=oof|test/*.parquet`` (key, text, label,
fold, pred, probs). The metrics come from a groupby of (split, label, pred) counts: no prediction is
ever gathered in the driver.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from orchestrator.rundir import RunDir, write_json
from orchestrator.stream.source import TEST_FOLD, StreamedPool
from trainables.metrics import label_scores

BATCH_ROWS = 512


class _FoldScorer:
    """map_batches class: the K fold models, loaded once per actor."""

    def __init__(self, model_dirs: Sequence[str]):
        from orchestrator.evaluate.ensemble import Ensemble

        self.ensemble = Ensemble(list(model_dirs), device="cpu")

    def __call__(self, batch: dict) -> dict:
        from trainables.metrics import probabilities

        ids = [x.tolist() for x in batch["ids"]]
        logits = self.ensemble.fold_logits(ids)  # [K, N, C]
        folds = batch["fold"]
        own = probabilities(logits[np.clip(folds, 0, len(logits) - 1), np.arange(len(ids))], False)
        probs = np.where((folds == TEST_FOLD)[:, None], self.ensemble.combine(logits), own)
        return {"key": batch["key"], "text": batch["text"], "label": batch["label"], "fold": folds,
                "split": np.where(folds == TEST_FOLD, "test", "oof"), "pred": probs.argmax(1), "probs": list(probs.astype(np.float32))}


def predict_pool(run: RunDir, pool: StreamedPool, model_dirs: Sequence[Path], parallel: int = 1) -> dict:
    """Write every row's prediction under ``run.predictions_dir``; return {"oof": metrics, "test": metrics
    or {}} (each with its row count) and write them to predictions/metrics.json."""
    import ray.data

    out = run.predictions_dir
    pool.dataset.map_batches(_FoldScorer, fn_constructor_args=([str(d) for d in model_dirs],), batch_size=BATCH_ROWS,
                             batch_format="numpy", compute=ray.data.ActorPoolStrategy(size=parallel), num_cpus=1) \
        .write_parquet(str(out), partition_cols=["split"], mode="overwrite")
    counts = ray.data.read_parquet(str(out), columns=["split", "label", "pred"]).groupby(["split", "label", "pred"]).count().to_pandas()
    scores = {}
    for split in ("oof", "test"):
        rows = counts[counts["split"] == split]
        if len(rows):
            weight = rows["count()"].to_numpy()
            scores[split] = {**label_scores(rows["label"].to_numpy(), rows["pred"].to_numpy(), weight), "rows": int(weight.sum())}
    write_json(out / "metrics.json", scores)
    return {"oof": scores.get("oof"), "test": scores.get("test", {})}
