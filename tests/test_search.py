"""The YAML search space -> Ray Tune: distributions, grid size, Repeater over K folds (no Ray start)."""
from __future__ import annotations

import pytest
from ray.tune.search import Repeater

from orchestrator.config import ConfigError, load_config, with_overrides
from orchestrator.train.tune import build_scheduler, build_search, config_count, parse_distribution
from tests.conftest import ROOT

SMOKE = ROOT / "experiments" / "smoke.yaml"


def cfg_with(**overrides):
    return with_overrides(load_config(SMOKE), overrides)


@pytest.mark.parametrize("spec,check", [
    ("uniform(0.1, 0.5)", lambda v: 0.1 <= v <= 0.5),
    ("loguniform(1e-5, 1e-3)", lambda v: 1e-5 <= v <= 1e-3),
    ("randint(2, 5)", lambda v: v in (2, 3, 4)),
    ("choice([16, 32])", lambda v: v in (16, 32)),
    ("grid([0.1, 0.2, 0.3])", lambda v: v in (0.1, 0.2, 0.3)),
])
def test_distributions_sample_in_range(spec, check):
    domain = parse_distribution("train.lr", spec)
    assert all(check(domain.sample()) for _ in range(20))


def test_bad_distribution_names_the_key():
    with pytest.raises(ConfigError, match=r"tune.search.train.lr: expected uniform"):
        parse_distribution("train.lr", "normal(0, 1)")
    with pytest.raises(ConfigError, match=r"tune.search.train.lr: cannot read the arguments"):
        parse_distribution("train.lr", "uniform(a, b)")


def test_grid_searches_every_point_on_every_fold():
    cfg = cfg_with(**{"cv.folds": 3, "tune.searcher": "grid",
                      "tune.search": {"train.lr": "grid([0.001, 0.003])", "train.batch_size": "choice([16, 32, 64])"}})
    assert config_count(cfg.tune) == 6
    searcher, space, num_samples = build_search(cfg)
    assert isinstance(searcher, Repeater) and searcher.repeat == 3 and space == {}
    assert num_samples == 6 * 3


def test_random_search_runs_samples_configs_and_no_search_runs_one():
    cfg = cfg_with(**{"cv.folds": 2, "tune.samples": 4, "tune.search": {"train.lr": "loguniform(1e-4, 1e-2)"}})
    assert config_count(cfg.tune) == 4 and build_search(cfg)[2] == 8
    plain = cfg_with(**{"cv.folds": 5})
    assert config_count(plain.tune) == 1
    searcher, space, num_samples = build_search(plain)
    assert searcher is None and num_samples == 1 and len(space) == 1  # a grid over the 5 fold indices


@pytest.mark.parametrize("searcher", ["random", "optuna", "grid"])
def test_list_valued_choices_are_suggested_whole_by_every_searcher(searcher, recwarn):
    cfg = cfg_with(**{"cv.folds": 2, "tune.samples": 4, "tune.searcher": searcher,
                      "tune.search": {"model.kernel_sizes": "choice([[2, 3], [3, 4, 5]])", "train.lr": "choice([0.01, 0.02])"}})
    search_alg = build_search(cfg)[0]
    suggested = [search_alg.suggest(f"t{i}") for i in range(8)]
    assert {tuple(s["model.kernel_sizes"]) for s in suggested} == {(2, 3), (3, 4, 5)}
    assert all(with_overrides(cfg, {"model.kernel_sizes": s["model.kernel_sizes"]}).model.kernel_sizes == s["model.kernel_sizes"]
               for s in suggested)
    assert not [w for w in recwarn if "persistent storage" in str(w.message)]


def test_grid_rejects_continuous_values_and_unknown_keys():
    with pytest.raises(ConfigError, match="tune.searcher: grid needs grid"):
        build_search(cfg_with(**{"tune.searcher": "grid", "tune.search": {"train.lr": "uniform(0.1, 0.2)"}}))
    with pytest.raises(ConfigError, match=r"tune.search.train.learning_rate"):
        build_search(cfg_with(**{"tune.search": {"train.learning_rate": "uniform(0.1, 0.2)"}}))


def test_asha_is_refused_with_folds():
    with pytest.raises(ConfigError, match="tune.scheduler: 'asha' stops single trials"):
        build_scheduler(cfg_with(**{"cv.folds": 2, "tune.scheduler": "asha"}))
    assert build_scheduler(cfg_with(**{"cv.folds": 1, "tune.scheduler": "asha"})) is not None
