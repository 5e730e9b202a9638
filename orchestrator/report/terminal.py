"""What a run shows in the terminal: the summary of a finished run and the stage comparison table
(the same cells as report.html)."""
from __future__ import annotations

from typing import Optional

from rich import box
from rich.console import Console
from rich.table import Table
from rich.text import Text

from orchestrator.report.compare import ensemble_rows
from orchestrator.report.html import trial_cells


def print_summary(summary, console: Console) -> None:
    """One screen: folds, the trials table (when searching), OOF and test metrics, where artifacts are."""
    folds = Table(title="folds of the chosen config", box=box.SIMPLE_HEAD, show_edge=False)
    for col in ("fold", "best epoch", "val macro-F1", "val accuracy", "train time (s)"):
        folds.add_column(col, justify="right")
    for r in summary.folds:
        folds.add_row(str(r.fold), str(r.best["epoch"]), f"{r.best['val_macro_f1']:.4f}", f"{r.best['val_accuracy']:.4f}", f"{r.train_time_s:.0f}")
    console.print(folds)
    if len(summary.trials) > 1:
        trials = Table(title="trials (configs ranked by cross-fold mean)", box=box.SIMPLE_HEAD, show_edge=False)
        for col in ("config", "fold scores", "mean ± std", "time (s)"):
            trials.add_column(col)
        for t in summary.trials[:10]:
            trials.add_row(*trial_cells(t))
        console.print(trials)
    if summary.oof_metrics:
        console.print(f"out-of-fold: macro-F1 {summary.oof_metrics['macro_f1']:.4f}  accuracy {summary.oof_metrics['accuracy']:.4f}", soft_wrap=True)
    selection = ensemble_rows(summary.ensemble)
    if selection:
        eligible = summary.ensemble.get("eligible_configs")
        table = Table(title="ensemble selection on OOF predictions (Caruana) vs the best config"
                            + (f" ({eligible} configs with all folds eligible)" if eligible else ""), box=box.SIMPLE_HEAD, show_edge=False)
        for col in ("ensemble", "OOF macro-F1", "test macro-F1", "configs"):
            table.add_column(col)
        for row in selection:
            table.add_row(row["ensemble"], *(f"{row[k]:.4f}" if row[k] is not None else "-" for k in ("oof_macro_f1", "test_macro_f1")),
                          Text(row["configs"]))
        console.print(table)
    m = summary.test_metrics
    if m:
        console.print(f"test: accuracy {m['accuracy']:.4f}  macro-F1 {m['macro_f1']:.4f}  micro-F1 {m['micro_f1']:.4f}  weighted-F1 {m['weighted_f1']:.4f}", soft_wrap=True)
    if summary.report is None:  # a streamed run
        console.print(f"artifacts: {summary.run.root}/ (manifest.json, folds/*/model, predictions/ Parquet of OOF and test)", soft_wrap=True)
        return
    console.print(f"artifacts: {summary.run.root}/ (manifest.json, folds/*/model, test/ report with badcases.csv)", soft_wrap=True)
    print_stage_table(summary.comparison, console)
    console.print(f"report: {summary.report}", soft_wrap=True)


def _compact(row: dict) -> list[str]:
    """A stage-comparison row for 80 columns: backend and device in one cell, parameters in millions."""
    def number(key: str, fmt: str) -> str:
        return "—" if row[key] is None else fmt.format(row[key])

    params = "—" if row["parameters"] is None else (f"{row['parameters'] / 1e6:.1f}M" if row["parameters"] >= 1e5 else f"{row['parameters']:,}")
    return [row["model"], f"{row['backend']} {row['device']}", number("macro_f1", "{:.4f}"), number("accuracy", "{:.4f}"),
            number("size_mb", "{:.1f}"), params, number("texts_per_s", "{:,.0f}")]


COMPACT_HEADERS = ("model", "backend", "macro-F1", "accuracy", "MB", "params", "texts/s")


def print_stage_table(rows: list[dict], console: Optional[Console] = None) -> None:
    """The stage comparison as a rich table that reads at 80 columns (report.html has every digit)."""
    table = Table(title="stage comparison (evaluation split)", box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False)
    cells = [_compact(row) for row in rows]
    for i, header in enumerate(COMPACT_HEADERS):
        # names wrap between words; numbers and header words never break
        width = max([len(header), *(len(c[i]) for c in cells)]) if i else len(header)
        table.add_column(header, justify="left" if i < 2 else "right", min_width=width, no_wrap=i > 0, overflow="fold")
    for row in cells:
        table.add_row(*map(Text, row))  # Text: names are not rich markup
    (console or Console()).print(table)
