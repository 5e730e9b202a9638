"""The test command's report: metrics, per-class scores, confusion counts and bad cases.

Each piece is built by its own function (rows, count arrays, PNG bytes) so the HTML report can
reuse them; ``write_test_report`` writes them all into one folder and ``print_report`` shows
them in the terminal.
"""
from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any, Iterable, Optional, Sequence

import numpy as np
from rich.console import Console
from rich.table import Table
from rich.text import Text
from sklearn.metrics import confusion_matrix, multilabel_confusion_matrix, precision_recall_fscore_support

from trainables.atomic import atomic_write_bytes, atomic_write_text
from trainables.metrics import compute_metrics, predict_labels

PER_CLASS_COLUMNS = ("class", "precision", "recall", "f1", "support")
BADCASE_COLUMNS = ("text", "gold", "predicted", "prob_predicted", "prob_gold")
MULTILABEL_OUTCOMES = ("tn", "fp", "fn", "tp")
# print_report's summary rows: label -> metrics key, laid out like sklearn's classification_report
SUMMARY_ROWS = (("accuracy", "accuracy"), ("macro avg", "macro_f1"), ("micro avg", "micro_f1"),
                ("weighted avg", "weighted_f1"))
TICK_LABEL_CHARS = 24

Threshold = float | np.ndarray


def classification_tables(gold: np.ndarray, probs: np.ndarray, classes: Sequence[str], multilabel: bool,
                          threshold: Threshold = 0.5) -> tuple[list[dict[str, Any]], np.ndarray]:
    """Per-class rows (class, precision, recall, f1, support) and the confusion counts.

    Every class gets a row, even one absent from this test set. Counts are ``[C, C]`` (rows
    gold, columns predicted) for multiclass and ``[C, 4]`` (tn, fp, fn, tp) for multilabel.
    """
    gold = np.asarray(gold).astype(np.int64)
    pred = predict_labels(probs, multilabel, threshold)
    labels = np.arange(len(classes))
    scores = precision_recall_fscore_support(gold, pred, labels=labels, average=None, zero_division=0)
    rows = [{"class": name, "precision": float(p), "recall": float(r), "f1": float(f), "support": int(s)}
            for name, p, r, f, s in zip(classes, *scores)]
    if multilabel:
        # Each class's [[tn, fp], [fn, tp]] flattened, which is MULTILABEL_OUTCOMES order
        counts = multilabel_confusion_matrix(gold, pred, labels=labels).reshape(len(classes), 4)
    else:
        counts = confusion_matrix(gold, pred, labels=labels)
    return rows, counts


def badcase_rows(texts: Sequence[str], gold: np.ndarray, probs: np.ndarray, classes: Sequence[str],
                 multilabel: bool, threshold: Threshold = 0.5) -> list[dict[str, str]]:
    """One row per wrongly predicted text, in input order, with BADCASE_COLUMNS as keys.

    Multilabel rows join class names, and their probabilities in the same order, with ','.
    """
    gold = np.asarray(gold).astype(np.int64)
    probs = np.asarray(probs)
    pred = predict_labels(probs, multilabel, threshold)
    wrong = (gold != pred).any(axis=1) if multilabel else gold != pred
    rows = []
    for i in np.flatnonzero(wrong):
        gold_ids, pred_ids = _label_ids(gold[i], multilabel), _label_ids(pred[i], multilabel)
        rows.append({"text": texts[i], "gold": _join_names(gold_ids, classes),
                     "predicted": _join_names(pred_ids, classes),
                     "prob_predicted": _join_probs(probs[i], pred_ids), "prob_gold": _join_probs(probs[i], gold_ids)})
    return rows


def _label_ids(labels: np.ndarray, multilabel: bool) -> list[int]:
    """Class ids of one example's label: the set bits of a multi-hot row, or the id itself."""
    return np.flatnonzero(labels).tolist() if multilabel else [int(labels)]


def _join_names(ids: list[int], classes: Sequence[str]) -> str:
    return ",".join(classes[i] for i in ids)


def _join_probs(probs: np.ndarray, ids: list[int]) -> str:
    return ",".join(_cell(float(probs[i])) for i in ids)


def _count_axes(classes: Sequence[str], multilabel: bool) -> tuple[str, str, list[str]]:
    """(row axis name, column axis name, column labels) of the confusion counts."""
    if multilabel:
        return "class", "outcome", list(MULTILABEL_OUTCOMES)
    return "gold", "predicted", list(classes)


def confusion_csv(counts: np.ndarray, classes: Sequence[str], multilabel: bool) -> str:
    """The confusion counts as CSV with class names on the rows and labelled columns."""
    row_name, col_name, col_labels = _count_axes(classes, multilabel)
    return _csv_text([f"{row_name}/{col_name}", *col_labels],
                     ([name, *row] for name, row in zip(classes, counts.tolist())))


