"""What a run shows in the terminal: the summary of a finished run and the stage comparison table
(the same cells as report.html)."""
from __future__ import annotations

from typing import Optional

from rich import box
from rich.console import Console
from rich.table import Table
from rich.text import Text

from orchestrator.report.compare import COLUMNS, ensemble_rows
from orchestrator.report.html import STAGE_HEADERS, TEXT_COLUMNS, stage_cells, trial_cells


def print_summary(summary, console: Console) -> None:
    """One screen: folds, the trials table (when searching), OOF and test metrics, where artifacts are."""
    folds = Table(title="folds of the chosen config", show_lines=False)
    for col in ("fold", "best epoch", "val macro-F1", "val accuracy", "train time (s)"):
        folds.add_column(col, justify="right")
    for r in summary.folds:
        folds.add_row(str(r.fold), str(r.best["epoch"]), f"{r.best['val_macro_f1']:.4f}", f"{r.best['val_accuracy']:.4f}", f"{r.train_time_s:.0f}")
    console.print(folds)
    if len(summary.trials) > 1:
        trials = Table(title="trials (configs ranked by cross-fold mean)")
        for col in ("config", "fold scores", "mean ± std", "time (s)"):
            trials.add_column(col)
        for t in summary.trials[:10]:
            trials.add_row(*trial_cells(t))
        console.print(trials)
    if summary.oof_metrics:
        console.print(f"out-of-fold: macro-F1 {summary.oof_metrics['macro_f1']:.4f}  accuracy {summary.oof_metrics['accuracy']:.4f}", soft_wrap=True)
    selection = ensemble_rows(summary.ensemble)
    if selection:
        table = Table(title="ensemble selection on OOF predictions (Caruana) vs the best config")
        for col in ("ensemble", "OOF macro-F1", "test macro-F1", "configs"):
            table.add_column(col)
        for row in selection:
            table.add_row(row["ensemble"], *(f"{row[k]:.4f}" if row[k] is not None else "-" for k in ("oof_macro_f1", "test_macro_f1")),
                          Text(row["configs"]))
        console.print(table)
    m = summary.test_metrics
    if m:
        console.print(f"test: accuracy {m['accuracy']:.4f}  macro-F1 {m['macro_f1']:.4f}  micro-F1 {m['micro_f1']:.4f}  weighted-F1 {m['weighted_f1']:.4f}", soft_wrap=True)
    console.print(f"artifacts: {summary.run.root}/ (manifest.json, folds/*/model, test/ report with badcases.csv)", soft_wrap=True)
    print_stage_table(summary.comparison, console)
    console.print(f"report: {summary.report}", soft_wrap=True)


def print_stage_table(rows: list[dict], console: Optional[Console] = None) -> None:
    """The stage comparison as a rich table."""
    table = Table(title="stage comparison (evaluation split)", box=box.SIMPLE_HEAD)
    cells = [stage_cells(row) for row in rows]
    for i, column in enumerate(COLUMNS):
        text = column in TEXT_COLUMNS
        # 80 columns may wrap a model's name between words, never a number or a header word
        words = max(len(w) for w in STAGE_HEADERS[column].split())
        width = max([words, *(len(c[i]) for c in cells)]) if column != "model" else words
        table.add_column(STAGE_HEADERS[column], justify="left" if text else "right", min_width=width,
                         overflow="fold", no_wrap=column != "model")
    for row in cells:
        table.add_row(*map(Text, row))  # Text: names are not rich markup
    (console or Console()).print(table)
