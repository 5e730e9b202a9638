"""The experiment YAML as pydantic models (the ``model`` and ``train`` sections are declared in
trainables/config.py: the training loop and the models take them as they are).

Every field has a default and a one-line description where it is declared. Unknown keys are
rejected with a "did you mean" hint, and every error names its key path, e.g.
``train.lr: expected a number, got 'fast'``.
"""
from __future__ import annotations

import difflib
import hashlib
import json
import os
from pathlib import Path
from typing import Any, Literal, Optional

import yaml
from pydantic import BaseModel, Field, ValidationError, field_validator, model_validator

from trainables.config import ModelConfig, Section, TrainConfig


TRAIN_SECTIONS = ("seed", "data", "model", "train", "cv", "tune")
ENSEMBLE_KEYS = ("ensemble", "selection_rounds")  # cv keys that choose among trained models, not train them


class ConfigError(ValueError):
    """A bad experiment file: the message is one line naming the file and key."""


class CleanConfig(Section):
    lowercase: bool = Field(False, description="Lower-case every text.")
    strip_special: bool = Field(False, description="Replace URLs, @mentions, HTML entities and control/special characters with spaces.")
    collapse_whitespace: bool = Field(True, description="Collapse runs of whitespace into one space and strip the ends.")


class DataConfig(Section):
    source: Optional[Literal["bbc_news"]] = Field(None, description="A built-in data set instead of files: bbc_news (BBC News, 2,225 articles, 5 classes).")
    train: Optional[str] = Field(None, description="Training file (csv, tsv, json, jsonl or parquet), relative to the YAML file; or a URI (s3://, gs://, file://: a file or, with data.format, a folder) read by Ray Data with data.streaming.")
    val: Optional[str] = Field(None, description="Validation file; when absent a stratified split of train is used.")
    test: Optional[str] = Field(None, description="Test file; when absent and test_fraction > 0 a stratified split of train is used.")
    format: Literal["auto", "csv", "tsv", "json", "jsonl", "parquet", "hf_dataset"] = Field("auto", description="File format; auto picks it from the file extension (a folder: a Hugging Face `datasets` save_to_disk folder).")
    text_column: str = Field("text", description="Column (or JSON key) holding the text.")
    label_column: str = Field("label", description="Column (or JSON key) holding the label(s): names or integer ids.")
    multilabel: bool = Field(False, description="Each row may have several labels (a list, or names joined by label_separator).")
    label_separator: str = Field(",", description="Separator of multi-label names inside one field.")
    classes_map: Optional[str] = Field(None, description="JSON file mapping class name -> id; fixes the label order and lets files use ids.")
    val_fraction: float = Field(0.1, ge=0.0, lt=1.0, description="Share of train held out for validation when no val file is given.")
    test_fraction: float = Field(0.0, ge=0.0, lt=1.0, description="Share of train held out for testing when no test file is given (0 = no test set).")
    max_rows: Optional[int] = Field(None, ge=1, description="Use only the first N training rows (stratified sample), for quick runs.")
    clean: CleanConfig = Field(default_factory=CleanConfig, description="Text cleanup applied to every split.")
    stop_words: Optional[str] = Field(None, description="File with one stop word per line, removed from small-model tokens.")
    streaming: Literal["auto", "on", "off"] = Field("auto", description="Read, fold and tokenize the data with Ray Data on the cluster and stream it to the training workers, instead of holding it in the driver (orchestrator/stream/); auto: on for a csv/tsv/jsonl/parquet training file of 2M rows or more.")

    @field_validator("streaming", mode="before")
    @classmethod
    def _yaml_switch(cls, value: Any) -> Any:
        """YAML 1.1 reads a bare on/off as a boolean."""
        return {True: "on", False: "off"}.get(value, value) if isinstance(value, bool) else value

    @model_validator(mode="after")
    def _one_source(self) -> "DataConfig":
        if self.source is None and self.train is None:
            raise ValueError("data: give either data.source (a built-in set) or data.train (a file)")
        if self.source is not None and self.train is not None:
            raise ValueError(f"data: data.source={self.source!r} and data.train={self.train!r} exclude each other")
        return self


