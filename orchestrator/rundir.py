"""The run directory: every path of its layout (README, "Run directory"), manifest.json (config +
hash, versions, stage status, metrics) and the saved data splits.

Everything ``test``, ``predict`` and ``serve`` need lives inside it; nothing outside it. No other
module joins a path to a run's root: they ask ``RunDir``.
"""
from __future__ import annotations

import functools
import json
import os
import platform
import shutil
import time
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any, Optional

from orchestrator.config import ExperimentConfig
from orchestrator.data import Split
from trainables.atomic import atomic_write_text

MANIFEST = "manifest.json"
SPLITS = ("train", "val", "test")
REPORT_FILES = "report_files"  # report.html's plots, referenced by relative path
STAGE_DIRS = ("distill", "prune", "export")  # each post-training stage writes only its own folder
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


@dataclass(frozen=True)
class Member:
    """One model of the run's ensemble: its name (``fold_<k>`` for the best config's folds,
    ``config<r>_fold_<k>`` for the config ranked r by ensemble selection; also its export folder's
    name), its model directory and its weight in the ensemble."""

    name: str
    model_dir: Path
    weight: float


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
        """Ray Tune's experiment and every TorchTrainer's checkpoints (absolute: Ray wants it so)."""
        return (self.root / "ray").resolve()

    def ray_run(self, name: str) -> Path:
        """A Ray Train or Tune run stored under ``ray_storage`` as ``name``."""
        return self.ray_storage / name

    @property
    def trials_json(self) -> Path:
        return self.root / "trials.json"

    @property
    def racing_json(self) -> Path:
        """racing.json: each config's fold scores and status in a racing search (tune.racing)."""
        return self.root / "racing.json"

    @property
    def mlflow_dir(self) -> Path:
        """mlruns/: the default MLflow store (mlflow.db) and its artifacts (tracking.mlflow)."""
        return self.root / "mlruns"

    @property
    def engine_log(self) -> Path:
        """logs/driver.log: everything Ray, Tune, Train, transformers and warnings printed in the
        driver, worker output included (Ray forwards it there)."""
        return self.root / "logs" / "driver.log"

    def trial_dir(self, trial_id: str) -> Path:
        """A Tune trial's fold: its best model (``model/``), history.json, metrics.csv, tensorboard/."""
        return self.root / "trials" / trial_id

    def trial_stop_file(self, trial_id: str) -> Path:
        """Written when Tune stops the trial mid-fold (a scheduler's decision): its workers end there."""
        return self.trial_dir(trial_id) / "STOP"

    def fold_dir(self, fold: int) -> Path:
        """Fold ``fold`` of the chosen config: a link to the trial folder that trained it."""
        return self.root / "folds" / str(fold)

    def model_dir(self, fold: int) -> Path:
        return self.fold_dir(fold) / "model"

    def fold_model_dirs(self) -> list[Path]:
        """The best config's fold models (folds/<k>/model), in fold order."""
        return sorted((p for p in (self.root / "folds").glob("*/model") if (p / "model.json").is_file()),
                      key=lambda p: int(p.parent.name))

    @property
    def ensemble_json(self) -> Path:
        """ensemble.json: the members of the run's ensemble and their weights (ensemble selection)."""
        return self.root / "ensemble.json"

    def config_oof(self, rank: int) -> Path:
        """oof/config_<rank>.npy: out-of-fold logits of the config ranked ``rank`` in trials.json."""
        return self.root / "oof" / f"config_{rank}.npy"

    def ensemble_members(self) -> list[Member]:
        """The models test, predict, serve, distill and export use as "the ensemble": ensemble.json's
        members, else the best config's folds with equal weights."""
        if self.ensemble_json.is_file():
            spec = json.loads(self.ensemble_json.read_text())
            return [Member(m["name"], self.trial_dir(m["trial_id"]) / "model", float(m["weight"])) for m in spec["members"]]
        dirs = self.fold_model_dirs()
        return [Member(f"fold_{d.parent.name}", d, 1.0 / len(dirs)) for d in dirs]

    @property
    def test_dir(self) -> Path:
        return self.root / "test"

    @property
    def predictions_dir(self) -> Path:
        """A streamed run's OOF and test predictions, Parquet partitioned by split (orchestrator/stream/predictions.py)."""
        return self.root / "predictions"

    @property
    def oof_logits(self) -> Path:
        return self.root / "oof_logits.npy"

    @property
    def oof_metrics(self) -> Path:
        return self.root / "oof_metrics.json"

    @property
    def thresholds_json(self) -> Path:
        return self.root / "thresholds.json"

    def model_sources(self) -> dict[str, Path]:
        """Every model directory of the run by name (the ensemble's members, student, pruned: the last
        two only while their stage is on, since a stage switched off leaves its old model behind)."""
        cfg = self.config()
        sources = {m.name: m.model_dir for m in self.ensemble_members()}
        for name, stage, on in (("student", "distill", cfg.distill.enabled), ("pruned", "prune", cfg.prune.mode != "none")):
            if on and (self.stage_model_dir(stage) / "model.json").is_file():
                sources[name] = self.stage_model_dir(stage)
        return sources

    def stage_dir(self, stage: str) -> Path:
        """distill/, prune/ or export/: all a post-training stage writes."""
        if stage not in STAGE_DIRS:
            raise ValueError(f"no stage folder {stage!r}; expected one of {STAGE_DIRS}")
        return self.root / stage

    def stage_model_dir(self, stage: str) -> Path:
        """The model a stage produced (distill/model, prune/model)."""
        return self.stage_dir(stage) / "model"

    def export_dir(self, name: str) -> Path:
        """export/<name>/: the ONNX export of model ``name`` (fold_<k>, student, pruned)."""
        return self.stage_dir("export") / name

    def hf_export_dir(self, name: str) -> Path:
        """export/hf/<name>/: model ``name`` as a Hugging Face folder (``orchestrator export --format hf``)."""
        return self.stage_dir("export") / "hf" / name

    @property
    def int8_check(self) -> Path:
        """export/int8_check.json: each export's int8 macro-F1 against fp32 and whether it may serve."""
        return self.stage_dir("export") / "int8_check.json"

    @property
    def measurements_dir(self) -> Path:
        """One file per measured model (orchestrator/evaluate/measure.py)."""
        return self.root / "measurements"

    @property
    def report_html(self) -> Path:
        return self.root / "report.html"

    @property
    def report_files(self) -> Path:
        return self.root / REPORT_FILES

    # ---- data splits ----
    @property
    def data_dir(self) -> Path:
        return self.root / "data"

    def split_path(self, name: str) -> Path:
        if name not in SPLITS:
            raise ValueError(f"no split {name!r}; expected one of {SPLITS}")
        return self.data_dir / f"{name}.jsonl"

    def has_split(self, name: str) -> bool:
        return self.split_path(name).is_file()

    def save_split(self, name: str, split: Split, classes: list[str], multilabel: bool) -> None:
        """A split as JSONL of {text, label(s) by name}: test/predict read it without the source files."""
        def names(label):
            return [classes[i] for i in label] if multilabel else classes[label]
        lines = (json.dumps({"text": t, "label": names(l)}, ensure_ascii=False) for t, l in zip(split.texts, split.labels))
        path = self.split_path(name)
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, "\n".join(lines) + "\n")

    def load_split(self, name: str) -> Split:
        data = self.stage("data")
        return _read_split(str(self.split_path(name).resolve()), _stamp(self.split_path(name)),
                           tuple(data["classes"]), data["multilabel"])

    @property
    def evaluation_split_name(self) -> str:
        """The run's honest evaluation split: test, else val (single-model runs)."""
        return "test" if self.has_split("test") else "val"

    def evaluation_split(self) -> Split:
        """``load_split(evaluation_split_name)``, read once per process (and again only if the file changes)."""
        return self.load_split(self.evaluation_split_name)

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

    def fold_view(self, fold: int, root: Path) -> "RunDir":
        """A run directory at ``root`` whose only fold (0) is this run's fold ``fold``: the manifest
        copied, the data and the fold linked. Stages run on it write there, not here."""
        root.mkdir(parents=True)
        view = RunDir(root)
        shutil.copy(self.manifest_path, view.manifest_path)
        view.data_dir.symlink_to(self.data_dir.resolve())
        view.fold_dir(0).parent.mkdir()
        view.fold_dir(0).symlink_to(self.fold_dir(fold).resolve())
        return view

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


def _stamp(path: Path) -> tuple[int, int]:
    stat = os.stat(path)
    return stat.st_mtime_ns, stat.st_size


@functools.lru_cache(maxsize=8)
def _read_split(path: str, stamp: tuple[int, int], classes: tuple[str, ...], multilabel: bool) -> Split:
    """A saved split (cached on its path and file stamp: every reader in a process shares one copy)."""
    index = {c: i for i, c in enumerate(classes)}
    rows = [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]
    labels = [sorted(index[n] for n in r["label"]) if multilabel else index[r["label"]] for r in rows]
    return Split([r["text"] for r in rows], labels)
