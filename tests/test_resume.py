"""Incremental training: an interrupted run resumed from its training state ends with the same weights
as one run straight through (model, optimizer, scheduler, sampler epoch, RNG and hooks restored)."""
from __future__ import annotations

import io
import json

import numpy as np
import pytest
import torch

from orchestrator.config import ModelConfig, TrainConfig, load_config, with_overrides
from orchestrator.pipeline import run_experiment
from tests.conftest import ROOT
from trainables.loop import FoldData, Trainer
from trainables.models import build_model
from trainables.ray_worker import TRAIN_STATE, load_train_state
from trainables.text.vocab import VocabTextEncoder

TEXTS = ["good fine great", "bad awful poor", "great good", "poor bad", "fine great good day", "awful bad day"] * 8
LABELS = np.array([1, 0, 1, 0, 1, 0] * 8)


def _trainer(train_cfg: TrainConfig) -> Trainer:
    torch.manual_seed(0)
    encoder = VocabTextEncoder.build(TEXTS, tokens="word", max_length=16, vocab_size=100)
    ids = encoder.encode(TEXTS)
    data = FoldData(ids[:36], LABELS[:36], ids[36:], LABELS[36:], encoder.pad_id, 2)
    model = build_model(ModelConfig(kind="small", arch="textcnn", embedding_dim=16, num_filters=8, dropout=0.3), 2, encoder)
    return Trainer(model, data, train_cfg, seed=3)


@pytest.mark.parametrize("tricks", [
    {},
    {"ema_decay": 0.9, "adversarial": "fgm", "noisytune": 0.1, "rdrop_alpha": 0.5, "sampler": "weighted"},
    {"swa_start_epoch": 2, "adversarial": "pgd", "schedule": "cosine", "grad_accum": 2},
], ids=["plain", "ema-fgm-noisytune-rdrop-weighted", "swa-pgd-cosine-accum"])
def test_interrupted_and_resumed_equals_straight_through(tricks):
    cfg = TrainConfig(epochs=3, batch_size=8, lr=1e-2, early_stopping_patience=None, **tricks)
    straight = _trainer(cfg)
    straight.fit()

    first = _trainer(cfg)
    first.fit(until_epoch=1)  # interrupted after epoch 1
    assert len(first.fit_state.history) == 1
    buffer = io.BytesIO()
    torch.save(first.state_dict(), buffer)
    torch.manual_seed(12345)  # the RNG must come from the checkpoint, not from here
    resumed = _trainer(cfg)
    buffer.seek(0)
    resumed.load_state_dict(torch.load(buffer, weights_only=False))
    resumed.fit()

    assert [h["epoch"] for h in resumed.fit_state.history] == [1, 2, 3]
    for name, value in straight.raw_model.state_dict().items():
        torch.testing.assert_close(resumed.raw_model.state_dict()[name], value, rtol=1e-5, atol=1e-6, msg=name)
    assert resumed.fit_state.history[-1]["val_loss"] == pytest.approx(straight.fit_state.history[-1]["val_loss"], rel=1e-5)


def test_a_stop_request_ends_the_fold_at_the_next_batch_without_another_epoch_report():
    cfg = TrainConfig(epochs=3, batch_size=8, lr=1e-2, early_stopping_patience=None)
    trainer, reports, asked = _trainer(cfg), [], []

    def stop_requested() -> bool:  # turns true at the third batch of epoch 2 (5 batches an epoch)
        asked.append(trainer.fit_state.epoch)
        return len(asked) > 5 + 2

    state = trainer.fit(lambda _, result: reports.append(result.metrics["epoch"]), stop_requested=stop_requested)
    assert reports == [1] and [h["epoch"] for h in state.history] == [1] and trainer.interrupted
    assert asked == [0] * 5 + [1] * 3 and trainer.state.step == 5 + 2


def test_resume_from_continues_an_earlier_run_through_ray(smoke_run, tmp_path):
    """smoke for 1 epoch, then --resume-from it up to 2 epochs == the session's smoke run (2 epochs straight;
    smoke's constant schedule makes the lr independent of the epoch count)."""
    cfg = with_overrides(load_config(ROOT / "experiments" / "smoke.yaml"), {"runs_dir": str(tmp_path), "train.epochs": 1, "name": "one"})
    first = run_experiment(cfg, log=lambda *_: None)
    more = with_overrides(cfg, {"train.epochs": 2, "name": "more"})
    resumed = run_experiment(more, log=lambda *_: None, resume_from=str(first.run.root))
    history = json.loads((resumed.run.root / "folds" / "0" / "history.json").read_text())["history"]
    assert [h["epoch"] for h in history] == [1, 2]  # epoch 1 restored from the first run, epoch 2 trained

    def last_weights(summary):
        trials = json.loads((summary.run.root / "trials.json").read_text())
        trial = trials["trials"][0]["trial_ids"][0]
        state = sorted((summary.run.ray_storage / f"trial_{trial}").glob(f"checkpoint_*/{TRAIN_STATE}"))[-1]
        return load_train_state(state.parent)["model"]

    straight = last_weights(smoke_run)
    for name, value in last_weights(resumed).items():
        torch.testing.assert_close(value, straight[name], rtol=1e-5, atol=1e-6, msg=name)
