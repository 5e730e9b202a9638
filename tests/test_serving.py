"""Real Ray Serve on 127.0.0.1 with real HTTP requests: parity with the offline ensemble, bad requests,
auth, batching, a rolling redeploy under load, and a run trained by the pipeline."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Optional

import numpy as np
import pytest
from hypothesis import HealthCheck, given, seed, settings
import requests
import torch
from ray import serve

from orchestrator.rundir import RunDir, RunDirError, write_json
from orchestrator.cli import main
from orchestrator.serve.client import Client, ClientError
from benchmarks.common import free_port
from orchestrator.config import AutoscalingConfig, ExperimentConfig, ModelConfig, ServeConfig
from orchestrator.evaluate.ensemble import Ensemble
from orchestrator.evaluate.onnx_ensemble import OnnxEnsemble
from orchestrator.evaluate.loading import choose_backend, onnx_members
from orchestrator.serve.deployment import deploy, deployment_options, replica_device, serve_config, shutdown
from orchestrator.serve.schema import MAX_BODY_BYTES, MAX_TEXTS, RequestError, parse_hf, parse_predict
from trainables.export import export_model_dir
from trainables.models import save_model_dir
from trainables.models.small import build_small_model
from trainables.text.vocab import VocabTextEncoder
from tests.conftest import ROOT
from tests.test_fuzz import bodies

TOKEN = "s3cret-token"
CLASSES = ["animal", "place", "thing"]
TRAIN_TEXTS = ["the cat sat on the mat", "a dog ran in the park", "cats and dogs", "the city by the river",
               "a red ball", "the house on the hill", "a blue car", "birds in the garden"]
TEXTS = ["the cat", "a dog in the city by the river", "red car", "unknown words only", "hill"]
LONG = " ".join(["cat"] * 50)  # past max_length (8 tokens)


def make_tiny_run(root: Path, name: str, seed: int, folds: int = 2) -> Path:
    """A run directory without training: ``folds`` random tiny TextCNNs over one vocabulary, a manifest and
    a test split (the load benchmark reads it)."""
    cfg = ModelConfig(kind="small", arch="textcnn", tokens="word", max_length=8, vocab_size=100, embedding_dim=8,
                      num_filters=4, kernel_sizes=[2, 3])
    experiment = ExperimentConfig(name=name, seed=seed, model=cfg)
    encoder = VocabTextEncoder.build(TRAIN_TEXTS, tokens="word", max_length=cfg.max_length, vocab_size=cfg.vocab_size)
    run = RunDir(root / name)
    meta = {"classes": CLASSES, "multilabel": False, "threshold": 0.5}
    for fold in range(folds):
        torch.manual_seed(seed * 100 + fold)
        save_model_dir(run.model_dir(fold), build_small_model(cfg, len(CLASSES), encoder), encoder, cfg, meta)
    write_json(run.manifest_path, {"name": name, "config_hash": experiment.hash(), "config": experiment.model_dump(mode="json")})
    (run.root / "data").mkdir()
    (run.root / "data" / "test.jsonl").write_text(
        "".join(json.dumps({"text": t, "label": CLASSES[0]}) + "\n" for t in TRAIN_TEXTS + TEXTS))
    return run.root


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("serve_runs")
    return {"a": make_tiny_run(root, "tiny-a", seed=1), "b": make_tiny_run(root, "tiny-b", seed=2)}


@pytest.fixture(scope="module")
def onnx_only_run(runs, tmp_path_factory):
    """Run "a" with its folds exported to ONNX (export/fold_<k>/, as the export stage writes them) and the
    torch fold models removed."""
    root = shutil.copytree(runs["a"], tmp_path_factory.mktemp("onnx") / "tiny-a")
    run = RunDir.open(root)
    for model_dir in run.fold_model_dirs():
        ensemble = Ensemble([model_dir], device="cpu")
        export_model_dir(model_dir, root / "export" / f"fold_{model_dir.parent.name}", ensemble.encode(TEXTS))
    shutil.rmtree(root / "folds")
    shutil.rmtree(root / "trials", ignore_errors=True)  # the models folds/<k> link to, in a pipeline-made run
    return root


@pytest.fixture(scope="module")
def served(ray_session, runs, smoke_run):
    """Run "a" on Serve with a token; the smoke run is trained first so training never competes with Serve."""
    cfg = ServeConfig(port=free_port(), token=TOKEN, batch_wait_timeout_s=0.05)
    url = deploy(runs["a"], cfg)
    yield url, cfg
    shutdown()


@pytest.fixture
def client(served):
    return Client(served[0], token=TOKEN)


def wait_healthy(url: str, timeout: float = 180, server: Optional[subprocess.Popen] = None, log: Optional[Path] = None) -> None:
    """Until ``url``/healthz answers 200; fails after ``timeout`` s, or at once when ``server`` (writing ``log``) exits."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server is not None and server.poll() is not None:
            pytest.fail(f"the server exited with {server.returncode}: {log.read_text(errors='replace')[-3000:] if log else ''}")
        try:
            if requests.get(f"{url}/healthz", timeout=2).status_code == 200:
                return
        except requests.RequestException:
            pass
        time.sleep(0.5)
    pytest.fail(f"{url}/healthz did not answer within {timeout:.0f}s")