class CVConfig(Section):
    folds: int = Field(1, ge=1, description="1 = one model on train/val; K > 1 = stratified K-fold over train+val.")
    parallel: Optional[int] = Field(None, ge=1, description="Folds running at once (default: as many as resources allow).")
    ensemble: Literal["selection", "best_config"] = Field("selection", description="The run's ensemble: selection = weighted configs chosen greedily on OOF predictions (Caruana); best_config = the best config's K folds.")
    selection_rounds: int = Field(25, ge=1, description="selection: rounds of greedy selection with replacement (weights are multiples of 1/rounds).")


class RacingConfig(Section):
    enabled: bool = Field(False, description="Race configs fold by fold: a config significantly worse than the leader on the same folds stops taking fold slots (orchestrator/train/racing.py). For searches of more than a handful of configs.")
    min_folds: int = Field(2, ge=2, description="Folds a config and the leader must share before it can be raced out.")
    confidence: float = Field(0.95, gt=0.5, lt=1.0, description="One-sided confidence of the paired t bound that races a config out.")
    tolerance: float = Field(0.0, ge=0.0, description="Indifference zone in the metric's units (e.g. 0.002 macro-F1): a config also goes when, at confidence, it is not better than the leader by this much, so near-ties stop taking folds; the choice can then be up to this much below the best. 0: only a significantly worse config goes, an equal one runs every fold.")
    per_epoch: bool = Field(True, description="Also race at every epoch: a config whose folds are significantly worse than the leader's folds at the same epoch (on at least min_folds folds) stops its training fold there.")


class TuneConfig(Section):
    samples: int = Field(1, ge=1, description="Configurations tried (each trained on every fold).")
    search: dict[str, str] = Field(default_factory=dict, description="key path -> distribution, e.g. train.lr: loguniform(1e-5, 1e-4).")
    searcher: Literal["random", "grid", "optuna"] = Field("random", description="How configurations are suggested.")
    scheduler: Literal["fifo", "asha"] = Field("fifo", description="fifo runs every trial; asha stops bad configs early.")
    metric: Literal["val_macro_f1", "val_micro_f1", "val_weighted_f1", "val_accuracy", "val_loss"] = Field("val_macro_f1", description="Validation metric (at each fold's best epoch) the search optimises on the cross-fold mean.")
    mode: Literal["max", "min"] = Field("max", description="Maximise or minimise the metric.")
    max_concurrent: Optional[int] = Field(None, ge=1, description="Trials at once (default: cv.parallel).")
    racing: RacingConfig = Field(default_factory=RacingConfig, description="Cross-validated racing of configs (off by default).")


class DistillConfig(Section):
    enabled: bool = Field(False, description="Distill the trained model(s) into a student after training.")
    mode: Literal["cross", "self"] = Field("cross", description="cross: teacher logits -> any student; self: TextBrewer layer-to-layer into a shallower copy of an HF teacher.")
    teacher: str = Field("ensemble", pattern=r"^(ensemble|fold:\d+)$", description="ensemble: all K fold models (multi-teacher); fold:<k>: one fold model.")
    teacher_mix: Literal["average", "take_turns"] = Field("average", description="Multi-teacher: average the K teachers' logits, or one teacher per epoch in turn.")
    student: ModelConfig = Field(default_factory=lambda: ModelConfig(kind="small", arch="textcnn"), description="cross: the student model.")
    loss: Literal["kl", "ce", "mse"] = Field("kl", description="Soft loss against the teacher: KL or soft CE with temperature, or MSE on logits.")
    temperature: float = Field(4.0, gt=0, description="Softmax temperature of the soft loss (kl/ce).")
    alpha: float = Field(0.9, ge=0, le=1, description="Weight of the soft loss; 1 - alpha weighs the hard-label loss.")
    student_layers: list[int] = Field(default_factory=lambda: [1, 3, 5], description="self: teacher layers (0-based) copied into the student, one per student layer.")
    intermediate: list[Literal["hidden", "attention"]] = Field(default_factory=lambda: ["hidden"], description="self: intermediate matches between mapped layers.")
    train: TrainConfig = Field(default_factory=lambda: TrainConfig(epochs=10, lr=2e-3, early_stopping_patience=3), description="Training options of the student.")


