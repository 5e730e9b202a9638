"""Ray Serve hosts a run's fold ensemble over HTTP (design: docs/serving.md).

Each replica of the ``Classifier`` deployment (FastAPI ingress) loads the K fold models once.
Every text of every request (``/predict``, and ``/hf`` in the Hugging Face Inference API's shape)
goes through one batch queue (``batcher.FillingBatcher``), so texts of concurrent requests share a
batch and each batch runs the ensemble once. ``deploy`` serves a run from Python; ``build_app`` and
``serve_config`` are the same application for Ray Serve's own ``serve run`` / ``serve deploy``.
"""

import asyncio
import hmac
import json
import logging
import time
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any, Optional, Sequence

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict
from ray import serve
from starlette.exceptions import HTTPException

from orchestrator.rundir import RunDir, package_versions
from orchestrator.serve.batcher import FillingBatcher
from orchestrator.serve.model_process import ModelProcess
from orchestrator.serve.client import Client, ClientError
from orchestrator.config import ServeConfig
from orchestrator.evaluate.ensemble import render
from orchestrator.evaluate.loading import onnx_precision, served_model
from orchestrator.serve.schema import (
    MAX_BODY_BYTES, MAX_TEXTS, HFRequest, HFResponse, PredictRequest, PredictResponse, RequestError, hf_answer, parse_hf,
    parse_predict,
)
from trainables.models import META_FILE

REPLICA_CPUS = 1                 # Ray CPUs of a replica, and its inference threads
_DEFAULTS = ServeConfig()
logger = logging.getLogger("ray.serve")


# ---- the run's models ----
def model_id(run: RunDir) -> str:
    """``<run name>@<config hash>``: which model answered, in every response."""
    manifest = run.manifest()
    return f"{manifest.get('name', run.root.name)}@{manifest.get('config_hash', 'unknown')}"


def fold_models(model_dirs: Sequence[str]) -> list[str]:
    """``kind/arch`` (or ``kind/name``) of each fold model, from its model.json."""
    out = []
    for directory in model_dirs:
        model = json.loads((Path(directory) / META_FILE).read_text())["model"]
        out.append(f"{model['kind']}/{model.get('arch') if model['kind'] == 'small' else model.get('name')}")
    return out


