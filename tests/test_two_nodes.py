"""Two Ray nodes on this machine (`ray start --head` + `ray start --address`, 1 CPU each): the smoke
experiment with 2 folds, run by `orchestrator run --address`, trains one fold on each node.

The cluster is this module's own: its processes are started with ``--block`` in their own process
groups under a private temp dir, and torn down by killing exactly those (never ``ray stop``, which
would stop every Ray on the host). Every wait is bounded; the module takes well under 4 minutes.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from benchmarks.common import free_port
from tests.conftest import ROOT

pytestmark = pytest.mark.ray

SMOKE = ROOT / "experiments" / "smoke.yaml"
RAY = Path(sys.executable).with_name("ray")


def processes_under(temp_dir: str) -> list[int]:
    """PIDs whose command line names our private temp dir: every daemon and worker of our cluster."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            try:
                if temp_dir in (entry / "cmdline").read_bytes().decode(errors="replace"):
                    pids.append(int(entry.name))
            except OSError:
                continue
    return pids


class LocalCluster:
    """Head + worker node(s) on this host, each a `ray start --block` in its own process group."""

    def __init__(self, cpus_per_node: int = 1, nodes: int = 2):
        self.temp_dir = tempfile.mkdtemp(prefix="tn", dir="/tmp")  # short: Unix socket paths are limited
        self.port, self.dashboard_port = free_port(), free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.dashboard = f"http://127.0.0.1:{self.dashboard_port}"
        self.cpus, self.nodes = cpus_per_node, nodes
        self.procs: list[subprocess.Popen] = []
        self.log = Path(self.temp_dir) / "ray_start.log"
        # Ray's own state-API callers (Train's placement-group cleaner) must find *this* cluster's
        # API server even though other Ray instances run on this host; no token auth on this
        # throwaway localhost cluster, so this process can ask its dashboard without a Ray session.
        self.env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
        self.env.update(RAY_API_SERVER_ADDRESS=self.dashboard, RAY_TRAIN_V2_ENABLED="1", RAY_AUTH_MODE="disabled")

    def _start(self, *args: str) -> subprocess.Popen:
        with open(self.log, "ab") as out:
            proc = subprocess.Popen(
                [str(RAY), "start", "--block", f"--num-cpus={self.cpus}", f"--temp-dir={self.temp_dir}",
                 f"--dashboard-agent-listen-port={free_port()}", f"--metrics-export-port={free_port()}",
                 "--disable-usage-stats", *args],
                env=self.env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        self.procs.append(proc)
        return proc

    def alive_nodes(self) -> list:
        from ray.util.state import list_nodes

        try:  # an http address: asks our dashboard directly, no GCS client in this process
            return [n for n in list_nodes(address=self.dashboard, raise_on_missing_output=False) if n.state == "ALIVE"]
        except Exception:
            return []

    def wait_nodes(self, count: int, timeout: float, proc: subprocess.Popen) -> bool:
        """True once ``count`` nodes are alive; False if ``proc`` (its `ray start`) exits first."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                return False
            if len(self.alive_nodes()) >= count:
                return True
            time.sleep(1)
        raise TimeoutError(f"{count} node(s) not alive after {timeout:.0f}s:\n{self.log.read_text(errors='replace')[-3000:]}")

    def start(self, timeout: float = 120) -> list:
        """Head, then the other nodes; a `ray start` that gives up (its raylet must register within
        30 s, which a loaded 2-core host can miss) is tried once more."""
        head = ["--head", f"--port={self.port}", "--include-dashboard=true", "--dashboard-host=127.0.0.1",
                f"--dashboard-port={self.dashboard_port}", f"--ray-client-server-port={free_port()}"]
        for count, args in [(1, head)] + [(n + 2, [f"--address={self.address}"]) for n in range(self.nodes - 1)]:
            for attempt in range(2):
                proc = self._start(*args)
                if self.wait_nodes(count, timeout, proc):
                    break
                if attempt == 1 or count == 1:  # a failed head leaves a half-started cluster: no retry
                    raise RuntimeError(f"ray start failed:\n{self.log.read_text(errors='replace')[-3000:]}")
                try:  # what the failed `ray start` left running (its raylet) goes before the retry
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        return self.alive_nodes()

    def stop(self) -> None:
        """SIGTERM then SIGKILL our process groups, then any straggler naming our temp dir."""
        for sig in (signal.SIGTERM, signal.SIGKILL):
            for proc in self.procs:
                try:
                    os.killpg(proc.pid, sig)
                except ProcessLookupError:
                    pass
            deadline = time.monotonic() + 3
            while time.monotonic() < deadline and any(p.poll() is None for p in self.procs):
                time.sleep(0.2)
        for pid in processes_under(self.temp_dir):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        shutil.rmtree(self.temp_dir, ignore_errors=True)


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
