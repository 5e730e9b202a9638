"""run/report.html: one self-contained page per run (inline CSS, no external assets).

Sections: the run at a glance, learning curves per fold (folds/<k>/history.json), the test report
(the confusion matrix test/ already drew, per-class F1 bars from test/per_class.csv), the trials
table (trials.json) and the stage comparison (orchestrator/report/compare.py). Plots are PNG files in
run/report_files/, referenced by relative path, so the folder can be copied or served as is.
"""
from __future__ import annotations

import csv
import html
import io
import json
import shutil
from pathlib import Path
from typing import Any, Iterable, Optional, Sequence

from orchestrator.rundir import RunDir
from orchestrator.evaluate.measure import DEFINITION
from orchestrator.report.compare import COLUMNS, ensemble_rows, stage_comparison
from trainables.atomic import atomic_write_bytes, atomic_write_text

TEXT_COLUMNS = ("model", "backend", "device")
# (history key, panel, colour): fixed colours, so every fold's plot reads the same
CURVES = (("train_loss", "loss", "#1f77b4"), ("val_loss", "loss", "#ff7f0e"), ("val_macro_f1", "f1", "#2ca02c"))
BAR_COLOUR = "#4c8bf5"
STAGE_HEADERS = {"model": "model", "backend": "backend", "device": "device", "macro_f1": "macro-F1",
                 "accuracy": "accuracy", "size_mb": "size (MB)", "parameters": "parameters", "texts_per_s": "texts/s"}
CSS = """
body { font: 15px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: #1f2933; background: #f5f7fa; margin: 0; }
main { max-width: 1180px; margin: 0 auto; padding: 24px 32px 48px; }
h1 { font-size: 26px; margin: 0 0 4px; } h2 { font-size: 19px; margin: 32px 0 10px; border-bottom: 2px solid #d9e2ec; padding-bottom: 4px; }
.sub { color: #627d98; margin-bottom: 16px; }
.cards { display: flex; flex-wrap: wrap; gap: 12px; }
.card { background: #fff; border: 1px solid #d9e2ec; border-radius: 8px; padding: 10px 16px; min-width: 130px; }
.card .k { color: #627d98; font-size: 12px; text-transform: uppercase; letter-spacing: .04em; }
.card .v { font-size: 22px; font-weight: 600; }
.grid { display: grid; grid-template-columns: repeat(auto-fill, minmax(520px, 1fr)); gap: 16px; }
figure { background: #fff; border: 1px solid #d9e2ec; border-radius: 8px; margin: 0; padding: 8px; }
figure img { max-width: 100%; height: auto; display: block; margin: 0 auto; } figcaption { color: #627d98; font-size: 13px; padding: 4px; }
table { border-collapse: collapse; background: #fff; border: 1px solid #d9e2ec; width: 100%; font-size: 14px; }
th, td { padding: 6px 10px; border-bottom: 1px solid #e4e7eb; text-align: left; }
th { background: #f0f4f8; } .n { text-align: right; font-variant-numeric: tabular-nums; }
tr.best td { background: #e3f8e9; }
"""


# ---- plots ----
def _png(fig) -> bytes:
    buffer = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buffer, format="png")
    return buffer.getvalue()


