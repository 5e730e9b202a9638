"""Shared fixtures: one real Ray for the whole session (ray.init costs ~9 s), tiny pretrained dirs."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

# Tiny models on 2 shared cores: one intra-op thread avoids oversubscription (Ray workers set their own).
torch.set_num_threads(1)

ROOT = Path(__file__).resolve().parents[1]
NO_GPU = "needs a CUDA GPU: torch.cuda.is_available() is False on this machine (run benchmarks/gpu_check.sh where one is)"


def pytest_collection_modifyitems(config, items):
    """Tests marked ``gpu`` skip, saying why, where CUDA is missing; everything else always runs."""
    if not torch.cuda.is_available():
        for item in items:
            if "gpu" in item.keywords:
                item.add_marker(pytest.mark.skip(reason=NO_GPU))


@pytest.fixture(scope="session")
def ray_session():
    """A local Ray with 2 CPUs, started once; tests that need Ray take this fixture."""
    os.environ.setdefault("RAY_TRAIN_V2_ENABLED", "1")
    import ray

    if not ray.is_initialized():
        ray.init(num_cpus=2, include_dashboard=True, dashboard_host="127.0.0.1", logging_level="WARNING")
    yield ray
    ray.shutdown()


@pytest.fixture
def in_tmp(tmp_path, monkeypatch):
    """Run with the working directory in tmp_path (runs/ is created there)."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.fixture(scope="session")
def smoke_run(ray_session, tmp_path_factory):
    """experiments/smoke.yaml trained once through the real pipeline (Ray Tune + Train) for the whole
    session. Treat it as read-only: copy ``smoke_run.run.root`` before changing anything."""
    from orchestrator.config import load_config
    from orchestrator.pipeline import run_experiment

    cfg = load_config(ROOT / "experiments" / "smoke.yaml")
    cfg.runs_dir = str(tmp_path_factory.mktemp("runs"))
    return run_experiment(cfg, log=lambda *_: None)


@pytest.fixture
def broken_bert(tmp_path):
    """A tiny BERT folder that passes every check before training (config.json, tokenizer) but whose
    weights file is garbage: loading it fails inside the training worker, on every attempt."""
    from transformers import BertConfig, BertModel, BertTokenizerFast

    folder = tmp_path / "broken-bert"
    folder.mkdir()
    vocab = tmp_path / "vocab.txt"
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *"abcdefghijklmnopqrstuvwxyz"]) + "\n")
    BertModel(BertConfig(vocab_size=31, hidden_size=8, num_hidden_layers=1, num_attention_heads=2,
                         intermediate_size=16, max_position_embeddings=64)).save_pretrained(folder)
    BertTokenizerFast(vocab_file=str(vocab)).save_pretrained(folder)
    (folder / "model.safetensors").write_bytes(b"not a safetensors file")
    return folder