def model_of(run_dir: Path) -> str:
    manifest = RunDir.open(run_dir).manifest()
    return f"{manifest['name']}@{manifest['config_hash']}"


def offline(run_dir: Path) -> Ensemble:
    return Ensemble(RunDir.open(run_dir).fold_model_dirs(), device="cpu")


def assert_matches(response: dict, ensemble, texts: list[str], tol: float = 1e-5) -> None:
    """Served labels equal ``ensemble.predict``'s, probabilities within ``tol``."""
    expected = ensemble.predict(texts)
    preds = response["predictions"]
    assert [p["labels"] for p in preds] == expected.labels
    served = np.array([[p["probabilities"][c] for c in ensemble.classes] for p in preds])
    assert np.abs(served - expected.probs).max() <= tol


# ---- without Serve ----
@pytest.mark.parametrize("body, status", [
    (b"{not json", 400), (b"\xff\xfe", 400), (b"[1]", 422), (b"{}", 422), (b'{"text": ""}', 422),
    (b'{"text": 5}', 422), (b'{"texts": []}', 422), (b'{"texts": ["a", "  "]}', 422), (b'{"text": "a", "texts": ["b"]}', 422),
    (b'{"text": "a", "top_k": 0}', 422), (b'{"txt": "a"}', 422), (json.dumps({"texts": ["a"] * (MAX_TEXTS + 1)}).encode(), 413),
])
def test_parse_predict_refuses_bad_bodies(body, status):
    with pytest.raises(RequestError) as err:
        parse_predict(body)
    assert err.value.status == status


def test_choose_backend_needs_models(runs, onnx_only_run):
    assert choose_backend(RunDir.open(runs["a"])) == "torch"
    with pytest.raises(RunDirError, match="no ONNX exports"):
        choose_backend(RunDir.open(runs["a"]), onnx=True)
    assert choose_backend(RunDir.open(onnx_only_run)) == "onnx"  # only exports: ONNX without asking


# ---- on Serve ----
def test_predictions_equal_offline_ensemble(client, runs):
    response = client.predict(TEXTS)
    assert response["model"] == model_of(runs["a"])
    assert_matches(response, offline(runs["a"]), TEXTS)
    assert [list(p["probabilities"]) for p in response["predictions"]] == \
           [sorted(p["probabilities"], key=p["probabilities"].get, reverse=True) for p in response["predictions"]]
    single = client.predict(TEXTS[1], top_k=1)["predictions"]
    assert len(single) == 1 and list(single[0]["probabilities"]) == single[0]["labels"]


def test_overlong_text_is_truncated_and_flagged(client, runs):
    response = client.predict([LONG, "the cat"])
    assert [p["truncated"] for p in response["predictions"]] == [True, False]
    assert_matches(response, offline(runs["a"]), [LONG, "the cat"])


def body(obj) -> bytes:
    return json.dumps(obj).encode()


