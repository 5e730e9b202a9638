"""The benchmark scripts' own arithmetic: the verdicts they write and the roofline they compare with."""
from __future__ import annotations

import pytest

from benchmarks.roofline import encoder_flops, gemm_gflops
from benchmarks.serve_faults import recovery_s
from benchmarks.train_throughput import verdict

MINILM_L6 = {"hidden_size": 384, "intermediate_size": 1536, "num_hidden_layers": 6}


def runs(speed: float, f1: list[float]) -> dict:
    return {"samples_per_s": speed, "val_macro_f1": sum(f1) / len(f1), "val_macro_f1_per_seed": f1}


def test_train_throughput_verdict_pairs_f1_by_seed():
    ours, plain = runs(60.0, [0.70, 0.69, 0.71]), runs(40.0, [0.69, 0.70, 0.69])
    v = verdict(ours, plain)
    assert v["ratio"] == pytest.approx(1.5)
    assert v["comparisons"]["samples_per_s"]["met"] is True
    assert v["f1_diff_mean"] == pytest.approx(0.02 / 3)
    assert v["comparisons"]["val_macro_f1"]["met"] is True and v["f1_no_worse"] is True


def test_train_throughput_verdict_fails_a_lost_point_and_a_slow_loop():
    ours, plain = runs(50.0, [0.68, 0.68, 0.68]), runs(40.0, [0.70, 0.69, 0.695])
    v = verdict(ours, plain)
    assert v["comparisons"]["samples_per_s"]["met"] is False  # 1.25 < 1.4
    assert v["f1_diff_mean"] == pytest.approx(-0.015)
    assert v["comparisons"]["val_macro_f1"]["met"] is False
    assert "-0.0150" in v["comparisons"]["val_macro_f1"]["target"]


def test_encoder_flops_of_minilm_at_64_tokens():
    # per token and layer: 2 x (4 x 384^2 + 2 x 384 x 1536) projections + 2 x 2 x 64 x 384 attention
    per_text = 6 * 64 * (2 * (4 * 384**2 + 2 * 384 * 1536) + 4 * 64 * 384)
    assert encoder_flops(MINILM_L6, [64]) == per_text
    assert per_text == pytest.approx(1.40e9, rel=0.01)
    assert encoder_flops(MINILM_L6, [64, 32]) == per_text + encoder_flops(MINILM_L6, [32])


def test_gemm_gflops_measures_both_runtimes():
    peak = gemm_gflops(threads=1, shape=(64, 64, 64), repeat=3)
    assert set(peak) == {"torch", "onnxruntime"}
    assert all(v > 0.1 for v in peak.values())


def test_serve_faults_recovery_counts_from_the_kill_to_lasting_success():
    rows = [{"sent": s, "latency": 0.1, "status": st}
            for s, st in ((1.0, 200), (2.0, 200), (3.0, 503), (4.0, "timeout"), (5.0, 200), (6.0, 200))]
    assert recovery_s(rows, 2.5) == 2.5   # failures at 3 and 4; every request from 5 on succeeded
    assert recovery_s(rows[:2] + rows[4:], 2.5) == 0.0  # nothing failed after the kill
    assert recovery_s(rows[:4], 2.5) is None  # still failing at the end
    in_flight = [{"sent": 2.0, "latency": 1.0, "status": 500}, {"sent": 2.6, "latency": 0.1, "status": 200}]
    assert abs(recovery_s(in_flight, 2.5) - 0.1) < 1e-9  # sent before the kill, failed after it


def test_node_faults_compares_every_epoch_of_every_fold():
    from benchmarks.node_faults import max_metric_diff

    row = {"epoch": 1, "train_loss": 0.5, "val_loss": 0.4, "val_macro_f1": 0.8, "val_accuracy": 0.81}
    clean = {0: [row, {**row, "epoch": 2}], 1: [row]}
    assert max_metric_diff(clean, clean) == 0.0
    assert max_metric_diff(clean, {0: [row, {**row, "epoch": 2, "val_loss": 0.45}], 1: [row]}) == pytest.approx(0.05)
    assert max_metric_diff(clean, {0: [row], 1: [row]}) == float("inf")  # an epoch lost (or run twice) is no match


def test_cv_racing_floor_races_each_config_against_the_known_winner():
    from benchmarks.cv_racing import oracle_floor

    best = {"fold_scores": [0.95, 0.94, 0.96, 0.95, 0.94]}
    worse = {"fold_scores": [0.90, 0.895, 0.91, 0.90, 0.89]}   # out after 2 folds
    tied = {"fold_scores": [0.951, 0.939, 0.959, 0.951, 0.941]}  # never significantly worse: all 5
    assert oracle_floor([best, worse, tied], best, 5) == 5 + 2 + 5