# ---- requests ----
async def read_body(request: Request, limit: int = MAX_BODY_BYTES) -> bytes:
    """The request body; 413 past ``limit`` bytes, by Content-Length or, without it, while reading."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise RequestError(413, f"request body is {declared} bytes; at most {limit}")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise RequestError(413, f"request body over {limit} bytes")
    return bytes(body)


# ---- the deployment ----
# /docs and /openapi.json describe the API (no model, labels or data: those stay behind the token)
app = FastAPI(title="text-orchestrator classifier", docs_url="/docs", redoc_url=None, openapi_url="/openapi.json")


def _body(model: type) -> dict:
    """OpenAPI for a JSON body the route reads itself (limits and messages are the service's own):
    the pydantic model's schema, nested models inlined."""
    schema = model.model_json_schema()
    defs = schema.pop("$defs", {})

    def inline(node):
        if isinstance(node, dict):
            ref = node.get("$ref", "")
            return inline(defs[ref.rsplit("/", 1)[1]]) if ref.startswith("#/$defs/") else {k: inline(v) for k, v in node.items()}
        return [inline(v) for v in node] if isinstance(node, list) else node

    return {"requestBody": {"required": True, "content": {"application/json": {"schema": inline(schema)}}}}


def _error(status: int, message: str) -> JSONResponse:
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
    return JSONResponse({"error": message}, status_code=status, headers=headers)


@app.exception_handler(RequestError)
async def _refused(request: Request, exc: RequestError) -> JSONResponse:
    return _error(exc.status, exc.message)


@app.exception_handler(HTTPException)
async def _http_error(request: Request, exc: HTTPException) -> JSONResponse:
    """FastAPI's own errors (unknown route, wrong method) in the same ``{"error": ...}`` shape."""
    return _error(exc.status_code, str(exc.detail))


@app.exception_handler(Exception)
async def _crashed(request: Request, exc: Exception) -> JSONResponse:
    return _error(500, f"internal error: {type(exc).__name__}: {exc}")


@serve.deployment(ray_actor_options={"num_cpus": REPLICA_CPUS})
@serve.ingress(app)
class Classifier:
    """One replica: a run's fold ensemble behind the HTTP API."""

    def __init__(self, run_dir: str, model: str, token: Optional[str], device: str = "cpu"):
        run = RunDir.open(run_dir)
        self.precision = onnx_precision(run) if model == "onnx" else None  # (int8 | fp32, why)
        self.model_process = ModelProcess(run_dir, model, device, threads=REPLICA_CPUS)
        self.meta = self.model_process.info
        if self.precision:
            logger.info("serving ONNX %s: %s", *self.precision)
        self.served, self.backend = model, "onnx" if model == "onnx" else "torch"
        self.run_name = run.manifest().get("name", run.root.name)
        self.model = model_id(run)
        self.trained_with = run.manifest().get("versions", {})
        self.token = token
        self.batching: dict[str, Any] = _DEFAULTS.deployment_options()["user_config"]
        self.batcher = FillingBatcher(self._predict_batch, _DEFAULTS.max_batch_size, _DEFAULTS.batch_wait_timeout_s)

    def check_health(self) -> None:
        """Serve's health check: a replica whose model process died is restarted."""
        if not self.model_process.alive():
            raise RuntimeError("the model process died")

    def __del__(self) -> None:
        if hasattr(self, "model_process"):  # not when __init__ failed before it
            self.model_process.close()

    def reconfigure(self, config: dict) -> None:
        """Batch settings (the deployment's user_config): applied without reloading the models."""
        self.batcher.configure(config["max_batch_size"], config["batch_wait_timeout_s"])
        self.batching = dict(config)

    def _predict_batch(self, texts: list[str]) -> list[tuple]:
        """(labels, probabilities, truncated) per text: one model call in the model process for the batch,
        its length-sorted texts in passes of at most ``chunk_size`` (``length_chunks``)."""
        try:
            return self.model_process.predict(texts, self.batching["chunk_size"])
        except BrokenProcessPool:
            raise RequestError(503, "the model process died; Serve restarts this replica") from None

    def _authorize(self, request: Request) -> None:
        if self.token is None:
            return
        given = request.headers.get("authorization", "").encode()
        if not hmac.compare_digest(given, f"Bearer {self.token}".encode()):  # constant time
            raise RequestError(401, "missing or wrong bearer token")

    @app.get("/healthz")
    async def healthz(self) -> dict:
        return {"status": "ok"}

    async def _answers(self, texts: list[str], top_k: Optional[int]) -> list[dict]:
        rows = await asyncio.gather(*(self.batcher(text) for text in texts))
        return [render(*row, self.meta.classes, top_k) for row in rows]

    @app.post("/predict", response_model=PredictResponse, openapi_extra=_body(PredictRequest))
    async def predict(self, request: Request) -> dict:
        """Labels and probabilities of one text or several."""
        self._authorize(request)
        texts, top_k = parse_predict(await read_body(request))
        return {"predictions": await self._answers(texts, top_k), "model": self.model}

    @app.post("/hf", response_model=HFResponse, openapi_extra=_body(HFRequest))
    async def hf(self, request: Request) -> list:
        """The Hugging Face Inference API's text classification: one list of {label, score} per input."""
        self._authorize(request)
        texts, top_k = parse_hf(await read_body(request))
        return [hf_answer(p) for p in await self._answers(texts, top_k)]

    @app.get("/info")
    async def info(self, request: Request) -> dict:
        self._authorize(request)
        context = serve.get_replica_context()
        e = self.meta
        return {
            "run": self.run_name, "model": self.model, "labels": e.classes, "multilabel": e.multilabel,
            "threshold": e.threshold, "max_length": e.max_length, "served": self.served, "backend": self.backend, "device": e.device,
            "onnx_precision": dict(zip(("precision", "reason"), self.precision)) if self.precision else None,
            "fold_models": fold_models(e.model_dirs), "weights": e.weights, "batching": self.batching, "replicas": context.world_size,
            "limits": {"max_texts": MAX_TEXTS, "max_body_bytes": MAX_BODY_BYTES},
            "versions": package_versions(), "trained_with": self.trained_with,
        }

    @app.get("/stats")
    async def stats(self, request: Request) -> dict:
        """Sizes of the batches this replica executed (each replica counts its own)."""
        self._authorize(request)
        sizes = self.batcher.sizes
        return {"replica": serve.get_replica_context().replica_tag, "batches": sum(sizes.values()),
                "texts": sum(n * c for n, c in sizes.items()), "batch_sizes": {str(n): c for n, c in sorted(sizes.items())},
                "busy_s": round(self.batcher.busy_s, 3)}


# ---- deploy ----
APP_NAME = "classifier"
IMPORT_PATH = "orchestrator.serving:build_app"  # Ray Serve's name for build_app (serve run / serve deploy)


def application(run: RunDir, serve_cfg: ServeConfig, model: Optional[str] = None, onnx: bool = False) -> serve.Application:
    """The run's Serve application: the Classifier deployment serving ``served_model(run, model, onnx)``,
    with the run's replicas (or autoscaling) and batching."""
    return Classifier.options(**deployment_options(serve_cfg)).bind(
        str(run.root.resolve()), served_model(run, model, onnx), serve_cfg.token, replica_device(serve_cfg))


def deployment_options(serve_cfg: ServeConfig) -> dict:
    """The Classifier's Serve options: the config's replicas or autoscaling and batching, and the CPUs
    and GPUs each replica reserves."""
    resources = {"num_cpus": REPLICA_CPUS, "num_gpus": serve_cfg.gpus_per_replica}
    return {"ray_actor_options": resources, **serve_cfg.deployment_options()}


def replica_device(serve_cfg: ServeConfig) -> str:
    return "cuda" if serve_cfg.gpus_per_replica > 0 else "cpu"


class AppArgs(BaseModel):
    """What ``build_app`` takes (``serve run IMPORT_PATH run_dir=... [model=student] [onnx=true]``, or a
    Serve config's args). No token here: args are stored in the Serve config and shown by ``serve status``."""

    model_config = ConfigDict(extra="forbid")
    run_dir: str
    model: Optional[str] = None
    onnx: bool = False


def build_app(args: AppArgs) -> serve.Application:
    """Ray Serve's application builder for a run. The bearer token comes from $ORCHESTRATOR_SERVE_TOKEN,
    else the run's serve.token_file, as for ``orchestrator serve``."""
    run = RunDir.open(args.run_dir)
    return application(run, run.config().serve.with_token(), args.model, args.onnx)


def serve_config(run: RunDir, serve_cfg: ServeConfig, model: Optional[str] = None, onnx: bool = False) -> dict:
    """A Serve config file's content (``serve run FILE`` / ``serve deploy FILE``) for the run, checked
    against Serve's own schema; the token stays out of it."""
    from ray.serve.schema import ServeDeploySchema

    served = served_model(run, model, onnx)  # the models it names exist
    config = {
        "proxy_location": "EveryNode",
        "http_options": {"host": serve_cfg.host, "port": serve_cfg.port},
        "applications": [{
            "name": APP_NAME, "route_prefix": "/", "import_path": IMPORT_PATH,
            "args": AppArgs(run_dir=str(run.root.resolve()), model=served).model_dump(exclude_defaults=True),
            "deployments": [{"name": Classifier.name, **deployment_options(serve_cfg)}],
        }],
    }
    ServeDeploySchema.model_validate(config)
    return config


def deploy(run_dir: str | Path, serve_cfg: ServeConfig, onnx: bool = False, name: str = APP_NAME,
           model: Optional[str] = None) -> str:
    """Serve the run's ``model`` (default: its fold ensemble; see ``served_model``) under app ``name``
    and return the base URL once /healthz answers.

    Starts Serve on ``serve_cfg.host:port`` unless it already runs (HTTP options are fixed at start:
    ``shutdown()`` to change them). Deploying again under the same name replaces the model by a
    rolling update: in-flight requests finish on the old replicas.
    """
    run = RunDir.open(run_dir)
    serve.start(http_options={"host": serve_cfg.host, "port": serve_cfg.port})
    serve.run(application(run, serve_cfg, model, onnx), name=name, route_prefix="/")
    host = "127.0.0.1" if serve_cfg.host == "0.0.0.0" else serve_cfg.host
    url = f"http://{host}:{serve_cfg.port}"
    _wait_healthy(url)
    return url


def _wait_healthy(url: str, timeout_s: float = 30.0) -> None:
    """Poll /healthz: the proxies learn new routes a moment after serve.run returns."""
    client = Client(url, timeout=2.0)
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            client.health()
            return
        except ClientError as exc:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{url}/healthz does not answer ({exc}); if Serve was already running on other "
                                   "HTTP options, shutdown() first") from exc
        time.sleep(0.2)


def shutdown() -> None:
    """Stop Serve: every app, the proxies and the controller."""
    serve.shutdown()


def serve_until_interrupted(run: RunDir, serve_cfg: ServeConfig, onnx: bool, log=print, model: Optional[str] = None) -> None:
    """Deploy the run's model on Ray Serve and block until Ctrl-C or SIGTERM, then shut Serve down."""
    import signal

    signal.signal(signal.SIGTERM, signal.default_int_handler)  # a process manager's stop shuts Serve down too
    served = served_model(run, model, onnx)
    try:
        url = deploy(run.root, serve_cfg, model=served)
        log(f"serving {run.root} ({served}) at {url}: POST /predict, GET /info, GET /healthz (Ctrl-C to stop)")
        if served == "onnx":
            log("ONNX {}: {}".format(*onnx_precision(run)))
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        log("stopping")
    finally:
        shutdown()
