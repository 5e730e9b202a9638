"""A streamed run's out-of-fold and test predictions, written by Ray Data, scored from counts.

OOF: each fold's training worker scored its validation rows at every epoch anyway; the best epoch's
predictions are its ``oof.parquet`` (trainables/streamed_fold.py), and Ray Data copies them into
``predictions/split=oof/``. Test: an actor pool holding the K fold models scores the test rows
(the mean of the models' probabilities) into ``predictions/split=test/``. Columns: key, label, fold,
pred, probs (test rows also their text). The metrics come from a groupby of (split, label, pred)
counts: no prediction is ever gathered in the driver.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from orchestrator.rundir import RunDir, write_json
from orchestrator.stream.source import COUNT_PARTITIONS, TEST_FOLD, StreamedPool
from orchestrator.train.folds import FoldResult
from trainables.metrics import label_scores
from trainables.ray_worker import OOF_FILE

BATCH_ROWS = 512


class _EnsembleScorer:
    """map_batches class: the K fold models, loaded once per actor; a test row's probabilities are
    the mean of theirs (``EnsembleBase.combine``)."""

    def __init__(self, model_dirs: Sequence[str]):
        from orchestrator.evaluate.ensemble import Ensemble

        self.ensemble = Ensemble(list(model_dirs), device="cpu")

    def __call__(self, batch: dict) -> dict:
        probs = self.ensemble.combine(self.ensemble.fold_logits(list(batch["ids"]))).astype(np.float32)
        return {"key": batch["key"], "text": batch["text"], "label": batch["label"], "fold": batch["fold"],
                "pred": probs.argmax(1), "probs": list(probs)}


def predict_pool(run: RunDir, pool: StreamedPool, folds: Sequence[FoldResult], parallel: int = 1) -> dict:
    """Write every row's prediction under ``run.predictions_dir`` (split=oof/: the folds' own
    best-epoch predictions, written by their training workers; split=test/: the ensemble's, scored
    here); return {"oof": metrics, "test": metrics or {}} (each with its row count), also written to
    predictions/metrics.json."""
    import ray.data
    from ray.data.expressions import col

    out = run.predictions_dir
    ray.data.read_parquet([str(run.fold_dir(r.fold) / OOF_FILE) for r in folds]).write_parquet(str(out / "split=oof"))
    if pool.rows(TEST_FOLD):
        (pool.dataset.filter(expr=col("fold") == TEST_FOLD)
         .map_batches(_EnsembleScorer, fn_constructor_args=([str(r.model_dir) for r in folds],), batch_size=BATCH_ROWS,
                      batch_format="numpy", compute=ray.data.ActorPoolStrategy(size=parallel), num_cpus=1)
         .write_parquet(str(out / "split=test")))
    counts = (ray.data.read_parquet(str(out)).select_columns(["split", "label", "pred"])
              .groupby(["split", "label", "pred"], num_partitions=COUNT_PARTITIONS).count().to_pandas())
    scores = {}
    for split in ("oof", "test"):
        rows = counts[counts["split"] == split]
        if len(rows):
            weight = rows["count()"].to_numpy()
            scores[split] = {**label_scores(rows["label"].to_numpy(), rows["pred"].to_numpy(), weight), "rows": int(weight.sum())}
    write_json(out / "metrics.json", scores)
    return {"oof": scores.get("oof"), "test": scores.get("test", {})}