AUTH = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}
BAD_REQUESTS = {
    "malformed json": (AUTH, b'{"text": "a"', 400),
    "missing text": (AUTH, body({"top_k": 2}), 422),
    "empty text": (AUTH, body({"text": "   "}), 422),
    "non-string text": (AUTH, body({"texts": ["ok", 3]}), 422),
    "too many texts": (AUTH, body({"texts": ["a cat"] * (MAX_TEXTS + 1)}), 413),
    "body too large": (AUTH, body({"texts": ["cat " * (MAX_BODY_BYTES // 8)] * 2}), 413),
    "no token": ({}, body({"text": "a cat"}), 401),
    "wrong token": ({"Authorization": "Bearer nope"}, body({"text": "a cat"}), 401),
}


@pytest.mark.parametrize("case", list(BAD_REQUESTS))
def test_bad_request_gets_json_error_and_service_keeps_serving(served, client, case):
    headers, data, status = BAD_REQUESTS[case]
    response = requests.post(f"{served[0]}/predict", data=data, headers=headers, timeout=30)
    assert response.status_code == status
    assert response.json()["error"]
    assert client.predict("a cat")["predictions"][0]["labels"]


@seed(5)
@settings(max_examples=60, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
@given(data=bodies)
def test_random_bodies_over_http_get_200_or_a_4xx_error(served, data):
    """Random JSON (and non-JSON) bodies through the real service: 200 with predictions, or a 4xx
    with the ``{"error"}`` shape; never a 500."""
    response = requests.post(f"{served[0]}/predict", data=data, headers=AUTH, timeout=30)
    if response.status_code == 200:
        assert response.json()["predictions"]
    else:
        assert 400 <= response.status_code < 500 and set(response.json()) == {"error"}


def test_token_guards_predict_and_info_but_not_healthz(served, client):
    url = served[0]
    assert requests.get(f"{url}/healthz", timeout=10).json() == {"status": "ok"}
    for path in ("/info", "/stats"):
        assert requests.get(url + path, timeout=10).status_code == 401
    with pytest.raises(ClientError) as err:
        Client(url, token="wrong").predict("a cat")
    assert err.value.status == 401 and "token" in err.value.message
    assert requests.post(f"{url}/predict", json={"text": "a cat"}, headers=AUTH, timeout=10).status_code == 200


def test_info_describes_model_and_settings(client, served, runs):
    info = client.info()
    cfg = served[1]
    assert (info["run"], info["model"], info["labels"], info["backend"]) == ("tiny-a", model_of(runs["a"]), CLASSES, "torch")
    assert info["fold_models"] == ["small/textcnn", "small/textcnn"] and info["max_length"] == 8
    assert info["batching"] == {"max_batch_size": cfg.max_batch_size, "batch_wait_timeout_s": cfg.batch_wait_timeout_s,
                                "chunk_size": cfg.chunk_size}
    assert info["replicas"] == 1 and info["versions"]["ray"].startswith("2.")


def predict_concurrently(url: str, n: int) -> list[dict]:
    """``n`` single-text requests released at once, one client (HTTP session) per thread."""
    start = threading.Barrier(n)

    def one(i):
        client = Client(url, token=TOKEN)
        start.wait()
        return client.predict(TEXTS[i % len(TEXTS)])

    with ThreadPoolExecutor(n) as pool:
        return list(pool.map(one, range(n)))


def test_predict_cli_with_url_prints_the_local_lines(served, runs, tmp_path, capsys):
    path = tmp_path / "texts.txt"
    path.write_text("\n".join(TEXTS) + "\n")
    assert main(["predict", "--url", served[0], "--token", TOKEN, "--file", str(path), "--top", "2"]) == 0
    remote = capsys.readouterr().out
    assert main(["predict", str(runs["a"]), "--file", str(path), "--top", "2"]) == 0
    assert remote == capsys.readouterr().out and len(remote.splitlines()) == len(TEXTS)
    assert main(["predict", "--url", served[0], "--file", str(path)]) == 2
    assert "HTTP 401" in capsys.readouterr().err


def test_concurrent_requests_share_batches(served, client, runs):
    responses = predict_concurrently(served[0], 16)
    texts = [TEXTS[i % len(TEXTS)] for i in range(16)]
    assert_matches({"predictions": [r["predictions"][0] for r in responses]}, offline(runs["a"]), texts)
    sizes = {int(n) for n in client.stats()["batch_sizes"]}
    assert max(sizes) > 1, sizes


def test_redeploy_under_load_fails_no_request(served, client, runs):
    """Run "b" replaces run "a" under the same app name while 4 threads keep predicting."""
    url, cfg = served
    stop, failures, models = threading.Event(), [], []

    def hammer():
        own = Client(url, token=TOKEN)
        while not stop.is_set():
            try:
                models.append(own.predict(TEXTS[:2])["model"])
            except ClientError as exc:
                failures.append(exc)

    threads = [threading.Thread(target=hammer) for _ in range(4)]
    for t in threads:
        t.start()
    try:
        assert deploy(runs["b"], cfg.model_copy(update={"max_batch_size": 4})) == url
        time.sleep(1.0)  # keep the load on a little after the switch
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert failures == []
    assert models[0] == model_of(runs["a"]) and models[-1] == model_of(runs["b"])
    assert client.info()["batching"]["max_batch_size"] == 4
    predict_concurrently(url, 12)
    assert max(int(n) for n in client.stats()["batch_sizes"]) <= 4


def test_onnx_exports_are_served(served, client, onnx_only_run, runs):
    assert deploy(onnx_only_run, served[1]) == served[0]
    assert client.info()["backend"] == "onnx"
    response = client.predict(TEXTS)
    exported = onnx_members(RunDir.open(onnx_only_run))
    assert_matches(response, OnnxEnsemble([d for d, _ in exported], weights=[w for _, w in exported]), TEXTS)
    assert_matches(response, offline(runs["a"]), TEXTS, tol=1e-4)  # the torch models it was exported from


def test_one_model_of_the_run_is_served_with_model(served, client, runs):
    """`--model fold:1` (as student, pruned): that model answers, not the ensemble; a model the run lacks
    is refused before anything is deployed."""
    try:
        assert deploy(runs["a"], served[1], model="fold:1") == served[0]
        info = client.info()
        assert (info["served"], info["backend"], info["fold_models"]) == ("fold:1", "torch", ["small/textcnn"])
        assert_matches(client.predict(TEXTS), Ensemble([RunDir.open(runs["a"]).model_dir(1)], device="cpu"), TEXTS)
        with pytest.raises(RunDirError, match=r"no student model"):
            deploy(runs["a"], served[1], model="student")
        assert client.info()["served"] == "fold:1"
    finally:
        deploy(runs["a"], served[1])
    assert client.info()["served"] == "ensemble"


def test_autoscaling_adds_a_replica_under_load(served, client, runs):
    """serve.autoscaling becomes the deployment's autoscaling_config: under more load than one replica's
    target Serve starts a second replica (a fixed deployment has one). A Serve config file carries the
    same autoscaling_config, valid for Serve's schema; the target defaults to a full batch per replica."""
    cfg = served[1].model_copy(update={"autoscaling": AutoscalingConfig(
        min_replicas=1, max_replicas=2, target_ongoing_requests=1, upscale_delay_s=0, downscale_delay_s=600)})
    stop, threads = threading.Event(), []

    def hammer():
        own = Client(served[0], token=TOKEN)
        while not stop.is_set():
            own.predict(TEXTS)

    try:
        deploy(runs["a"], cfg)
        threads += [threading.Thread(target=hammer) for _ in range(8)]
        for t in threads:
            t.start()

        def running() -> int:
            states = serve.status().applications["classifier"].deployments["Classifier"].replica_states
            return states.get("RUNNING", 0)
        deadline = time.monotonic() + 60
        while running() < 2 and time.monotonic() < deadline:
            time.sleep(0.5)
        assert running() == 2
    finally:
        stop.set()
        for t in threads:
            t.join()
        deploy(runs["a"], served[1])
    (written,) = serve_config(RunDir.open(runs["a"]), cfg)["applications"][0]["deployments"]
    assert written["autoscaling_config"] == {"min_replicas": 1, "max_replicas": 2, "target_ongoing_requests": 1,
                                             "upscale_delay_s": 0, "downscale_delay_s": 600, "initial_replicas": 1}
    assert "num_replicas" not in written
    default = ServeConfig(autoscaling=AutoscalingConfig()).deployment_options()
    assert default["autoscaling_config"]["target_ongoing_requests"] == 32 and "num_replicas" not in default


def test_a_gpu_per_replica_is_reserved_and_moves_the_model_to_cuda():
    """The CPU side of serve.gpus_per_replica (tests/test_gpu.py serves on a GPU where there is one)."""
    gpu = ServeConfig(gpus_per_replica=0.5)
    assert deployment_options(gpu)["ray_actor_options"] == {"num_cpus": 1, "num_gpus": 0.5} and replica_device(gpu) == "cuda"
    assert deployment_options(ServeConfig())["ray_actor_options"]["num_gpus"] == 0 and replica_device(ServeConfig()) == "cpu"


@pytest.mark.parametrize("body, status", [
    (b"{", 400), (b'["a"]', 422), (b"{}", 422), (b'{"inputs": []}', 422), (b'{"inputs": " "}', 422), (b'{"inputs": 3}', 422),
    (b'{"inputs": ["a", 3]}', 422), (b'{"inputs": "a", "parameters": {"top_k": 0}}', 422),
    (b'{"inputs": "a", "parameters": {"temperature": 1}}', 422), (b'{"inputs": "a", "extra": 1}', 422),
    (json.dumps({"inputs": ["a"] * (MAX_TEXTS + 1)}).encode(), 413),
])
def test_parse_hf_refuses_bad_bodies(body, status):
    with pytest.raises(RequestError) as err:
        parse_hf(body)
    assert err.value.status == status and "\n" not in err.value.message


def test_parse_hf_reads_the_inference_api_request():
    assert parse_hf(b'{"inputs": "a cat"}') == (["a cat"], None)
    assert parse_hf(b'{"inputs": ["a", "b"], "parameters": {"top_k": 2, "function_to_apply": null}, "options": {"wait_for_model": true}}') == (["a", "b"], 2)


def test_hf_route_answers_in_the_inference_api_shape(served, client, runs):
    """POST /hf: one list of {label, score} per input, most probable first, the scores /predict gives;
    the token guards it like /predict."""
    url = served[0]
    one = requests.post(f"{url}/hf", json={"inputs": "the cat"}, headers=AUTH, timeout=30)
    assert one.status_code == 200
    (answer,) = one.json()
    assert [set(a) for a in answer] == [{"label", "score"}] * len(CLASSES)
    scores = [a["score"] for a in answer]
    assert scores == sorted(scores, reverse=True)
    assert {a["label"]: a["score"] for a in answer} == client.predict("the cat")["predictions"][0]["probabilities"]
    many = requests.post(f"{url}/hf", json={"inputs": TEXTS, "parameters": {"top_k": 1}}, headers=AUTH, timeout=30).json()
    assert [[a["label"]] for a in sum(many, [])] == offline(runs["a"]).predict(TEXTS).labels
    assert requests.post(f"{url}/hf", json={"inputs": "the cat"}, timeout=30).status_code == 401
    bad = requests.post(f"{url}/hf", json={"inputs": []}, headers=AUTH, timeout=30)
    assert bad.status_code == 422 and set(bad.json()) == {"error"}


def test_huggingface_hubs_own_client_talks_to_the_hf_route(served, client):
    """huggingface_hub.InferenceClient, pointed at the service's /hf with the bearer token, gets the
    labels and scores /predict gives, unchanged client code."""
    from huggingface_hub import InferenceClient

    hub = InferenceClient(model=f"{served[0]}/hf", token=TOKEN)
    answer = hub.text_classification("the cat")
    assert {a.label: a.score for a in answer} == client.predict("the cat")["predictions"][0]["probabilities"]
    assert [a.label for a in hub.text_classification("a dog in the city by the river", top_k=1)] == \
        client.predict("a dog in the city by the river")["predictions"][0]["labels"]


def test_openapi_documents_predict_and_hf(served):
    url = served[0]
    spec = requests.get(f"{url}/openapi.json", timeout=30)
    assert spec.status_code == 200
    paths = spec.json()["paths"]
    assert {"/predict", "/hf", "/info", "/healthz"} <= set(paths)
    body = paths["/predict"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert {"text", "texts", "top_k"} <= set(body["properties"])
    assert "parameters" in paths["/hf"]["post"]["requestBody"]["content"]["application/json"]["schema"]["properties"]
    response = paths["/predict"]["post"]["responses"]["200"]["content"]["application/json"]["schema"]["$ref"]
    assert "predictions" in spec.json()["components"]["schemas"][response.rsplit("/", 1)[1]]["properties"]
    docs = requests.get(f"{url}/docs", timeout=30)
    assert docs.status_code == 200 and "swagger" in docs.text.lower()


def _replica_model_pid() -> int:
    """The pid of the Classifier replica's model process (the replica actor's child, from /proc)."""
    from ray.util.state import list_actors

    (replica,) = [a.pid for a in list_actors(filters=[("state", "=", "ALIVE")]) if "Classifier" in a.class_name]
    children = [int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit() and _ppid(p) == replica
                and b"resource_tracker" not in (p / "cmdline").read_bytes()]  # spawn's tracker is a child too
    assert len(children) == 1, children
    return children[0]


def _ppid(proc: Path) -> int:
    try:
        return int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return -1


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="finds the model process through /proc (Linux)")
def test_a_dead_model_process_answers_503_and_serve_restarts_the_replica(served, client, runs):
    """The model runs in the replica's child process (serve/model_process.py): killed, requests get 503
    until Serve's health check replaces the replica, whose new model process answers as before."""
    import os
    import signal

    dead = _replica_model_pid()
    os.kill(dead, signal.SIGKILL)
    with pytest.raises(ClientError) as refused:
        for _ in range(50):  # the replica may notice on the first request or a moment later
            client.predict(TEXTS)
            time.sleep(0.1)
    assert refused.value.status == 503 and "model process died" in refused.value.message
    deadline = time.monotonic() + 90
    while True:
        try:
            response = client.predict(TEXTS)
            break
        except ClientError:
            assert time.monotonic() < deadline, "the replica was not replaced within 90 s"
            time.sleep(1)
    assert_matches(response, offline(runs["a"]), TEXTS)
    assert _replica_model_pid() != dead


def test_trained_smoke_run_is_served(served, client, smoke_run):
    """A run trained by the pipeline (last: it replaces the tiny run)."""
    deploy(smoke_run.run.root, served[1])
    texts = ["质量很差，起皱严重。没型，不值得购买", "收到了，物流很快，衣服还挺不错的，好评"]
    response = client.predict(texts)
    assert response["model"] == model_of(smoke_run.run.root)
    assert_matches(response, offline(smoke_run.run.root), texts)


# ---- Ray Serve's high-throughput mode (serve.ingress: haproxy), in a Ray of its own ----
def _haproxy_pids() -> set[int]:
    pids = set()
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            if (proc / "comm").read_text().strip() == "haproxy":
                pids.add(int(proc.name))
        except OSError:  # gone meanwhile
            pass
    return pids


def test_haproxy_ingress_serves_the_run_through_haproxy(runs, tmp_path):
    """`orchestrator serve --ingress haproxy` starts its own Ray in Serve's high-throughput mode: HAProxy
    processes appear, /predict answers through them with the offline ensemble's predictions, the token
    still guards it, and Ctrl-C takes HAProxy down with Ray."""
    from orchestrator.train.cluster import HAPROXY_ENV

    before, port = _haproxy_pids(), free_port()
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS" and k not in HAPROXY_ENV}
    log = tmp_path / "serve.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "orchestrator", "serve", str(runs["a"]), "--port", str(port),
                                 "--ingress", "haproxy", "--token", TOKEN], cwd=ROOT, env=env, stdout=out,
                                stderr=subprocess.STDOUT)
    try:
        wait_healthy(f"http://127.0.0.1:{port}", 240, proc, log)
        client = Client(f"http://127.0.0.1:{port}", token=TOKEN)
        assert_matches(client.predict(TEXTS), offline(runs["a"]), TEXTS)
        started = _haproxy_pids() - before
        assert started, "no haproxy process"
        with pytest.raises(ClientError) as denied:
            Client(f"http://127.0.0.1:{port}").predict("the cat")
        assert denied.value.status == 401
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(90)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(30)
    assert proc.returncode == 0, log.read_text(errors="replace")[-3000:]
    deadline = time.monotonic() + 30
    while started & _haproxy_pids() and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not started & _haproxy_pids()


def test_haproxy_ingress_refuses_a_ray_that_is_already_up_without_it(ray_session, monkeypatch):
    from orchestrator.config import ConfigError
    from orchestrator.train.cluster import HAPROXY_ENV, init_ray

    for key in HAPROXY_ENV:
        monkeypatch.delenv(key, raising=False)
    with pytest.raises(ConfigError, match=r"serve.ingress: haproxy is chosen where Ray starts .*RAY_SERVE_ENABLE_HA_PROXY=1"):
        init_ray(ingress="haproxy")
    init_ray(ingress="proxy")  # joined as before
