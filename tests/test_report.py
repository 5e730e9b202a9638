"""orchestrator.report.test_report and orchestrator.atomic: exact report files, terminal table, atomic writes."""
import io
import json
import os

import numpy as np
import pytest
from rich.console import Console

from trainables import atomic
from trainables.atomic import atomic_write_bytes, atomic_write_text
from orchestrator.report.test_report import classification_tables, print_report, write_test_report

REPORT_FILES = ["badcases.csv", "confusion_matrix.csv", "confusion_matrix.png", "metrics.json", "per_class.csv"]
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

# Predictions [0, 1, 1, 1, 0] against gold [0, 0, 1, 1, 2]; "weather" never occurs.
CLASSES = ["sport", "tech", "politics", "weather"]
TEXTS = ["goal", 'chips, "fast"', "laptop", "phone", "vote"]
GOLD = np.array([0, 0, 1, 1, 2])
PROBS = np.array([[.7, .2, .1, 0], [.3, .6, .1, 0], [.1, .8, .1, 0], [.2, .5, .3, 0], [.5, .1, .4, 0]])
# Multilabel: predictions at 0.5 are [[1,0,0], [0,1,1], [1,1,0]].
CLASSES_ML = ["a", "b", "c"]
GOLD_ML = np.array([[1, 0, 1], [0, 1, 0], [1, 1, 0]])
PROBS_ML = np.array([[.9, .2, .4], [.1, .7, .6], [.8, .6, .1]])


def read(path):
    return path.read_text(encoding="utf-8")


def test_multiclass_report_files(tmp_path):
    out = tmp_path / "test"
    metrics = write_test_report(out, TEXTS, GOLD, PROBS, CLASSES, multilabel=False)
    assert [r["class"] for r in metrics.pop("per_class")] == list(CLASSES)

    assert sorted(os.listdir(out)) == REPORT_FILES
    assert metrics == pytest.approx({"accuracy": 0.6, "macro_f1": 1.3 / 3, "micro_f1": 0.6, "weighted_f1": 0.52, "n": 5})
    assert json.loads(read(out / "metrics.json")) == metrics
    assert read(out / "per_class.csv") == (
        "class,precision,recall,f1,support\n"
        "sport,0.5000,0.5000,0.5000,2\n"
        "tech,0.6667,1.0000,0.8000,2\n"
        "politics,0.0000,0.0000,0.0000,1\n"
        "weather,0.0000,0.0000,0.0000,0\n")
    assert read(out / "confusion_matrix.csv") == (
        "gold/predicted,sport,tech,politics,weather\n"
        "sport,1,1,0,0\n"
        "tech,0,2,0,0\n"
        "politics,1,0,0,0\n"
        "weather,0,0,0,0\n")
    assert read(out / "badcases.csv") == (
        "text,gold,predicted,prob_predicted,prob_gold\n"
        '"chips, ""fast""",sport,tech,0.6000,0.3000\n'
        "vote,politics,sport,0.5000,0.4000\n")
    png = (out / "confusion_matrix.png").read_bytes()
    assert png.startswith(PNG_SIGNATURE) and len(png) > 1000


def test_multilabel_report_files(tmp_path):
    metrics = write_test_report(tmp_path, ["x", "y", "z"], GOLD_ML, PROBS_ML, CLASSES_ML, multilabel=True)
    assert len(metrics.pop("per_class")) == len(CLASSES_ML)

    assert sorted(os.listdir(tmp_path)) == REPORT_FILES
    assert metrics == pytest.approx({"accuracy": 1 / 3, "macro_f1": 2 / 3, "micro_f1": 0.8, "weighted_f1": 0.8, "n": 3})
    assert read(tmp_path / "per_class.csv") == (
        "class,precision,recall,f1,support\n"
        "a,1.0000,1.0000,1.0000,2\n"
        "b,1.0000,1.0000,1.0000,2\n"
        "c,0.0000,0.0000,0.0000,1\n")
    assert read(tmp_path / "confusion_matrix.csv") == (
        "class/outcome,tn,fp,fn,tp\n"
        "a,1,0,0,2\n"
        "b,1,0,0,2\n"
        "c,1,1,1,0\n")
    assert read(tmp_path / "badcases.csv") == (
        "text,gold,predicted,prob_predicted,prob_gold\n"
        'x,"a,c",a,0.9000,"0.9000,0.4000"\n'
        'y,b,"b,c","0.7000,0.6000",0.7000\n')
    assert (tmp_path / "confusion_matrix.png").read_bytes().startswith(PNG_SIGNATURE)


def test_per_class_thresholds_reach_the_report():
    _, counts = classification_tables(GOLD_ML, PROBS_ML, CLASSES_ML, True, threshold=np.array([.5, .5, .65]))
    np.testing.assert_array_equal(counts[2], [2, 0, 1, 0])


def test_shape_mismatch_is_refused_before_writing(tmp_path):
    with pytest.raises(ValueError, match=r"expected probs \(5, 3\)"):
        write_test_report(tmp_path / "r", TEXTS, GOLD, PROBS, CLASSES[:3], multilabel=False)
    assert not (tmp_path / "r").exists()


def test_print_report_shows_classes_and_summary():
    console = Console(file=io.StringIO(), width=100, record=True)
    per_class = [{"class": "[red]odd", "precision": 0.5, "recall": 1.0, "f1": 2 / 3, "support": 2}]
    metrics = {"accuracy": 0.75, "macro_f1": 0.5, "micro_f1": 0.75, "weighted_f1": 0.625, "n": 4}
    print_report(metrics, per_class, console)
    text = console.export_text()
    assert "[red]odd" in text and "0.6667" in text
    for line in ("accuracy", "macro avg", "micro avg", "weighted avg"):
        assert line in text
    assert "0.6250" in text


def test_atomic_write_replaces_and_leaves_no_temp_files(tmp_path):
    target = tmp_path / "f.txt"
    atomic_write_text(target, "old")
    atomic_write_text(target, "néw")
    assert target.read_text(encoding="utf-8") == "néw"
    assert os.listdir(tmp_path) == ["f.txt"]


def test_atomic_write_failure_keeps_old_file_and_removes_temp(tmp_path, monkeypatch):
    target = tmp_path / "f.bin"
    target.write_bytes(b"old")

    def crash(fd):
        raise OSError("disk gone")

    # fsync runs after the bytes went into the temp file: a failure in the middle of the write
    monkeypatch.setattr(atomic.os, "fsync", crash)
    with pytest.raises(OSError, match="disk gone"):
        atomic_write_bytes(target, b"new contents")
    assert target.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["f.bin"]


def test_atomic_write_mode_follows_umask(tmp_path):
    old = os.umask(0o027)
    try:
        atomic_write_bytes(tmp_path / "f", b"x")
    finally:
        os.umask(old)
    assert (tmp_path / "f").stat().st_mode & 0o777 == 0o640