class PruneConfig(Section):
    mode: Literal["none", "vocabulary", "transformer", "pipeline"] = Field("none", description="TextPruner: vocabulary (tokens seen in the data), transformer (heads + FFN) or pipeline (both).")
    target_num_heads: Optional[int] = Field(None, ge=1, description="transformer: attention heads kept per layer (default: 2/3 of them).")
    target_ffn_size: Optional[int] = Field(None, ge=1, description="transformer: FFN neurons kept per layer (default: 2/3 of them).")
    iterations: int = Field(4, ge=1, description="transformer: pruning iterations (importance re-estimated each time).")


class ExportConfig(Section):
    onnx: bool = Field(False, description="Export the final model(s) to ONNX and check parity.")
    int8: bool = Field(False, description="Also write a dynamically quantized int8 ONNX model.")
    max_int8_drop: float = Field(0.01, ge=0, le=1, description="Largest macro-F1 drop of int8 against ONNX fp32 (evaluation split) at which serve --onnx uses int8; past it, fp32.")
    hf: bool = Field(False, description="Also write every hf-kind model of the run (fold models, student, pruned) as a Hugging Face folder, export/hf/<name>/.")


TOKEN_ENV = "ORCHESTRATOR_SERVE_TOKEN"


def _loopback(host: str) -> bool:
    import ipaddress

    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class AutoscalingConfig(Section):
    """Ray Serve's ``autoscaling_config`` for the deployment (the names are Serve's)."""

    min_replicas: int = Field(1, ge=0, description="Fewest replicas (0: scale to zero when idle).")
    max_replicas: int = Field(2, ge=1, description="Most replicas.")
    target_ongoing_requests: Optional[float] = Field(None, gt=0, description="Requests in flight per replica that Serve scales to keep (default: serve.max_batch_size, a full batch each).")
    upscale_delay_s: float = Field(30.0, ge=0, description="Load must stay high this long before a replica is added.")
    downscale_delay_s: float = Field(600.0, ge=0, description="Load must stay low this long before a replica is removed.")

    @model_validator(mode="after")
    def _ordered(self) -> "AutoscalingConfig":
        if self.max_replicas < self.min_replicas:
            raise ValueError(f"serve.autoscaling: max_replicas {self.max_replicas} is below min_replicas {self.min_replicas}")
        return self


