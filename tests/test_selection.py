"""Ensemble selection (Caruana) on synthetic out-of-fold logits, and weighted combination."""
import numpy as np
import pytest

from orchestrator.evaluate.ensemble import combine
from orchestrator.evaluate.selection import combined_logits, select


def synthetic_oof(n=300, classes=3, seed=0):
    """Config A is confidently right on rows [0, 200) and mildly wrong after; B confidently right on
    [100, 300) and mildly wrong before; C is noise. A and B in equal parts get every row right."""
    rng = np.random.default_rng(seed)
    gold = rng.integers(0, classes, n)
    wrong = (gold + 1) % classes

    def config(right_rows):
        logits = np.zeros((n, classes))
        logits[np.arange(n), wrong] = 1.0
        logits[right_rows] = 0.0
        logits[right_rows, gold[right_rows]] = 4.0
        return logits

    a, b = config(np.arange(0, 200)), config(np.arange(100, 300))
    c = rng.normal(size=(n, classes))
    return np.stack([a, b, c]), gold


def test_selection_picks_the_known_best_mix_and_weights_sum_to_one():
    oof, gold = synthetic_oof()
    weights, history = select(oof, gold, multilabel=False, rounds=10)
    assert weights.sum() == pytest.approx(1.0)
    assert weights.tolist() == [0.5, 0.5, 0.0]
    assert history[0] < 0.8 and history[1] == 1.0  # A alone gets 2/3 of the rows; A + B all of them


def test_selection_of_one_dominant_config_is_that_config():
    oof, gold = synthetic_oof()
    perfect = np.eye(3)[gold] * 5
    weights, _ = select(np.stack([oof[2], perfect, oof[0]]), gold, multilabel=False, rounds=5)
    assert weights.tolist() == [0.0, 1.0, 0.0]


def test_weighted_combination_matches_the_rule_and_its_logits():
    oof, _ = synthetic_oof()
    w = np.array([0.75, 0.25, 0.0])
    expect = np.exp(oof[0] * 0.75 + oof[1] * 0.25)
    np.testing.assert_allclose(combine(oof, False, w), expect / expect.sum(1, keepdims=True), rtol=1e-6)
    np.testing.assert_allclose(combine(oof, False), combine(oof, False, [1 / 3] * 3))
    probs = combine(oof, True, w)  # multilabel: weighted mean of sigmoids
    np.testing.assert_allclose(probs, 0.75 / (1 + np.exp(-oof[0])) + 0.25 / (1 + np.exp(-oof[1])), rtol=1e-6)
    np.testing.assert_allclose(1 / (1 + np.exp(-combined_logits(oof, True, w))), probs, rtol=1e-4)


def test_multilabel_selection_weights_sum_to_one():
    rng = np.random.default_rng(1)
    gold = (rng.random((200, 4)) > 0.6).astype(int)
    good = np.where(gold > 0, 3.0, -3.0) + rng.normal(scale=2.5, size=gold.shape)
    weights, _ = select(np.stack([rng.normal(size=gold.shape), good]), gold, multilabel=True, rounds=6)
    assert weights.sum() == pytest.approx(1.0) and weights[1] > weights[0]


def test_ensemble_rows_show_selection_and_best_config_side_by_side():
    from orchestrator.report.compare import ensemble_rows

    choice = {"kind": "selection", "members": 6, "config_weights": [{"params": {"train.lr": 0.001}, "weight": 0.75},
                                                                     {"params": {"train.lr": 0.003}, "weight": 0.25}],
              "oof": {"macro_f1": 0.81}, "test": {"macro_f1": 0.8}, "best_config_oof": {"macro_f1": 0.79},
              "best_config_test": {"macro_f1": 0.78}}
    selection, best = ensemble_rows(choice)
    assert (selection["oof_macro_f1"], selection["test_macro_f1"], best["oof_macro_f1"], best["test_macro_f1"]) == (0.81, 0.8, 0.79, 0.78)
    assert selection["ensemble"] == "selection (6 models)" and '0.75 × {"train.lr": 0.001}' in selection["configs"]
    assert ensemble_rows({"kind": "best_config"}) == [] and ensemble_rows({}) == []
