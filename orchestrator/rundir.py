"""The run directory: layout, manifest.json (config + hash, versions, stage status, metrics).

Everything ``test``, ``predict`` and ``serve`` need lives inside it; nothing outside it.
"""
from __future__ import annotations

import json
import platform
import shutil
import time
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any, Optional

from trainables.atomic import atomic_write_text
from orchestrator.config import ExperimentConfig

MANIFEST = "manifest.json"
PACKAGES = ("torch", "transformers", "ray", "onnxruntime", "scikit-learn", "pyarrow", "pydantic", "textbrewer", "textpruner")


class RunDirError(ValueError):
    """The run directory cannot be used as asked (exists without --resume/--overwrite, or missing)."""


def package_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def write_json(path: Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n")


@dataclass
class RunDir:
    """Paths of one run and its manifest."""

    root: Path

    # ---- layout ----
    @property
    def manifest_path(self) -> Path:
        return self.root / MANIFEST

    @property
    def ray_storage(self) -> Path:
        return (self.root / "ray").resolve()

    def fold_dir(self, fold: int) -> Path:
        return self.root / "folds" / str(fold)

    def model_dir(self, fold: int) -> Path:
        return self.fold_dir(fold) / "model"

    def fold_model_dirs(self) -> list[Path]:
        return sorted((p for p in (self.root / "folds").glob("*/model") if (p / "model.json").is_file()),
                      key=lambda p: int(p.parent.name))

    @property
    def test_dir(self) -> Path:
        return self.root / "test"

    # ---- lifecycle ----
    @classmethod
    def create(cls, cfg: ExperimentConfig, resume: bool = False, overwrite: bool = False) -> "RunDir":
        """Make runs/<name>; an existing one needs resume (same config) or overwrite."""
        root = Path(cfg.runs_dir) / cfg.name
        run = cls(root)
        if root.exists() and any(root.iterdir()):
            if overwrite:
                shutil.rmtree(root)
            elif resume:
                manifest = run.manifest()
                if manifest.get("train_key", cfg.train_key()) != cfg.train_key():
                    raise RunDirError(f"{root}: --resume cannot change what trains the folds (seed, data, model, train, cv, tune); "
                                      "use --overwrite or a new name")
                # later sections may change: their stages rerun, cached ones are skipped
                manifest.update(config=cfg.model_dump(mode="json"), config_hash=cfg.hash())
                write_json(run.manifest_path, manifest)
                return run
            else:
                raise RunDirError(f"{root}: run directory exists; pass --resume to continue it or --overwrite to start over")
        root.mkdir(parents=True, exist_ok=True)
        write_json(run.manifest_path, {
            "name": cfg.name, "config_hash": cfg.hash(), "train_key": cfg.train_key(), "config": cfg.model_dump(mode="json"),
            "versions": package_versions(), "created": time.strftime("%Y-%m-%dT%H:%M:%S"), "stages": {}, "metrics": {},
        })
        return run

    @classmethod
    def open(cls, path: str | Path) -> "RunDir":
        run = cls(Path(path))
        if not run.manifest_path.is_file():
            raise RunDirError(f"{path}: not a run directory (no {MANIFEST})")
        return run

    def manifest(self) -> dict:
        if not self.manifest_path.is_file():
            return {}
        return json.loads(self.manifest_path.read_text())

    def config(self) -> ExperimentConfig:
        return ExperimentConfig.model_validate(self.manifest()["config"])

    def update(self, stage: Optional[str] = None, status: Optional[str] = None, metrics: Optional[dict] = None, **info: Any) -> None:
        """Record a stage's status/info and merge metrics into the manifest (atomically)."""
        manifest = self.manifest()
        if stage is not None:
            entry = manifest.setdefault("stages", {}).setdefault(stage, {})
            if status is not None:
                entry.update(status=status, updated=time.strftime("%Y-%m-%dT%H:%M:%S"))
            entry.update(info)
        if metrics:
            manifest.setdefault("metrics", {}).update(metrics)
        write_json(self.manifest_path, manifest)

    def stage(self, name: str) -> dict:
        return self.manifest().get("stages", {}).get(name, {})