class ServeConfig(Section):
    enabled: bool = Field(False, description="Deploy the model on Ray Serve at the end of run.")
    host: str = Field("127.0.0.1", description="HTTP bind address.")
    port: int = Field(8000, ge=1, le=65535, description="HTTP port.")
    max_batch_size: int = Field(32, ge=1, description="Largest batch of texts a replica runs at once.")
    batch_wait_timeout_s: float = Field(0.01, ge=0, description="How long an idle replica waits for a batch to fill (a busy one fills the next batch while it runs).")
    chunk_size: int = Field(8, ge=1, description="Most texts per forward pass: a batch is sorted by length and cut into passes of similar length (trainables/inference.py length_chunks), so a long text pads only its own pass.")
    replicas: int = Field(1, ge=1, description="Deployment replicas (with autoscaling: the replicas it starts with).")
    gpus_per_replica: float = Field(0.0, ge=0, description="GPUs each replica reserves; above 0 the torch models run on CUDA (ONNX exports stay on CPU).")
    ingress: Literal["proxy", "haproxy"] = Field("proxy", description="What takes the HTTP requests: Ray Serve's Python proxy, or haproxy: Ray Serve's high-throughput mode (HAProxy forwarding to replicas that take HTTP themselves; HTTP only), chosen when a local Ray starts (a cluster: docs/serving.md).")
    autoscaling: Optional[AutoscalingConfig] = Field(None, description="Scale replicas with the load (Ray Serve's autoscaling_config); off when unset.")
    token: Optional[str] = Field(None, exclude=True, repr=False, description="Bearer token required by /predict and /info: never read from the YAML nor written anywhere; it comes from --token, $ORCHESTRATOR_SERVE_TOKEN or token_file.")
    token_file: Optional[str] = Field(None, description="File holding the bearer token (relative to the YAML file); used when neither --token nor $ORCHESTRATOR_SERVE_TOKEN is given.")
    insecure: bool = Field(False, description="Allow serving on a non-loopback host without a token.")

    @model_validator(mode="after")
    def _replicas_in_range(self) -> "ServeConfig":
        scale = self.autoscaling
        if scale and not scale.min_replicas <= self.replicas <= scale.max_replicas:
            raise ValueError(f"serve.replicas: {self.replicas} is outside serve.autoscaling's {scale.min_replicas}..{scale.max_replicas} "
                             "(with autoscaling it is the replica count it starts with)")
        return self

    def deployment_options(self) -> dict:
        """The Classifier deployment's Serve options (``.options(...)`` and a Serve config's deployment)."""
        options = {
            "max_ongoing_requests": 2 * self.max_batch_size,  # a full batch queues while the previous one runs
            # a replica whose model process died answers 503 until Serve replaces it: check every 2 s, not 10
            "health_check_period_s": 2.0,
            "user_config": {"max_batch_size": self.max_batch_size, "batch_wait_timeout_s": self.batch_wait_timeout_s,
                            "chunk_size": self.chunk_size},
        }
        if self.autoscaling is None:
            return {"num_replicas": self.replicas, **options}
        scale = self.autoscaling.model_dump()
        scale["target_ongoing_requests"] = scale["target_ongoing_requests"] or self.max_batch_size
        return {"autoscaling_config": {**scale, "initial_replicas": self.replicas}, **options}

    def with_token(self, flag: Optional[str] = None) -> "ServeConfig":
        """A copy holding the token: ``flag`` (--token), else $ORCHESTRATOR_SERVE_TOKEN, else token_file's contents."""
        token = flag or os.environ.get(TOKEN_ENV) or None
        if token is None and self.token_file:
            path = Path(self.token_file)
            if not path.is_file():
                raise ConfigError(f"serve.token_file: {path}: no such file")
            token = path.read_text(encoding="utf-8").strip() or None
            if token is None:
                raise ConfigError(f"serve.token_file: {path} is empty")
        return self.model_copy(update={"token": token})

    def check_exposure(self) -> None:
        """Refuse an open service (no token: call it on ``with_token()``'s copy) on a non-loopback host
        unless ``insecure``."""
        if not (self.insecure or self.token or _loopback(self.host)):
            raise ConfigError(f"serve.host: {self.host} is reachable from other machines and no token is set; pass "
                              f"--token, set ${TOKEN_ENV} or serve.token_file, or --insecure to serve it open")


class TrackingConfig(Section):
    mlflow: bool = Field(False, description="Track the run in MLflow: one parent run per experiment, one child run per trial (config × fold), the test metrics and report.html (the 'mlflow' extra).")
    uri: Optional[str] = Field(None, description="MLflow tracking URI (a server, sqlite:///file.db, ...); default a local SQLite store in the run directory, mlruns/mlflow.db. Credentials come from MLflow's own environment variables, never from here.")
    experiment: Optional[str] = Field(None, description="MLflow experiment name (default: the run's name).")

    @field_validator("uri")
    @classmethod
    def _no_credentials(cls, uri: Optional[str]) -> Optional[str]:
        from urllib.parse import urlparse

        if uri and (urlparse(uri).password or urlparse(uri).username):
            raise ValueError("tracking.uri: the URI holds credentials, which would be written into the run's manifest; "
                             "set MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD (or _TOKEN) instead")
        return uri


