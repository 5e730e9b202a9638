"""The optional parts of the install (pyproject's extras): which modules each one provides, and one
clear error naming the extra when a config or command needs one that is not installed."""

from __future__ import annotations

import importlib.util

from orchestrator.config import ConfigError

EXTRAS = {
    "serve": ("fastapi", "starlette", "uvicorn"),
    "compress": ("textbrewer", "textpruner", "onnx", "onnxruntime"),
    "zh": ("jieba",),
    "mlflow": ("mlflow", "sqlalchemy", "alembic"),  # the last two: MLflow's SQLite store
}


class MissingExtra(ConfigError):
    """A feature was asked for whose extra is not installed."""


def missing_modules(extra: str, modules: tuple[str, ...] | None = None) -> list[str]:
    """The modules of ``extra`` (or the given subset of them) that cannot be imported here."""
    return [m for m in modules or EXTRAS[extra] if importlib.util.find_spec(m) is None]


def require(extra: str, purpose: str, modules: tuple[str, ...] | None = None) -> None:
    """Raise MissingExtra, naming the extra and how to install it, unless its modules are importable."""
    missing = missing_modules(extra, modules)
    if missing:
        raise MissingExtra(f"{purpose} needs the '{extra}' extra ({', '.join(missing)} not installed): "
                           f"pip install 'text-orchestrator[{extra}]'")
