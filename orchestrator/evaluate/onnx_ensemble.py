"""The fold ensemble on ONNX Runtime: K ``export_model_dir`` directories instead of torch models.

Same surface and combination rules as ``orchestrator.evaluate.ensemble.Ensemble`` (shared through
``EnsembleBase``); no torch weights are loaded.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from orchestrator.evaluate.ensemble import EnsembleBase
from trainables.export import load_export_dir, onnx_logits
from trainables.text.base import TextEncoder


class OnnxEnsemble(EnsembleBase):
    """One ONNX Runtime session per fold; ``int8`` picks the quantized models, ``threads`` caps
    each session's intra-op pool."""

    def __init__(self, export_dirs: Sequence[str | Path], int8: bool = False, threads: Optional[int] = None,
                 weights: Optional[Sequence[float]] = None):
        self.int8 = int8
        self.threads = threads
        super().__init__(export_dirs, weights)

    def _load(self, model_dirs: list[str]) -> tuple[TextEncoder, dict]:
        loaded = [load_export_dir(d, self.int8, self.threads) for d in model_dirs]
        self.sessions = [s for s, _, _ in loaded]
        return loaded[0][1], loaded[0][2]

    def fold_logits(self, ids: Sequence[Sequence[int]], batch_size: int = 64) -> np.ndarray:
        return np.stack([onnx_logits(s, ids, self.encoder.pad_id, batch_size) for s in self.sessions])