class ExperimentConfig(Section):
    name: str = Field("experiment", pattern=r"^[A-Za-z0-9_.-]+$", description="Run name: artifacts go to <runs_dir>/<name>.")
    seed: int = Field(42, description="Seed of splits, initialisation and sampling.")
    runs_dir: str = Field("runs", description="Where run directories are created (relative to the working directory).")
    data: DataConfig = Field(default_factory=lambda: DataConfig(source="bbc_news"), description="Data sources and preprocessing.")
    model: ModelConfig = Field(default_factory=ModelConfig, description="Model to train.")
    train: TrainConfig = Field(default_factory=TrainConfig, description="Training loop and tricks.")
    cv: CVConfig = Field(default_factory=CVConfig, description="Cross-validation.")
    tune: TuneConfig = Field(default_factory=TuneConfig, description="Hyperparameter search.")
    distill: DistillConfig = Field(default_factory=DistillConfig, description="Knowledge distillation into a student.")
    prune: PruneConfig = Field(default_factory=PruneConfig, description="TextPruner pruning of the final HF model.")
    export: ExportConfig = Field(default_factory=ExportConfig, description="ONNX export.")
    serve: ServeConfig = Field(default_factory=ServeConfig, description="Ray Serve deployment.")
    tracking: TrackingConfig = Field(default_factory=TrackingConfig, description="Experiment tracking (MLflow).")

    @model_validator(mode="after")
    def _cross_checks(self) -> "ExperimentConfig":
        multilabel_losses = {"bce", "zlpr"}
        if self.data.multilabel and self.train.loss not in multilabel_losses:
            raise ValueError(f"train.loss: {self.train.loss!r} is single-label; with data.multilabel=true use one of {sorted(multilabel_losses)}")
        if not self.data.multilabel and self.train.loss in multilabel_losses:
            raise ValueError(f"train.loss: {self.train.loss!r} needs data.multilabel=true")
        if self.model.kind == "t5" and self.data.multilabel:
            raise ValueError("model.kind: 't5' scores one class name per text; data.multilabel=true needs kind hf or small")
        if self.train.loss == "seq2seq" and self.model.kind != "t5":
            raise ValueError(f"train.loss: 'seq2seq' needs model.kind=t5 (class-name log-probabilities), not {self.model.kind!r}")
        return self

    def hash(self) -> str:
        """Stable short hash of the resolved config."""
        return config_hash(self.model_dump(mode="json"))

    def train_key(self) -> str:
        """Hash of what defines the fold models; later stages (distill, prune, export, serve) are outside it."""
        dumped = self.model_dump(mode="json")
        dumped["cv"] = {k: v for k, v in dumped["cv"].items() if k not in ENSEMBLE_KEYS}
        return config_hash({k: dumped[k] for k in TRAIN_SECTIONS})

    def ensemble_key(self) -> str:
        """Hash of what defines the run's ensemble: the fold models and how they are chosen (the
        key of evaluation and of every later stage)."""
        return config_hash([self.train_key(), *(getattr(self.cv, k) for k in ENSEMBLE_KEYS)])


