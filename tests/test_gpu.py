"""The CUDA path (marked ``gpu``: skipped, saying why, on a machine without CUDA; run by
benchmarks/gpu_check.sh on one): mixed precision fp16 with GradScaler and bf16, EMA and SWA on the
device, CUDA logits against CPU logits, a run's ensemble served by a replica that reserves a GPU."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from benchmarks.common import free_port
from orchestrator.config import ServeConfig, TrainConfig
from orchestrator.evaluate.ensemble import Ensemble
from orchestrator.rundir import RunDir
from orchestrator.serve.deployment import deployment_options
from trainables.inference import predict_logits
from trainables.loop import Trainer
from tests.test_hf_models import build, fold_data, tiny_encoder

pytestmark = pytest.mark.gpu


@pytest.fixture(scope="module")
def encoder(tmp_path_factory):
    return tiny_encoder(tmp_path_factory.mktemp("tok"))


def train(encoder, **overrides) -> Trainer:
    cfg = TrainConfig(epochs=3, batch_size=4, lr=3e-3, warmup_ratio=0.0, sampler="random", early_stopping_patience=None,
                      **overrides)
    trainer = Trainer(build("bert", encoder), fold_data(encoder), cfg, seed=0, device="cuda")
    trainer.fit()
    return trainer


@pytest.mark.parametrize("amp", ["fp16", "bf16"])
def test_mixed_precision_trains_on_cuda(amp, encoder):
    trainer = train(encoder, amp=amp)
    history = trainer.fit_state.history
    assert all(np.isfinite(h["train_loss"]) and np.isfinite(h["val_loss"]) for h in history)
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    assert all(p.device.type == "cuda" and p.dtype == torch.float32 for p in trainer.model.parameters())  # fp32 master weights
    scaler = trainer.state.scaler
    if amp == "fp16":
        assert scaler is not None and scaler.is_enabled() and 0 < scaler.get_scale() < float("inf")
    else:
        assert scaler is None  # bf16 keeps fp32's range: nothing to scale


@pytest.mark.parametrize("trick", [{"ema_decay": 0.9}, {"swa_start_epoch": 2}])
def test_weight_averaging_lives_on_the_device(trick, encoder):
    trainer = train(encoder, amp="fp16", **trick)
    (averaging,) = [h for h in trainer.hooks.hooks if type(h).__name__ == "WeightAveraging"]
    averaged = list(averaging.averaged.parameters())
    assert averaged and all(p.device.type == "cuda" for p in averaged)
    assert all(np.isfinite(h["val_loss"]) for h in trainer.fit_state.history)


def test_cuda_logits_match_cpu_logits(encoder):
    model = build("bert", encoder).eval()
    ids = fold_data(encoder).val_ids
    cpu = predict_logits(model, ids, encoder.pad_id, batch_size=5, device="cpu")
    cuda = predict_logits(model.to("cuda"), ids, encoder.pad_id, batch_size=5, device="cuda")
    assert np.abs(cpu - cuda).max() <= 1e-4


def test_a_replica_with_a_gpu_serves_on_cuda(ray_session, tmp_path):
    from orchestrator.serve.client import Client
    from orchestrator.serve.deployment import deploy, shutdown
    from tests.test_serving import TEXTS, assert_matches, make_tiny_run

    run_dir = make_tiny_run(tmp_path, "tiny-gpu", seed=5)
    cfg = ServeConfig(port=free_port(), gpus_per_replica=1)
    assert deployment_options(cfg)["ray_actor_options"]["num_gpus"] == 1
    try:
        client = Client(deploy(run_dir, cfg))
        assert client.info()["device"].startswith("cuda")
        assert_matches(client.predict(TEXTS), Ensemble.of_run(RunDir.open(run_dir), "cpu"), TEXTS, tol=1e-4)
    finally:
        shutdown()