def _figure(width: float, height: float, panels: int = 1):
    """A Figure with its own Agg canvas: off-screen, without pyplot's global state (report.py does the same)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(fig)
    return fig, fig.subplots(1, panels, squeeze=False)[0]


def learning_curves_png(history: list[dict], fold: int, steps: Sequence[Sequence[float]] = ()) -> bytes:
    """Two panels over epochs: train/val loss, and val macro-F1. With the per-step train loss
    (``steps``: [optimizer step, loss]) the train curve is drawn per step, so that a 1-epoch run has one."""
    fig, (loss_ax, f1_ax) = _figure(7.0, 3.0, panels=2)
    epochs = [h["epoch"] for h in history]
    if steps:
        per_epoch = steps[-1][0] / epochs[-1]  # every epoch takes the same number of optimizer steps
        loss_ax.plot([s / per_epoch for s, _ in steps], [loss for _, loss in steps], color=CURVES[0][2], linewidth=1.2,
                     label="train_loss (per step)")
    for key, panel, colour in CURVES:
        if all(key in h for h in history) and not (steps and key == "train_loss"):
            ax = loss_ax if panel == "loss" else f1_ax
            ax.plot(epochs, [h[key] for h in history], marker="o", color=colour, label=key)
    for ax, title in ((loss_ax, f"fold {fold}: loss"), (f1_ax, f"fold {fold}: val macro-F1")):
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("epoch")
        ax.set_xticks(epochs)
        ax.grid(alpha=0.3)
    loss_ax.legend(fontsize=8)
    return _png(fig)


def per_class_f1_png(rows: list[dict]) -> bytes:
    """Horizontal F1 bars, one per class, annotated with F1 and support."""
    fig, (ax,) = _figure(7.0, max(2.2, 0.8 + 0.32 * len(rows)))
    names = [r["class"] for r in rows]
    f1 = [float(r["f1"]) for r in rows]
    ax.barh(range(len(rows)), f1, color=BAR_COLOUR)
    ax.set_yticks(range(len(rows)), names)
    ax.invert_yaxis()  # first class on top, as in the CSV
    ax.set_xlim(0, 1.12)
    ax.set_xlabel("F1")
    for i, (value, row) in enumerate(zip(f1, rows)):
        ax.text(value + 0.01, i, f"{value:.3f} (n={row['support']})", va="center", fontsize=8)
    return _png(fig)


def write_plots(run: RunDir, out: Path) -> dict[str, Path]:
    """Every plot the run's files allow, written to ``out``: {section key: PNG path}."""
    out.mkdir(parents=True, exist_ok=True)
    plots = {}
    for model_dir in run.fold_model_dirs():
        fold = int(model_dir.parent.name)
        recorded = json.loads((model_dir.parent / "history.json").read_text())
        plots[f"curves_fold_{fold}"] = _write(out / f"curves_fold_{fold}.png",
                                              learning_curves_png(recorded["history"], fold, recorded.get("steps", [])))
    confusion = run.test_dir / "confusion_matrix.png"
    if confusion.is_file():  # drawn by report.confusion_png when test/ was written
        plots["confusion_matrix"] = _write(out / "confusion_matrix.png", confusion.read_bytes())
    per_class = read_per_class(run)
    if per_class:
        plots["per_class_f1"] = _write(out / "per_class_f1.png", per_class_f1_png(per_class))
    return plots


def _write(path: Path, data: bytes) -> Path:
    atomic_write_bytes(path, data)
    return path


def read_per_class(run: RunDir) -> list[dict]:
    path = run.test_dir / "per_class.csv"
    if not path.is_file():
        return []
    with path.open(newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


# ---- cells shared by the HTML and the terminal tables ----
def stage_cells(row: dict) -> list[str]:
    """A stage-comparison row as display strings, in ``COLUMNS`` order."""
    formats = {"macro_f1": "{:.4f}", "accuracy": "{:.4f}", "size_mb": "{:.2f}", "parameters": "{:,}",
               "texts_per_s": "{:,.0f}"}
    return ["—" if row[c] is None else formats.get(c, "{}").format(row[c]) for c in COLUMNS]


def config_label(params: dict) -> str:
    """A config's searched values, e.g. "train.lr=0.0003, model.dropout=0.1"; "(defaults)" when none."""
    return ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in params.items()) or "(defaults)"


def trial_cells(trial: dict) -> list[str]:
    """config, fold scores, mean ± std, time (s)."""
    return [config_label(trial["params"]), " ".join(f"{x:.4f}" for x in trial["fold_scores"]),
            f"{trial['mean']:.4f} ± {trial['std']:.4f}" + (f" ({trial['raced_out']})" if trial.get("raced_out") else ""),
            f"{trial['time_s']:.0f}"]


# ---- HTML ----
def _e(value: Any) -> str:
    return html.escape(str(value))