def config_hash(obj: Any) -> str:
    """sha256 of a JSON-able object with sorted keys, first 16 hex digits."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


_TYPE_WORDS = {
    "float_parsing": "a number", "float_type": "a number", "int_parsing": "an integer", "int_type": "an integer",
    "int_from_float": "an integer", "bool_parsing": "true or false", "bool_type": "true or false",
    "string_type": "a string", "dict_type": "a mapping", "list_type": "a list", "model_type": "a mapping",
}


def _fields_at(path: tuple, root: type[BaseModel] = ExperimentConfig) -> list[str]:
    model: Any = root
    for part in path:
        field = model.model_fields.get(part) if isinstance(part, str) else None
        ann = getattr(field, "annotation", None)
        if not (isinstance(ann, type) and issubclass(ann, BaseModel)):
            return []
        model = ann
    return list(model.model_fields)


def _format_error(err: dict) -> str:
    loc = tuple(p for p in err["loc"] if not (isinstance(p, str) and p.startswith(("function-after", "literal"))))
    key = ".".join(str(p) for p in loc) or "(top level)"
    kind, value = err["type"], err.get("input")
    if kind == "extra_forbidden":
        known = _fields_at(loc[:-1])
        close = difflib.get_close_matches(str(loc[-1]), known, n=1)
        hint = f"; did you mean '{close[0]}'?" if close else (f"; known keys: {', '.join(known)}" if known else "")
        return f"{key}: unknown key{hint}"
    if kind in _TYPE_WORDS:
        return f"{key}: expected {_TYPE_WORDS[kind]}, got {value!r}"
    if kind == "literal_error":
        return f"{key}: expected {err['ctx']['expected']}, got {value!r}"
    if kind == "value_error":
        return str(err["ctx"]["error"])
    return f"{key}: {err['msg']}, got {value!r}"


def parse_config(raw: Any, source: str = "<config>") -> ExperimentConfig:
    """Validate a mapping into an ExperimentConfig, raising ConfigError with a one-line message."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: expected a mapping at the top level, got {type(raw).__name__}")
    try:
        return ExperimentConfig.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        more = f" (and {exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
        raise ConfigError(f"{source}: {_format_error(first)}{more}") from None


def is_uri(path: str) -> bool:
    """A file system URI (s3://, gs://, file://...): kept as written, read through pyarrow's file systems, streamed only."""
    return "://" in str(path)


def load_config(path: str | Path, overrides: Optional[dict[str, Any]] = None) -> ExperimentConfig:
    """Read an experiment YAML; relative data paths are resolved against the YAML's folder."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: no such experiment file")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        where = getattr(exc, "problem_mark", None)
        at = f" at line {where.line + 1}, column {where.column + 1}" if where else ""
        raise ConfigError(f"{path}: malformed YAML{at}: {getattr(exc, 'problem', None) or exc}") from None
    for dotted, value in (overrides or {}).items():
        set_path(raw if isinstance(raw, dict) else {}, dotted, value)
    serve = raw.get("serve") if isinstance(raw, dict) else None
    if isinstance(serve, dict) and serve.get("token") is not None:
        raise ConfigError(f"{path}: serve.token: a token in the experiment would be stored with the run; pass --token, "
                          f"set ${TOKEN_ENV}, or name a file holding it in serve.token_file")
    cfg = parse_config(raw, str(path))
    base = path.resolve().parent
    for key in ("train", "val", "test", "classes_map", "stop_words"):
        value = getattr(cfg.data, key)
        if value is not None and not is_uri(value) and not Path(value).is_absolute():
            setattr(cfg.data, key, str(base / value))
    if cfg.serve.token_file and not Path(cfg.serve.token_file).is_absolute():
        cfg.serve.token_file = str(base / cfg.serve.token_file)
    if cfg.model.pretrained_vectors and not Path(cfg.model.pretrained_vectors).is_absolute():
        cfg.model.pretrained_vectors = str(base / cfg.model.pretrained_vectors)
    return cfg


def set_path(raw: dict, dotted: str, value: Any) -> None:
    """Set raw['a']['b'] = value for dotted 'a.b', creating mappings on the way."""
    *parents, leaf = dotted.split(".")
    node = raw
    for part in parents:
        node = node.setdefault(part, {})
    node[leaf] = value


def with_overrides(cfg: ExperimentConfig, overrides: dict[str, Any]) -> ExperimentConfig:
    """A copy of cfg with dotted-key overrides applied and re-validated (used by tuning)."""
    raw = cfg.model_dump(mode="json")
    for dotted, value in overrides.items():
        set_path(raw, dotted, value)
    return parse_config(raw, "override")
