"""The stage comparison and run/report.html, built for a copy of the session's smoke run (plus an
ONNX export of its fold and a stand-in student), and rendered by real headless Chromium."""
from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from rich.console import Console

from orchestrator.rundir import RunDir, write_json
from orchestrator.cli import main
from orchestrator.report.compare import stage_comparison
from orchestrator.rundir import REPORT_FILES as FILES_DIR
from orchestrator.report.html import BAR_COLOUR, CURVES, stage_cells, trial_cells, write_html_report
from orchestrator.report.terminal import print_stage_table
from trainables.export import export_model_dir
from trainables.text.encoders import load_text_encoder

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
PLOTS = ("curves_fold_0.png", "confusion_matrix.png", "per_class_f1.png")
CHROMIUM = Path("/usr/bin/chromium")


def copy_run(smoke_run, target: Path) -> RunDir:
    """The session's smoke run is shared and read-only: work on a copy."""
    shutil.copytree(smoke_run.run.root, target)
    return RunDir.open(target)


@pytest.fixture(scope="module")
def report(smoke_run, tmp_path_factory):
    """(run, rows, html text) for a copy of the smoke run with fold 0 exported (fp32 + int8) and fold 0
    standing in as the distilled student, so every kind of row shows up."""
    run = copy_run(smoke_run, tmp_path_factory.mktemp("report") / "smoke")
    fold = run.model_dir(0)
    parity = export_model_dir(fold, run.root / "export" / "fold_0",
                              load_text_encoder(fold).encode(run.evaluation_split().texts), int8=True)
    assert parity["ok"] and parity["same_predictions"]
    shutil.copytree(fold, run.root / "distill" / "model")
    manifest = run.manifest()
    manifest["config"]["distill"]["enabled"] = True  # as if the distill stage had run
    write_json(run.manifest_path, manifest)
    rows = stage_comparison(run)
    path = write_html_report(run, rows)
    assert path == run.root / "report.html"
    return run, rows, path.read_text(encoding="utf-8")


def test_every_plot_is_a_nonempty_png_the_page_shows(report):
    run, _, page = report
    files = run.root / FILES_DIR
    assert sorted(p.name for p in files.iterdir()) == sorted(PLOTS)
    for name in PLOTS:
        data = (files / name).read_bytes()
        assert data.startswith(PNG_MAGIC) and len(data) > 2000, name
        assert f'src="{FILES_DIR}/{name}"' in page
    assert (files / "confusion_matrix.png").read_bytes() == (run.test_dir / "confusion_matrix.png").read_bytes()


def test_every_image_reference_resolves(report):
    run, _, page = report
    sources = re.findall(r'<img src="([^"]+)"', page)
    assert len(sources) == len(PLOTS)
    assert all((run.root / s).is_file() for s in sources)
    assert "http://" not in page and "https://" not in page  # no external assets


def test_page_has_the_trials_table(report):
    run, _, page = report
    trials = json.loads((run.root / "trials.json").read_text())["trials"]
    assert "<h2>Trials</h2>" in page
    for trial in trials:
        assert "".join(f'<td class="n">{c}</td>' for c in trial_cells(trial)[1:]) in page


def test_stage_rows_cover_every_artifact(report, smoke_run):
    _, rows, page = report
    assert [(r["model"], r["backend"]) for r in rows] == [
        ("ensemble (1 fold)", "torch"), ("ensemble (1 fold)", "onnx fp32"), ("ensemble (1 fold)", "onnx int8"),
        ("student", "torch")]
    ensemble = rows[0]
    # the torch ensemble row reproduces the run's own test metrics, to the bit
    assert (ensemble["macro_f1"], ensemble["accuracy"]) == (smoke_run.test_metrics["macro_f1"], smoke_run.test_metrics["accuracy"])
    # ONNX fp32 made the same predictions (parity above), and the student is a copy of fold 0
    assert rows[1]["macro_f1"] == rows[3]["macro_f1"] == ensemble["macro_f1"]
    assert abs(rows[2]["macro_f1"] - ensemble["macro_f1"]) < 0.05  # int8: close, not identical
    assert len({r["parameters"] for r in rows}) == 1 and ensemble["parameters"] > 0
    assert all(r["size_mb"] > 0 and r["texts_per_s"] > 0 for r in rows)
    assert "<h2>Stage comparison</h2>" in page
    for row in rows:
        assert "".join(f"<td>{c}</td>" for c in stage_cells(row)[:3]) + f'<td class="n">{row["macro_f1"]:.4f}</td>' in page


def test_stage_table_in_the_terminal(report):
    _, rows, _ = report
    console = Console(record=True, width=160)
    print_stage_table(rows, console)
    text = console.export_text()
    assert "onnx int8" in text and f"{rows[0]['macro_f1']:.4f}" in text and "texts/s" in text
    narrow = Console(record=True, width=80)  # a pipe, CI: rich's default width
    print_stage_table(rows, narrow)
    lines = narrow.export_text().splitlines()
    assert max(map(len, lines)) <= 80
    words = " ".join(lines).split()
    assert {"macro-F1", "accuracy", "params", "texts/s", "backend"} <= set(words)  # no header word broken
    for row in rows:
        assert f"{row['macro_f1']:.4f}" in words and f"{row['texts_per_s']:,.0f}" in words


def test_report_command(smoke_run, tmp_path, capsys):
    run = copy_run(smoke_run, tmp_path / "smoke")
    assert main(["report", str(run.root)]) == 0
    out = capsys.readouterr().out
    assert "stage comparison" in out and str(run.root / "report.html") in out
    assert (run.root / "report.html").is_file()


@pytest.mark.skipif(not CHROMIUM.is_file(), reason=f"{CHROMIUM} not installed (apt-get install -y chromium): "
                                                   "the page is not rendered in a real browser here")
def test_chromium_renders_the_report(report, tmp_path):
    from PIL import Image

    run, _, _ = report
    shot = tmp_path / "report.png"
    subprocess.run([str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                    "--disable-background-networking", "--disable-component-update", "--disable-sync",
                    f"--user-data-dir={tmp_path / 'profile'}", f"--screenshot={shot}", "--window-size=1280,2400",
                    (run.root / "report.html").resolve().as_uri()],
                   check=True, capture_output=True, timeout=180)
    pixels = np.asarray(Image.open(shot).convert("RGB")).reshape(-1, 3).astype(int)
    assert len(pixels) == 2400 * 1280
    # The page's CSS uses none of these plot colours: finding them proves the PNGs were loaded and drawn.
    # (train_loss's blue is left out: the confusion matrix's blues would match it.)
    for colour, least in ((BAR_COLOUR, 1000), *((c, 20) for key, _, c in CURVES if key != "train_loss")):
        rgb = np.array([int(colour[i:i + 2], 16) for i in (1, 3, 5)])
        near = int((np.abs(pixels - rgb).max(axis=1) <= 8).sum())  # image scaling blends edges a little
        assert near >= least, f"{colour}: {near} pixels, the plot did not render"
