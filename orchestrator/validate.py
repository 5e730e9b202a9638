"""Everything about an experiment that can be checked before anything is written: the data (and its
classes), the fold plan, the search space and scheduler, the distill student's options and every
pretrained model name. ``run``, ``info`` and ``check`` share it; it raises ConfigError or DataError
with one line naming the file or key."""
from __future__ import annotations

import os
import socket
from pathlib import Path
from urllib.parse import urlparse

import numpy as np

from orchestrator.config import ConfigError, ExperimentConfig, with_overrides
from orchestrator.data import DataError, Dataset, fold_plan, label_array, load_dataset
from orchestrator.extras import require
from orchestrator.stages.distill import student_config
from orchestrator.train.tune import build_scheduler, parse_distribution, search_space
from trainables.config import ModelConfig
from trainables.models.small import vector_dim
from trainables.text.vocab import has_cjk
from trainables.pretrained import BUILTIN_ALIASES, resolve_pretrained


def validate(cfg: ExperimentConfig) -> Dataset:
    """The experiment's data, once every check has passed."""
    check_extras(cfg)
    dataset = load_dataset(cfg.data, cfg.seed)
    check_word_tokens(cfg, dataset)
    check_classes(dataset, cfg.data.train or cfg.data.source)
    fold_plan(dataset, cfg.cv.folds, cfg.seed)  # K stratified folds need K rows of every class
    check_settings(cfg)
    check_losses(cfg, dataset)
    return dataset


def check_settings(cfg: ExperimentConfig) -> None:
    """The checks that need no data: search space, racing, scheduler, model names, student, serving."""
    search_space(cfg.tune, cfg)
    check_racing(cfg)
    build_scheduler(cfg)
    for key, model in _models(cfg):
        check_model_name(model, key)
        check_vectors(model, key)
    if cfg.distill.enabled:
        student_config(cfg)
    if cfg.serve.enabled:
        cfg.serve.with_token().check_exposure()


def _models(cfg: ExperimentConfig) -> list[tuple[str, ModelConfig]]:
    """(key, model) of every model the experiment trains: the model and, when distilling, the student."""
    return [("model", cfg.model), *((("distill.student", cfg.distill.student),) if cfg.distill.enabled else ())]


def check_racing(cfg: ExperimentConfig) -> None:
    """Racing needs configs to race and folds left after ``min_folds``."""
    racing = cfg.tune.racing
    if not racing.enabled:
        return
    if not cfg.tune.search:
        raise ConfigError("tune.racing.enabled: racing compares configs; give tune.search a space to search")
    if cfg.cv.folds <= racing.min_folds:
        raise ConfigError(f"tune.racing.min_folds: {racing.min_folds} needs cv.folds > {racing.min_folds} (cv.folds is {cfg.cv.folds})")


def check_extras(cfg: ExperimentConfig) -> None:
    """The optional installs the config's stages use are present (MissingExtra names the one that is not)."""
    if cfg.distill.enabled and cfg.distill.mode == "self":
        require("compress", "distill.mode: self (TextBrewer)", ("textbrewer",))
    if cfg.prune.mode != "none":
        require("compress", f"prune.mode: {cfg.prune.mode} (TextPruner)", ("textpruner",))
    if cfg.export.onnx:
        require("compress", "export.onnx (ONNX and ONNX Runtime)", ("onnx", "onnxruntime"))
    if cfg.serve.enabled:
        require("serve", "serve.enabled (Ray Serve over HTTP)")
    if cfg.tracking.mlflow:
        local = cfg.tracking.uri is None or cfg.tracking.uri.startswith("sqlite:")
        require("mlflow", "tracking.mlflow (MLflow)", ("mlflow", "sqlalchemy", "alembic") if local else ("mlflow",))


def check_word_tokens(cfg: ExperimentConfig, dataset: Dataset) -> None:
    """Word tokens of Chinese (CJK) text come from jieba: the 'zh' extra."""
    keys = [key for key, model in _models(cfg) if model.kind == "small" and model.tokens == "word"]
    if keys and any(has_cjk(text) for split in (dataset.train, dataset.val, dataset.test) if split for text in split.texts):
        require("zh", f"{keys[0]}.tokens: word on CJK text (jieba)", ("jieba",))


