"""Two Ray nodes on this machine (`ray start --head` + `ray start --address`, 1 CPU each): the smoke
experiment with 2 folds, run by `orchestrator run --address`, trains one fold on each node; with the
worker node killed mid-fold, that fold finishes on the head.

The cluster is this module's own: its processes are started with ``--block`` in their own process
groups under a private temp dir, and torn down by killing exactly those (never ``ray stop``, which
would stop every Ray on the host). Every wait is bounded; the module takes well under 4 minutes.
"""
from __future__ import annotations

import json

import pytest

pytestmark = pytest.mark.ray


def test_a_lost_worker_node_leaves_its_fold_to_finish_on_the_head(tmp_path):
    """benchmarks/node_faults.py at a small size, on a cluster of its own (the node is killed): the
    fold the worker node was training resumes on the head from its checkpoint, and both folds end
    with exactly the per-epoch metrics of an uninterrupted run on the same cluster, which trained one
    fold on each node."""
    from benchmarks.node_faults import measure

    result = measure(tmp_path, rows=800, epochs=5, timeout=240)
    assert result["exit_codes"] == {"uninterrupted": 0, "node_kill": 0}, result["log_tails"]
    assert result["uninterrupted_nodes"] == [["head"], ["worker"]], result["uninterrupted_nodes"]
    for name in ("uninterrupted", "node_kill"):
        root = tmp_path / name
        assert all((root / "folds" / str(fold) / "model" / "model.pt").is_file() for fold in range(2))
        assert json.loads((root / "manifest.json").read_text())["stages"]["evaluate"]["status"] == "done"
    assert result["processes_left"] == 0
    assert result["killer_error"] is None, result["killer_error"]
    assert result["fold_nodes"] == {"before_kill": ["worker"], "after_kill": ["head"]}, result["fold_nodes"]
    assert 1 <= result["resumed_from_epoch"] <= result["epoch_at_kill"] + 1
    assert result["max_metric_diff"] <= 1e-5, result["max_metric_diff"]
