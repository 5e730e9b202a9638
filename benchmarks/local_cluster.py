"""A Ray cluster of several nodes on this one host (`ray start --head` + `ray start --address`, each
`--block` in its own process group under a private temp dir): what tests/test_two_nodes.py and
benchmarks/node_faults.py run on. Torn down by killing exactly its own processes (never `ray stop`,
which would stop every Ray on the host); every wait is bounded.
"""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.common import free_port

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
