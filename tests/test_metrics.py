"""trainables.metrics: probabilities, thresholding, F1 scores against sklearn and by hand."""
import subprocess
import sys
import warnings

import numpy as np
import pytest
from sklearn.metrics import accuracy_score, f1_score

from trainables.metrics import compute_metrics, predict_labels, probabilities, tune_thresholds

# Multiclass: predictions [0, 1, 1, 1, 0] against gold [0, 0, 1, 1, 2].
GOLD = np.array([0, 0, 1, 1, 2])
PROBS = np.array([[.7, .2, .1], [.3, .6, .1], [.1, .8, .1], [.2, .5, .3], [.5, .1, .4]])
# Multilabel: predictions at 0.5 are [[1,0,0], [0,1,1], [1,1,0]].
GOLD_ML = np.array([[1, 0, 1], [0, 1, 0], [1, 1, 0]])
PROBS_ML = np.array([[.9, .2, .4], [.1, .7, .6], [.8, .6, .1]])


def test_softmax_and_sigmoid_are_stable_for_huge_logits():
    logits = np.array([[1000.0, 0.0, -1000.0], [1.0, 2.0, 3.0]])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with np.errstate(over="raise", invalid="raise", divide="raise"):  # underflow to 0 is fine
            soft = probabilities(logits, multilabel=False)
            sig = probabilities(logits, multilabel=True)
    np.testing.assert_allclose(soft[0], [1.0, 0.0, 0.0])
    np.testing.assert_allclose(soft[1], np.exp([1.0, 2.0, 3.0]) / np.exp([1.0, 2.0, 3.0]).sum())
    np.testing.assert_allclose(sig[0], [1.0, 0.5, 0.0])
    np.testing.assert_allclose(sig[1], 1 / (1 + np.exp(-np.array([1.0, 2.0, 3.0]))))


def test_low_precision_logits_keep_tiny_probabilities():
    sig = probabilities(np.array([-30.0], dtype=np.float16), multilabel=True)
    assert sig.dtype == np.float64 and 0 < sig[0] < 1e-12


def test_predict_labels_argmax_and_threshold_inclusive():
    np.testing.assert_array_equal(predict_labels(PROBS, multilabel=False), [0, 1, 1, 1, 0])
    probs = np.array([[0.5, 0.49, 0.9]])
    np.testing.assert_array_equal(predict_labels(probs, multilabel=True), [[1, 0, 1]])
    np.testing.assert_array_equal(predict_labels(probs, multilabel=True, threshold=np.array([0.6, 0.4, 0.95])),
                                  [[0, 1, 0]])


def test_multiclass_metrics_by_hand():
    # class 0: P=R=F=1/2; class 1: P=2/3, R=1, F=4/5; class 2: F=0 (supports 2, 2, 1)
    assert compute_metrics(GOLD, PROBS, multilabel=False) == pytest.approx(
        {"accuracy": 0.6, "macro_f1": 1.3 / 3, "micro_f1": 0.6, "weighted_f1": 0.52})


def test_multilabel_metrics_by_hand():
    # exact match only on the last row; per-class F1 = 1, 1, 0 (supports 2, 2, 1); micro tp=4 fp=1 fn=1
    assert compute_metrics(GOLD_ML, PROBS_ML, multilabel=True) == pytest.approx(
        {"accuracy": 1 / 3, "macro_f1": 2 / 3, "micro_f1": 0.8, "weighted_f1": 0.8})
    # raising class 2's threshold to 0.65 removes its false positive: two rows now match exactly
    assert compute_metrics(GOLD_ML, PROBS_ML, True, threshold=np.array([.5, .5, .65]))["accuracy"] == pytest.approx(2 / 3)


@pytest.mark.parametrize("multilabel", [False, True])
def test_metrics_equal_sklearn_on_random_arrays(multilabel):
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(200, 5))
    gold = (rng.random((200, 5)) < 0.3).astype(int) if multilabel else rng.integers(0, 5, 200)
    pred = (1 / (1 + np.exp(-logits)) >= 0.5).astype(int) if multilabel else logits.argmax(1)
    expected = {"accuracy": accuracy_score(gold, pred)}
    expected.update({f"{a}_f1": f1_score(gold, pred, average=a, zero_division=0) for a in ("macro", "micro", "weighted")})
    got = compute_metrics(gold, probabilities(logits, multilabel), multilabel)
    assert got == pytest.approx(expected)
    assert all(type(value) is float for value in got.values())


def test_tune_thresholds_maximises_f1_and_prefers_default_on_ties():
    gold = np.array([[1, 0, 1], [1, 0, 0], [0, 0, 0], [0, 0, 0]])
    probs = np.array([[.30, .9, .9], [.35, .1, .8], [.20, .2, .1], [.10, .3, .1]])
    # class 0: F1=1 for 0.25 and 0.30 -> 0.30 is nearer 0.5; class 1 has no positives -> 0.5;
    # class 2: F1=1 for 0.85 and 0.90 -> 0.85
    np.testing.assert_allclose(tune_thresholds(gold, probs), [0.30, 0.5, 0.85])


def test_metrics_module_imports_no_orchestrator_ray_or_torch():
    code = ("import sys, trainables.metrics; "
            "print(sorted({m.split('.')[0] for m in sys.modules} & {'orchestrator', 'ray', 'torch'}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
