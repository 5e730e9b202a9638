"""Serve's own ways to start the service, through Ray Serve's CLI against the session's Ray: the
application builder (`serve run orchestrator.serving:build_app run_dir=RUN`) and the Serve config
file that `orchestrator serve RUN --write-config FILE` writes (`serve run FILE`)."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import requests
import yaml

from benchmarks.common import free_port
from orchestrator.cli import main
from orchestrator.serve.deployment import IMPORT_PATH, shutdown
from tests.conftest import ROOT
from tests.test_serving import TEXTS, assert_matches, make_tiny_run, offline, wait_healthy

pytestmark = pytest.mark.ray
SERVE = Path(sys.executable).with_name("serve")


def serve_run(*args: str) -> None:
    """`serve run --non-blocking ARGS` on the session's Ray: it submits the application and returns."""
    import ray

    out = subprocess.run([str(SERVE), "run", "--non-blocking", f"--address={ray.get_runtime_context().gcs_address}", *args],
                         capture_output=True, text=True, timeout=240, cwd=ROOT)
    assert out.returncode == 0, (out.stdout + out.stderr)[-3000:]


@pytest.fixture
def no_serve(ray_session):
    """No Serve running before (an imperatively deployed app would block a config deploy) or after."""
    shutdown()
    yield
    shutdown()


def test_the_written_config_is_served_by_serve_run(no_serve, tmp_path, capsys):
    run_dir = make_tiny_run(tmp_path, "tiny-config", seed=3)
    port, path = free_port(), tmp_path / "serve.yaml"
    assert main(["serve", str(run_dir), "--write-config", str(path), "--port", str(port), "--token", "s3cret-w"]) == 0
    assert f"wrote {path}" in capsys.readouterr().out
    text = path.read_text()
    assert "s3cret-w" not in text
    (app,) = yaml.safe_load(text)["applications"]
    assert app["import_path"] == IMPORT_PATH == "orchestrator.serving:build_app"
    assert app["args"] == {"run_dir": str(Path(run_dir).resolve()), "model": "ensemble"}
    serve_run(str(path))
    url = f"http://127.0.0.1:{port}"
    wait_healthy(url)
    response = requests.post(f"{url}/predict", json={"texts": TEXTS}, timeout=30)
    assert response.status_code == 200
    assert_matches(response.json(), offline(run_dir), TEXTS)


def test_the_application_builder_is_served_by_serve_run(no_serve, tmp_path):
    from ray import serve

    run_dir = make_tiny_run(tmp_path, "tiny-builder", seed=4)
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})  # `serve run IMPORT_PATH` keeps a running Serve's HTTP options
    serve_run(IMPORT_PATH, f"run_dir={run_dir}")
    url = f"http://127.0.0.1:{port}"
    wait_healthy(url)
    response = requests.post(f"{url}/predict", json={"texts": TEXTS}, timeout=30)
    assert response.status_code == 200
    assert_matches(response.json(), offline(run_dir), TEXTS)
    assert requests.get(f"{url}/info", timeout=30).json()["run"] == "tiny-builder"


def test_write_config_refuses_onnx_without_exports(tmp_path, capsys):
    run_dir = make_tiny_run(tmp_path, "tiny-noonnx", seed=5)
    assert main(["serve", str(run_dir), "--onnx", "--write-config", str(tmp_path / "s.yaml")]) == 2
    assert "no ONNX exports" in capsys.readouterr().err and not (tmp_path / "s.yaml").exists()


def test_write_config_into_a_missing_folder_is_one_line(tmp_path, capsys):
    run_dir = make_tiny_run(tmp_path, "tiny-nofolder", seed=6)
    assert main(["serve", str(run_dir), "--write-config", str(tmp_path / "nope" / "s.yaml")]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"error: --write-config {tmp_path / 'nope' / 's.yaml'}: no such folder {tmp_path / 'nope'}"


def test_write_config_with_haproxy_ingress_says_where_the_mode_is_set(tmp_path, capsys):
    run_dir = make_tiny_run(tmp_path, "tiny-haproxy", seed=7)
    assert main(["serve", str(run_dir), "--ingress", "haproxy", "--write-config", str(tmp_path / "s.yaml")]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "not part of a Serve config" in out and "RAY_SERVE_ENABLE_HA_PROXY=1 RAY_SERVE_THROUGHPUT_OPTIMIZED=1" in out
    assert (tmp_path / "s.yaml").is_file()
