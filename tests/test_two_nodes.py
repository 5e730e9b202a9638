"""Two Ray nodes on this machine (`ray start --head` + `ray start --address`, 1 CPU each): the smoke
experiment with 2 folds, run by `orchestrator run --address`, trains one fold on each node.

The cluster is this module's own: its processes are started with ``--block`` in their own process
groups under a private temp dir, and torn down by killing exactly those (never ``ray stop``, which
would stop every Ray on the host). Every wait is bounded; the module takes well under 4 minutes.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pytest

from benchmarks.local_cluster import LocalCluster, processes_under
from tests.conftest import ROOT

pytestmark = pytest.mark.ray

SMOKE = ROOT / "experiments" / "smoke.yaml"


@pytest.fixture(scope="module")
def two_nodes():
    cluster = LocalCluster(cpus_per_node=1, nodes=2)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()
        assert not processes_under(cluster.temp_dir)


def test_two_folds_train_on_both_nodes(two_nodes, tmp_path):
    nodes = {n.node_id for n in two_nodes.alive_nodes()}
    assert len(nodes) == 2
    log = tmp_path / "driver.log"
    env = {k: v for k, v in two_nodes.env.items() if k != "RAY_API_SERVER_ADDRESS"}
    with open(log, "wb") as out:
        driver = subprocess.Popen(
            [sys.executable, "-m", "orchestrator", "run", str(SMOKE), "--address", two_nodes.address,
             "--set", "name=two_nodes", "--set", f"runs_dir={tmp_path}", "--set", "cv.folds=2", "--set", "train.epochs=1", "--set", "data.max_rows=300"],
            cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        code = driver.wait(timeout=200)
    except subprocess.TimeoutExpired:
        os.killpg(driver.pid, signal.SIGKILL)
        pytest.fail(f"orchestrator run did not finish in 200 s:\n{log.read_text(errors='replace')[-3000:]}")
    assert code == 0, log.read_text(errors="replace")[-3000:]

    root = tmp_path / "two_nodes"
    trials = json.loads((root / "trials.json").read_text())["trials"][0]
    placed = {}
    for path in (root / "ray" / "tune").glob("*/result.json"):
        rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        epochs = [r for r in rows if "node_id" in r]
        assert epochs, path
        placed[rows[0]["trial_id"]] = {r["node_id"] for r in epochs}
    assert set(placed) == set(trials["trial_ids"])
    # each fold trained on one node, and the two folds on the two different nodes of the cluster
    assert all(len(v) == 1 for v in placed.values()), placed
    assert set().union(*placed.values()) == nodes, (placed, nodes)
    for fold in range(2):
        assert (root / "folds" / str(fold) / "model" / "model.pt").is_file()
    assert json.loads((root / "manifest.json").read_text())["stages"]["evaluate"]["status"] == "done"


def test_a_lost_worker_node_leaves_its_fold_to_finish_on_the_head(tmp_path):
    """benchmarks/node_faults.py at a small size, on a cluster of its own (the node is killed): the
    fold the worker node was training resumes on the head from its checkpoint, and both folds end
    with exactly the per-epoch metrics of an uninterrupted run on the same cluster."""
    from benchmarks.node_faults import measure

    result = measure(tmp_path, rows=1200, epochs=5, timeout=240)
    assert result["exit_codes"] == {"uninterrupted": 0, "node_kill": 0}, result["log_tails"]
    assert result["killer_error"] is None, result["killer_error"]
    assert result["fold_nodes"] == {"before_kill": ["worker"], "after_kill": ["head"]}, result["fold_nodes"]
    assert 1 <= result["resumed_from_epoch"] <= result["epoch_at_kill"] + 1
    assert result["max_metric_diff"] <= 1e-5, result["max_metric_diff"]
