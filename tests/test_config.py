"""The experiment schema: defaults, key-path errors, did-you-mean, every shipped YAML validates."""
from pathlib import Path

import pytest
from pydantic import BaseModel

from orchestrator.config import ConfigError, ExperimentConfig, load_config, parse_config, with_overrides

EXPERIMENTS = sorted((Path(__file__).parents[1] / "experiments").glob("*.yaml"))


def test_defaults_are_complete_and_documented():
    cfg = ExperimentConfig()
    assert cfg.data.source == "bbc_news" and cfg.model.name == "minilm-l6"
    undocumented = []
    sections = [ExperimentConfig] + [type(v) for v in vars(cfg).values() if isinstance(v, BaseModel)]
    sections += [type(cfg.data.clean)]
    for section in sections:
        undocumented += [f"{section.__name__}.{k}" for k, f in section.model_fields.items() if not f.description]
    assert undocumented == []


@pytest.mark.parametrize("path", EXPERIMENTS, ids=lambda p: p.name)
def test_every_shipped_experiment_validates(path):
    cfg = load_config(path)
    assert cfg.name == path.stem
    for key in ("train", "val", "test", "stop_words", "classes_map"):
        value = getattr(cfg.data, key)
        assert value is None or Path(value).is_file(), f"{path.name}: data.{key} -> {value} missing"


def test_type_error_names_key_path():
    with pytest.raises(ConfigError) as err:
        parse_config({"train": {"lr": "fast"}}, "x.yaml")
    assert str(err.value) == "x.yaml: train.lr: expected a number, got 'fast'"


def test_unknown_key_did_you_mean():
    with pytest.raises(ConfigError, match=r"train.epoch: unknown key; did you mean 'epochs'\?"):
        parse_config({"train": {"epoch": 3}})
    with pytest.raises(ConfigError, match=r"modle: unknown key; did you mean 'model'\?"):
        parse_config({"modle": {}})


def test_literal_error_lists_choices():
    with pytest.raises(ConfigError, match=r"train.optimizer: expected 'adamw', 'adam', 'sgd' or 'adafactor', got 'lion'"):
        parse_config({"train": {"optimizer": "lion"}})


def test_cross_checks_name_both_keys():
    with pytest.raises(ConfigError, match=r"train.loss: 'ce' is single-label; with data.multilabel=true"):
        parse_config({"data": {"train": "a.csv", "multilabel": True}})
    with pytest.raises(ConfigError, match=r"data.source='bbc_news' and data.train='a.csv' exclude each other"):
        parse_config({"data": {"source": "bbc_news", "train": "a.csv"}})


def test_malformed_yaml_and_missing_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  lr: [1, 2\n")
    with pytest.raises(ConfigError, match=r"bad.yaml: malformed YAML at line \d+"):
        load_config(bad)
    with pytest.raises(ConfigError, match=r"nope.yaml: no such experiment file"):
        load_config(tmp_path / "nope.yaml")


def test_relative_paths_resolve_against_yaml(tmp_path):
    (tmp_path / "exp").mkdir()
    (tmp_path / "exp" / "e.yaml").write_text("data:\n  train: ../d/train.csv\n")
    cfg = load_config(tmp_path / "exp" / "e.yaml")
    assert Path(cfg.data.train).resolve() == (tmp_path / "d" / "train.csv").resolve()


def test_overrides_revalidate_and_hash_changes():
    cfg = ExperimentConfig()
    other = with_overrides(cfg, {"train.lr": 1e-3})
    assert other.train.lr == 1e-3 and other.hash() != cfg.hash()
    with pytest.raises(ConfigError, match="train.lr"):
        with_overrides(cfg, {"train.lr": "x"})