def confusion_png(counts: np.ndarray, classes: Sequence[str], multilabel: bool) -> bytes:
    """A heatmap of the confusion counts, each cell annotated with its count, as PNG bytes."""
    # Imported here: matplotlib is slow to import and only the plot needs it. Figure +
    # FigureCanvasAgg render off-screen without touching pyplot's global backend.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    row_name, col_name, col_labels = _count_axes(classes, multilabel)
    counts = np.asarray(counts)
    # Colour by share of the row so small classes stay as readable as large ones
    shares = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    n_rows, n_cols = counts.shape
    fig = Figure(figsize=(max(4.0, 2.0 + 0.6 * n_cols), max(3.0, 1.5 + 0.45 * n_rows)), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ax.imshow(shares, cmap="Blues", vmin=0.0, vmax=1.0, aspect="auto")
    long_labels = max(len(label) for label in col_labels) > 4
    ax.set_xticks(range(n_cols), [_shorten(label) for label in col_labels],
                  rotation=45 if long_labels else 0, ha="right" if long_labels else "center", rotation_mode="anchor")
    ax.set_yticks(range(n_rows), [_shorten(name) for name in classes])
    ax.set_xlabel(col_name)
    ax.set_ylabel(row_name)
    for (r, c), count in np.ndenumerate(counts):
        ax.text(c, r, str(count), ha="center", va="center", fontsize=8,
                color="white" if shares[r, c] > 0.5 else "black")
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    return buffer.getvalue()


def _shorten(label: str) -> str:
    """Long class names would squeeze the plot to nothing; keep their start."""
    return label if len(label) <= TICK_LABEL_CHARS else label[:TICK_LABEL_CHARS - 1] + "…"


def _cell(value: Any) -> str:
    """A CSV cell: floats with 4 decimals, anything else as str()."""
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def _csv_text(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    writer.writerows([_cell(value) for value in row] for row in rows)
    return buffer.getvalue()


def _dict_rows(rows: list[dict[str, Any]], columns: Sequence[str]) -> list[list[Any]]:
    return [[row[column] for column in columns] for row in rows]


def _check_shapes(texts: Sequence[str], gold: np.ndarray, probs: np.ndarray, classes: Sequence[str],
                  multilabel: bool) -> None:
    """Fail with the mismatching sizes named, before anything is written."""
    n, c = len(texts), len(classes)
    want_gold = (n, c) if multilabel else (n,)
    if np.shape(probs) != (n, c) or np.shape(gold) != want_gold:
        raise ValueError(f"report: expected probs {(n, c)} and gold {want_gold} for {n} texts and {c} classes, "
                         f"got probs {np.shape(probs)} and gold {np.shape(gold)}")


def write_test_report(out_dir: str | Path, texts: Sequence[str], gold: np.ndarray, probs: np.ndarray,
                      classes: Sequence[str], multilabel: bool, threshold: Threshold = 0.5) -> dict[str, Any]:
    """Write metrics.json, per_class.csv, confusion_matrix.csv/.png and badcases.csv into
    ``out_dir``, each atomically; return the metrics (accuracy, F1s, n) plus the ``per_class`` rows."""
    _check_shapes(texts, gold, probs, classes, multilabel)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    metrics = {**compute_metrics(gold, probs, multilabel, threshold), "n": len(texts)}
    per_class, counts = classification_tables(gold, probs, classes, multilabel, threshold)
    badcases = badcase_rows(texts, gold, probs, classes, multilabel, threshold)
    atomic_write_text(out / "metrics.json", json.dumps(metrics, indent=2) + "\n")
    atomic_write_text(out / "per_class.csv", _csv_text(PER_CLASS_COLUMNS, _dict_rows(per_class, PER_CLASS_COLUMNS)))
    atomic_write_text(out / "confusion_matrix.csv", confusion_csv(counts, classes, multilabel))
    atomic_write_bytes(out / "confusion_matrix.png", confusion_png(counts, classes, multilabel))
    atomic_write_text(out / "badcases.csv", _csv_text(BADCASE_COLUMNS, _dict_rows(badcases, BADCASE_COLUMNS)))
    return {**metrics, "per_class": per_class}


def print_report(metrics: dict[str, Any], per_class: list[dict[str, Any]], console: Optional[Console] = None) -> None:
    """A rich table: one row per class, then accuracy and the F1 averages over ``n`` texts."""
    table = Table(title="Test set")
    table.add_column("class")
    for column in PER_CLASS_COLUMNS[1:]:
        table.add_column(column, justify="right")
    for row in per_class:
        # Text() so a class name like "[red]" is shown as written, not read as markup
        table.add_row(Text(row["class"]), *(_cell(row[column]) for column in PER_CLASS_COLUMNS[1:]))
    table.add_section()
    for label, key in SUMMARY_ROWS:
        table.add_row(label, "", "", _cell(metrics[key]), str(metrics["n"]))
    (console or Console()).print(table)
