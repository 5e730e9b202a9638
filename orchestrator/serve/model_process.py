"""The served model in a process of its own, so that its Python never waits for the replica's GIL.

A replica's event loop (HTTP parsing, FastAPI, Ray's request path) runs Python for every request.
In the same process the model's forward pass, a few hundred small torch ops each re-taking the GIL,
waited behind it: under 16 clients on 2 cores the distilled MiniLM's inference thread ran 0.73 cores
while busy 96% of the load, 76 texts/s served against 152 offline (87 served once in its own process). ``ModelProcess`` loads the model in a child (one worker of a spawn ``ProcessPoolExecutor``)
and sends it each batch's texts; only texts and (labels, probabilities, truncated) cross the pipe.
"""
from __future__ import annotations

import ctypes
import multiprocessing
import os
import signal
import sys
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from typing import Optional

_model = None  # the child's loaded model


@dataclass(frozen=True)
class ModelInfo:
    """What the replica says about the model it serves (from the child, which loaded it)."""
    classes: list[str]
    multilabel: bool
    threshold: float | list[float]
    max_length: int
    model_dirs: list[str]
    weights: Optional[list[float]]
    device: str


def _die_with_parent() -> None:
    """Linux: the child gets SIGKILL when the replica's process dies, however it dies."""
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def _load(run_dir: str, model: str, device: str, threads: int) -> tuple[int, ModelInfo]:
    """In the child: load the model once; (the child's pid, what it serves)."""
    global _model
    _die_with_parent()
    import torch

    from orchestrator.evaluate.loading import load_model
    from orchestrator.rundir import RunDir

    torch.set_num_threads(threads)
    _model = m = load_model(RunDir.open(run_dir), model, device=device, threads=threads)
    return os.getpid(), ModelInfo(m.classes, m.multilabel, m.threshold, m.encoder.max_length, m.model_dirs, m.weights,
                                  str(getattr(m, "device", "cpu")))


def _predict(texts: list[str], chunk_size: int) -> list[tuple]:
    pred = _model.predict(texts, chunk_size)
    return list(zip(pred.labels, pred.probs, pred.truncated))


class ModelProcess:
    """``ModelProcess(run_dir, model, device, threads).predict(texts, chunk_size)`` → (labels,
    probabilities, truncated) per text, computed in the child (``pid``); ``info`` describes the model."""

    def __init__(self, run_dir: str, model: str, device: str = "cpu", threads: int = 1):
        self._pool = ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"))
        # the one worker keeps the model: a model that fails to load raises its own error here
        try:
            self.pid, self.info = self._pool.submit(_load, run_dir, model, device, threads).result()
        except BaseException:
            self.close()  # the worker is not left behind
            raise

    def predict(self, texts: list[str], chunk_size: int) -> list[tuple]:
        return self._pool.submit(_predict, texts, chunk_size).result()

    def alive(self) -> bool:
        """False once the child died (killed, out of memory): every later call would fail."""
        return any(child.pid == self.pid for child in multiprocessing.active_children())

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