def check_classes(dataset: Dataset, source: str) -> None:
    """The training pool (train + val) holds at least two classes."""
    seen = sorted({i for split in (dataset.train, dataset.val) for label in split.labels
                   for i in (label if dataset.multilabel else [label])})
    if len(seen) < 2:
        names = ", ".join(repr(dataset.classes[i]) for i in seen) or "none"
        raise DataError(f"{source}: the training rows have {len(seen)} class(es) ({names}); a classifier needs at least 2")


def check_losses(cfg: ExperimentConfig, dataset: Dataset) -> None:
    """The training loss can be built for this data (loss kind vs multi-label, class weights' length,
    label smoothing): for ``train``, every value ``tune.search`` tries for a ``train.*`` key, and the
    distill student's ``distill.train``."""
    from trainables.tricks.losses import build_loss

    labels = label_array(dataset.train.labels, len(dataset.classes), dataset.multilabel)
    counts = (labels.sum(0) if dataset.multilabel else np.bincount(labels, minlength=len(dataset.classes))).astype(int).tolist()
    candidates = [("", cfg.train)]
    for key, spec in cfg.tune.search.items():
        domain = parse_distribution(key, spec)
        if key.startswith("train.") and hasattr(domain, "categories"):
            candidates += [(f"tune.search.{key} = {value!r}: ", with_overrides(cfg, {key: value}).train)
                           for value in domain.categories]
    if cfg.distill.enabled:
        candidates.append(("distill.", cfg.distill.train))
    for prefix, train in candidates:
        try:
            build_loss(train, len(dataset.classes), dataset.multilabel, counts)
        except ValueError as exc:
            raise ConfigError(f"{prefix}{exc}") from None


def check_model_name(model: ModelConfig, key: str) -> None:
    """An hf/t5 ``model.name`` is a built-in alias, a local model folder, or a hub id that can be
    loaded now (cached, or reachable): fail fast, naming what was tried."""
    if model.kind not in ("hf", "t5"):
        return
    try:
        path = resolve_pretrained(model.name)
    except FileNotFoundError as exc:
        raise ConfigError(f"{key}.name: {exc}".replace("model.name: ", "")) from None
    if Path(path).is_dir():
        if not (Path(path) / "config.json").is_file():
            raise ConfigError(f"{key}.name: {path} is a folder without config.json (not a transformers model folder)")
        return
    tried = f"not a built-in alias ({', '.join(sorted(BUILTIN_ALIASES))}), not a local folder"
    from transformers import AutoConfig

    try:
        AutoConfig.from_pretrained(path, local_files_only=True)
        return
    except (OSError, ValueError):
        pass
    if not _hub_reachable():
        raise ConfigError(f"{key}.name: {model.name!r} is {tried}, not in the local Hugging Face cache, and the hub "
                          "cannot be reached (offline)")
    try:
        AutoConfig.from_pretrained(path)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{key}.name: {model.name!r} is {tried}, and the hub has no such model "
                          f"({str(exc).splitlines()[0][:160]})") from None


def check_vectors(model: ModelConfig, key: str) -> None:
    """A small model's ``pretrained_vectors`` file exists and its vectors have ``embedding_dim`` values
    (read from its first line only: the file may be large)."""
    if model.kind != "small" or not model.pretrained_vectors:
        return
    path = Path(model.pretrained_vectors)
    if not path.is_file():
        raise ConfigError(f"{key}.pretrained_vectors: {path}: no such file")
    try:
        with path.open(encoding="utf-8") as f:
            first = next((line.rstrip() for line in f if line.strip()), "")
    except UnicodeDecodeError:
        raise ConfigError(f"{key}.pretrained_vectors: {path} is not UTF-8 text") from None
    dim, _ = vector_dim(first)
    if dim != model.embedding_dim:
        raise ConfigError(f"{key}.pretrained_vectors: {path} has {dim}-dimensional vectors (line 1), "
                          f"{key}.embedding_dim is {model.embedding_dim}")


def _hub_reachable() -> bool:
    """Whether the Hugging Face hub's host resolves (a quick answer where no network is: no retries)."""
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE or any(os.environ.get(v, "").lower() in ("1", "true", "yes") for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")):
        return False
    try:
        socket.getaddrinfo(urlparse(constants.ENDPOINT).hostname, 443)
    except OSError:
        return False
    return True
