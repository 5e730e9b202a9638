"""What a finished run hands back to its caller (the CLI prints it: report/terminal.py)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from orchestrator.rundir import RunDir
from orchestrator.train.folds import FoldResult


@dataclass
class RunSummary:
    run: RunDir
    folds: list[FoldResult]
    test_metrics: dict
    oof_metrics: Optional[dict]
    trials: list[dict]
    stages: dict
    comparison: list[dict]  # report.compare.stage_comparison rows
    report: Optional[Path]  # report.html (None for a streamed run)
    ensemble: dict          # evaluation's "ensemble": how the run's ensemble was chosen