def _table(headers: Sequence[str], rows: Iterable[Sequence[str]], numeric: Sequence[bool],
           best_first: bool = False) -> str:
    head = "".join(f'<th class="n">{_e(h)}</th>' if n else f"<th>{_e(h)}</th>" for h, n in zip(headers, numeric))
    body = []
    for i, row in enumerate(rows):
        cells = "".join(f'<td class="n">{_e(c)}</td>' if n else f"<td>{_e(c)}</td>" for c, n in zip(row, numeric))
        body.append(f'<tr class="best">{cells}</tr>' if best_first and i == 0 else f"<tr>{cells}</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _img(path: Path, root: Path, caption: str) -> str:
    return (f'<figure><img src="{_e(path.relative_to(root).as_posix())}" alt="{_e(caption)}">'
            f"<figcaption>{_e(caption)}</figcaption></figure>")


def overview_section(run: RunDir) -> str:
    """Name, date, model, split sizes and the headline metrics as cards."""
    manifest = run.manifest()
    cfg = manifest["config"]
    model = cfg["model"]["arch"] if cfg["model"]["kind"] == "small" else cfg["model"]["name"]
    evaluation = run.stage("evaluate").get("result", {})
    cards = {"folds": cfg["cv"]["folds"], **{f"{k} rows": v for k, v in run.stage("data").get("sizes", {}).items()}}
    split = evaluation.get("test_split")
    cards.update({f"{split} {k.replace('_', '-')}": f"{v:.4f}" for k, v in evaluation.get("test", {}).items()
                  if k in ("accuracy", "macro_f1")})
    cards.update({f"OOF {k.replace('_', '-')}": f"{v:.4f}" for k, v in (evaluation.get("oof") or {}).items()
                  if k in ("accuracy", "macro_f1")})
    stages = ", ".join(f"{name}: {s.get('status')}" for name, s in manifest.get("stages", {}).items())
    card_html = "".join(f'<div class="card"><div class="k">{_e(k)}</div><div class="v">{_e(v)}</div></div>'
                        for k, v in cards.items())
    return (f"<h1>{_e(manifest['name'])}</h1><div class=\"sub\">{_e(cfg['model']['kind'])}:{_e(model)} · created "
            f"{_e(manifest.get('created', '?'))} · config {_e(manifest.get('config_hash', '')[:12])} · {_e(stages)}</div>"
            f'<div class="cards">{card_html}</div>')


def curves_section(run: RunDir, plots: dict[str, Path]) -> str:
    figures = [_img(p, run.root, f"fold {k.rsplit('_', 1)[1]}: train loss per step, val loss and val macro-F1 per epoch")
               for k, p in plots.items() if k.startswith("curves_fold_")]
    return f'<h2>Learning curves</h2><div class="grid">{"".join(figures)}</div>' if figures else ""


def test_section(run: RunDir, plots: dict[str, Path]) -> str:
    split = run.stage("evaluate").get("result", {}).get("test_split") or "evaluation"
    figures = [_img(plots[k], run.root, caption) for k, caption in
               (("confusion_matrix", f"confusion matrix on the {split} split (colour: share of the gold row)"),
                ("per_class_f1", f"per-class F1 on the {split} split"))
               if k in plots]
    return f'<h2>Test report ({_e(split)} split)</h2><div class="grid">{"".join(figures)}</div>' if figures else ""


def trials_section(run: RunDir) -> str:
    if not run.trials_json.is_file():
        return ""
    trials = json.loads(run.trials_json.read_text())
    table = _table(("config", "fold scores", "mean ± std", "time (s)"), map(trial_cells, trials["trials"]),
                   (False, True, True, True), best_first=True)
    selection = ensemble_rows(trials.get("ensemble", {}))
    if selection:
        cell = lambda v: "-" if v is None else f"{v:.4f}"  # noqa: E731
        table += ("<h3>Ensemble selection</h3><p class=\"sub\">Configs weighed greedily, with replacement, on their "
                  "out-of-fold predictions (Caruana et al. 2004); the selection is the run's ensemble.</p>"
                  + _table(("ensemble", "OOF macro-F1", "test macro-F1", "configs"),
                           ([r["ensemble"], cell(r["oof_macro_f1"]), cell(r["test_macro_f1"]), r["configs"]] for r in selection),
                           (False, True, True, False), best_first=True))
    return (f"<h2>Trials</h2><p class=\"sub\">{len(trials['trials'])} config(s) × {trials['folds']} fold(s), "
            f"ranked by the cross-fold mean of {_e(trials['metric'])} ({_e(trials['mode'])}); the best is highlighted.</p>{table}")


def stages_section(run: RunDir, rows: list[dict]) -> str:
    if not rows:
        return ""
    # evaluate records which split was honest; with K folds and no test split there is none, and the
    # comparison falls back to val, whose rows the folds trained on
    split = run.stage("evaluate").get("result", {}).get("test_split")
    if split is None:
        split = "val" if run.config().cv.folds == 1 else "val (rows the K folds trained on: optimistic)"
    table = _table([STAGE_HEADERS[c] for c in COLUMNS], map(stage_cells, rows),
                   [c not in TEXT_COLUMNS for c in COLUMNS])
    return (f"<h2>Stage comparison</h2><p class=\"sub\">Every model of the run on the {_e(split)} split; "
            f"{_e(DEFINITION)}.</p>" + table)


def write_html_report(run: RunDir, rows: Optional[list[dict]] = None) -> Path:
    """Write run/report.html and its plots in run/report_files/; ``rows``: a ``stage_comparison(run)``
    already measured (measured here if not given). Returns the HTML path."""
    rows = stage_comparison(run) if rows is None else rows
    files = run.report_files
    shutil.rmtree(files, ignore_errors=True)  # no plot of an earlier report may outlive its section
    plots = write_plots(run, files)
    sections = (overview_section(run), curves_section(run, plots), test_section(run, plots), trials_section(run),
                stages_section(run, rows))
    page = (f"<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>{_e(run.root.name)} report</title>"
            f"<style>{CSS}</style></head><body><main>{''.join(sections)}</main></body></html>\n")
    atomic_write_text(run.report_html, page)
    return run.report_html
