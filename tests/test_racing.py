"""Racing configs fold by fold: the elimination rule on synthetic fold scores, the searcher's
breadth-first schedule, a race through real Ray Tune, and folds stopped mid-training (the race,
ASHA) handing their trial process on."""
from __future__ import annotations

import json

import pytest
from ray.tune.search import Searcher

from orchestrator.config import ConfigError, load_config, with_overrides
from orchestrator.train.racing import RACED_OUT, RacingSearcher, raced_out
from orchestrator.train.tune import TRIAL_INDEX
from tests.conftest import ROOT

SMOKE = ROOT / "experiments" / "smoke.yaml"


def _folds(*scores):
    return dict(enumerate(scores))


def test_a_clearly_worse_config_goes_after_min_folds():
    leader, worse = _folds(0.90, 0.91, 0.89), _folds(0.50, 0.52, 0.49)
    assert not raced_out(_folds(0.90), _folds(0.50), min_folds=2, confidence=0.95)  # one fold: never
    assert raced_out({f: leader[f] for f in (0, 1)}, {f: worse[f] for f in (0, 1)}, min_folds=2, confidence=0.95)
    assert not raced_out(leader, worse, min_folds=4, confidence=0.95)  # fewer shared folds than min_folds


def test_an_equal_config_survives_every_fold():
    leader = _folds(0.90, 0.85, 0.93, 0.88, 0.91)
    same = _folds(0.901, 0.849, 0.929, 0.882, 0.909)  # the same quality, fold noise both ways
    for k in range(2, 6):
        assert not raced_out({f: leader[f] for f in range(k)}, {f: same[f] for f in range(k)}, 2, 0.95)
    assert not raced_out(leader, dict(leader), 2, 0.95)  # identical scores: the bound is 0, not above


def test_a_one_fold_fluke_does_not_eliminate():
    leader, fluke = _folds(0.90, 0.90, 0.90), _folds(0.90, 0.70, 0.91)
    assert not raced_out(leader, fluke, 2, 0.95)


def test_the_spread_pooled_over_the_race_eliminates_a_consistent_gap_but_never_a_fluke():
    leader = _folds(0.95, 0.94)
    pool = [_folds(0.93, 0.925), _folds(0.91, 0.905), _folds(0.95, 0.935), _folds(0.92, 0.92)]  # fold noise ~0.005
    behind = _folds(0.935, 0.93)  # 0.015, 0.010 behind: its own 1-df bound cannot tell (t = 6.3)
    assert not raced_out(leader, behind, 2, 0.95)
    assert raced_out(leader, behind, 2, 0.95, pool=pool)  # 4 more degrees of freedom: t = 2.0
    fluke = _folds(0.95, 0.84)  # equal on fold 0, one bad fold
    assert not raced_out(leader, fluke, 2, 0.95, pool=pool)  # judged on its own spread, the larger
    same = _folds(0.955, 0.935)  # equal, noise both ways
    assert not raced_out(leader, same, 2, 0.95, pool=pool)


def test_a_tolerance_races_out_a_near_tie_once_its_folds_show_it_is_not_better_by_that_much():
    leader = _folds(0.90, 0.85, 0.93, 0.88, 0.91)
    same = _folds(0.901, 0.849, 0.929, 0.882, 0.909)  # the equal config that survives every fold at tolerance 0
    first = lambda scores, k: {f: scores[f] for f in range(k)}  # noqa: E731
    # 2 folds: the bound of leader - same is -0.0063 (t(0.95, 1) = 6.3), below -0.004: it stays; 3 folds: -0.0016
    assert not raced_out(first(leader, 2), first(same, 2), 2, 0.95, tolerance=0.004)
    assert raced_out(first(leader, 3), first(same, 3), 2, 0.95, tolerance=0.004)
    better = {f: s + 0.02 for f, s in leader.items()}  # better than the leader by more than the tolerance: never
    assert not any(raced_out(first(leader, k), first(better, k), 2, 0.95, tolerance=0.004) for k in range(2, 6))
    assert not raced_out(_folds(0.90, 0.90, 0.90), _folds(0.90, 0.70, 0.91), 2, 0.95, tolerance=0.004)  # a fluke stays


def test_the_searcher_with_a_tolerance_stops_spending_folds_on_a_tie(tmp_path):
    scores = {0.01: [0.900, 0.910, 0.905, 0.915], 0.02: [0.898, 0.910, 0.906, 0.914]}  # a tie, fold noise 0.001
    for tolerance, trainings in ((0.0, 8), (0.01, 6)):
        base = _Configs([{"train.lr": lr} for lr in scores])
        race = RacingSearcher(base, folds=4, configs=2, min_folds=2, confidence=0.95, fold_key=TRIAL_INDEX,
                              state_file=str(tmp_path / "racing.json"), tolerance=tolerance)
        done = 0
        while isinstance(suggestion := race.suggest(f"t{done}"), dict):
            race.on_trial_complete(f"t{done}", {"val_macro_f1": scores[suggestion["train.lr"]][suggestion[TRIAL_INDEX]]})
            done += 1
        state = json.loads((tmp_path / "racing.json").read_text())
        assert done == trainings and state["tolerance"] == tolerance
        assert [c["status"] for c in state["configs"]] == (["complete", "complete"] if not tolerance else ["complete", RACED_OUT])


def test_the_rule_follows_the_metric_direction():
    assert raced_out(_folds(0.30, 0.31), _folds(0.90, 0.92), 2, 0.95, mode="min")  # val_loss: higher is worse
    assert not raced_out(_folds(0.90, 0.92), _folds(0.30, 0.31), 2, 0.95, mode="min")


class _Configs(Searcher):
    """A searcher that suggests the given configs in order and records what it heard."""

    def __init__(self, configs):
        super().__init__(metric="val_macro_f1", mode="max")
        self.configs, self.heard = list(configs), {}

    def suggest(self, trial_id):
        return self.configs.pop(0) if self.configs else Searcher.FINISHED

    def on_trial_complete(self, trial_id, result=None, error=False):
        self.heard[trial_id] = result


def test_searcher_is_breadth_first_and_races_out_the_worse_config(tmp_path):
    scores = {0.01: [0.90, 0.93, 0.89, 0.92], 0.02: [0.91, 0.90, 0.93, 0.91], 1.0: [0.40, 0.41]}
    base = _Configs([{"train.lr": lr} for lr in scores])
    race = RacingSearcher(base, folds=4, configs=3, min_folds=2, confidence=0.95, fold_key=TRIAL_INDEX,
                          state_file=str(tmp_path / "racing.json"))
    order, n = [], 0

    def step():
        nonlocal n
        n += 1
        suggestion = race.suggest(f"t{n}")
        if isinstance(suggestion, dict):
            order.append((suggestion["train.lr"], suggestion[TRIAL_INDEX]))
            fold = suggestion[TRIAL_INDEX]
            race.on_trial_complete(f"t{n}", {"val_macro_f1": scores[suggestion["train.lr"]][fold]})
        return suggestion

    while step() not in (Searcher.FINISHED, None):
        pass
    assert order[:6] == [(0.01, 0), (0.02, 0), (1.0, 0), (0.01, 1), (0.02, 1), (1.0, 1)]  # breadth first
    assert (1.0, 2) not in order and len(order) == 2 * 4 + 2  # raced out after 2 folds: 2 fold trainings saved
    state = json.loads((tmp_path / "racing.json").read_text())
    assert [c["status"] for c in state["configs"]] == ["complete", "complete", RACED_OUT]
    assert base.heard["config_2"] == {"val_macro_f1": pytest.approx(0.405), "raced_out": 1}  # its partial mean, marked
    assert base.heard["config_1"] == {"val_macro_f1": pytest.approx(0.9125)}


def _fold(race, trial_id, curve, final=True):
    """Report a fold's epochs to the race as Tune would (scheduler first); True if it was stopped."""
    for epoch, score in enumerate(curve, start=1):
        if race.on_epoch(trial_id, {"val_macro_f1": score, "epoch": epoch}):
            race.on_trial_complete(trial_id, {"val_macro_f1": score, "epoch": epoch})
            return True
    if final:
        race.on_trial_complete(trial_id, {"val_macro_f1": max(curve), "best_epoch": curve.index(max(curve)) + 1, "done": 1})
    return False


def _race(tmp_path, configs, epochs=4, per_epoch=True):
    base = _Configs([{"train.lr": lr} for lr in configs])
    race = RacingSearcher(base, folds=4, configs=len(configs), min_folds=2, confidence=0.95, fold_key=TRIAL_INDEX,
                          state_file=str(tmp_path / "racing.json"), epochs=epochs, per_epoch=per_epoch)
    return base, race


def test_per_epoch_racing_stops_a_worse_config_mid_fold_against_the_leaders_same_epoch(tmp_path):
    base, race = _race(tmp_path, [0.01, 0.02, 1.0])
    good, other, bad = [0.80, 0.88, 0.90, 0.91], [0.79, 0.87, 0.91, 0.90], [0.40, 0.41, 0.42, 0.42]
    suggested = {}
    for n in range(6):  # breadth first: fold 0 of the three, then fold 1
        suggested[f"t{n}"] = race.suggest(f"t{n}")
    assert [(c["train.lr"], c[TRIAL_INDEX]) for c in suggested.values()] == [(0.01, 0), (0.02, 0), (1.0, 0), (0.01, 1), (0.02, 1), (1.0, 1)]
    assert not _fold(race, "t0", good) and not _fold(race, "t1", other) and not _fold(race, "t2", bad)
    assert not _fold(race, "t3", [0.81, 0.89, 0.91, 0.92])  # the leader now has 2 finished folds
    assert _fold(race, "t5", bad)  # at epoch 1 of its second fold, on 2 folds both reached: 0.40, 0.40 vs 0.80, 0.81
    state = json.loads((tmp_path / "racing.json").read_text())
    out = state["configs"][2]
    assert (out["status"], out["raced_after"], out["raced_at_epoch"]) == (RACED_OUT, 1, 1)
    assert out["scores"] == {"0": 0.42} and out["curves"]["1"] == [0.40]  # the stopped fold's epoch is no fold score
    assert base.heard["config_2"] == {"val_macro_f1": pytest.approx(0.42), "raced_out": 1}
    assert not _fold(race, "t4", [0.82, 0.86, 0.91, 0.90])  # an equal config (fold noise both ways) is never stopped
    assert race.suggest("t6")[TRIAL_INDEX] == 2 and all(race.suggest(f"t{n}")["train.lr"] != 1.0 for n in range(7, 10))


def test_per_epoch_racing_never_judges_one_fold_alone_nor_stops_a_last_epoch(tmp_path):
    _, race = _race(tmp_path, [0.01, 1.0], epochs=2)
    for n in range(4):
        race.suggest(f"t{n}")  # (0.01, 0), (1.0, 0), (0.01, 1), (1.0, 1)
    assert not _fold(race, "t1", [0.40, 0.41])  # one fold, no leader yet
    assert not _fold(race, "t0", [0.80, 0.90])
    assert not _fold(race, "t2", [0.81, 0.91])
    # 2 shared folds at epoch 1 (0.80/0.81 vs 0.40 and this fold's 0.40): out, and this fold stops
    assert _fold(race, "t3", [0.40, 0.41])
    _, late = _race(tmp_path / "late", [0.01, 1.0], epochs=1)
    (tmp_path / "late").mkdir()
    for n in range(4):
        late.suggest(f"t{n}")
    for trial, curve in (("t0", [0.9]), ("t1", [0.4]), ("t2", [0.91])):
        _fold(late, trial, curve)
    assert not late.on_epoch("t3", {"val_macro_f1": 0.4, "epoch": 1})  # its last epoch: left to finish


def test_without_per_epoch_racing_a_fold_runs_to_its_end_and_in_flight_folds_of_a_raced_config_stop(tmp_path):
    _, race = _race(tmp_path, [0.01, 1.0], per_epoch=False)
    for n in range(4):
        race.suggest(f"t{n}")
    for trial, curve in (("t0", [0.8, 0.9, 0.9, 0.9]), ("t1", [0.4] * 4), ("t2", [0.81, 0.91, 0.91, 0.91])):
        _fold(race, trial, curve)
    assert not _fold(race, "t3", [0.40, 0.41, 0.41, 0.40])  # per_epoch off: its fold ends, then the fold rule takes it
    assert json.loads((tmp_path / "racing.json").read_text())["configs"][1]["raced_after"] == 2
    _, both = _race(tmp_path / "b", [0.01, 1.0])
    (tmp_path / "b").mkdir()
    for n in range(5):
        both.suggest(f"t{n}")  # t4: fold 2 of 0.01
    for trial, curve in (("t0", [0.8, 0.9, 0.9, 0.9]), ("t1", [0.4] * 4), ("t2", [0.81, 0.91, 0.91, 0.91])):
        _fold(both, trial, curve)
    both.entries[1].status = RACED_OUT  # raced out (e.g. by the fold rule) while its fold 1 trains
    assert both.on_epoch("t3", {"val_macro_f1": 0.4, "epoch": 1}) and "t3" in both.stopped


def test_racing_needs_a_search_and_folds_beyond_min_folds():
    from orchestrator.validate import check_racing

    with pytest.raises(ConfigError, match="tune.racing.enabled: racing compares configs"):
        check_racing(with_overrides(load_config(SMOKE), {"tune.racing.enabled": True, "cv.folds": 3}))
    with pytest.raises(ConfigError, match=r"tune.racing.min_folds: 2 needs cv.folds > 2 \(cv.folds is 2\)"):
        check_racing(with_overrides(load_config(SMOKE), {"tune.racing.enabled": True, "cv.folds": 2,
                                                         "tune.search": {"train.lr": "loguniform(1e-4, 1e-2)"}}))


def test_a_race_through_ray_tune_survives_a_killed_driver(ray_session, tmp_path):
    """Real Ray Tune, 2 configs × 3 folds, one with an lr too small to learn anything in an epoch. The
    driver is SIGKILLed mid-race; `run --resume` finishes the race without re-running a finished fold:
    the broken config is raced out once it shares 2 finished folds with the leader, the run picks a
    sound config and builds its ensemble from the configs that finished all folds."""
    from tests.test_fault_tolerance import actors, log_tail, run_cli, state_address, wait_for

    args = [str(SMOKE), "--address", state_address(), "--set", "name=race", "--set", f"runs_dir={tmp_path}",
            "--set", "train.epochs=1", "--set", "data.max_rows=400", "--set", "data.test_fraction=0.2",
            "--set", "cv.folds=3", "--set", "cv.parallel=2", "--set", "tune.searcher=grid",
            "--set", "tune.search={train.lr: 'grid([0.01, 1e-08])'}",
            "--set", "tune.racing={enabled: true, min_folds: 2, confidence: 0.9, per_epoch: false}"]  # the fold rule
    root, log = tmp_path / "race", tmp_path / "driver.log"
    driver = run_cli(args, log)
    try:
        def two_finished():
            if driver.poll() is not None:
                pytest.fail(f"driver exited ({driver.returncode}) before it could be killed:\n{log_tail(log)}")
            return len(list((root / "trials").glob("*/history.json"))) >= 2
        wait_for(two_finished, 300, "two finished fold trials", interval=0.05)
    finally:
        driver.kill()
        driver.wait(timeout=30)
    finished = {p.parent.name: (p / "model.pt").stat().st_mtime_ns for p in (root / "trials").glob("*/model")
                if (p.parent / "history.json").is_file()}
    controllers_before = len(actors("TrainController", alive_only=False))
    resume = run_cli(args + ["--resume"], log)
    assert resume.wait(timeout=400) == 0, log_tail(log)

    trials = json.loads((root / "trials.json").read_text())
    by_lr = {t["params"]["train.lr"]: t for t in trials["trials"]}
    broken = by_lr[1e-08]
    assert broken["raced_out"] == "raced out after 2 folds" and broken["folds_done"] < 3
    assert trials["best_config"]["train.lr"] == 0.01
    run_ids = {i for t in trials["trials"] for i in t["trial_ids"]}
    assert set(finished) <= run_ids
    for trial_id, mtime in finished.items():  # finished folds were kept, not trained again
        assert (root / "trials" / trial_id / "model" / "model.pt").stat().st_mtime_ns == mtime, trial_id
    trained_after = len(actors("TrainController", alive_only=False)) - controllers_before
    assert trained_after <= sum(t["folds_done"] for t in trials["trials"]) - len(finished) + 2  # + the trials killed in flight
    assert trials["racing"]["fold_trainings_saved"] >= 1
    state = json.loads((root / "racing.json").read_text())
    assert {c["status"] for c in state["configs"]} <= {"complete", RACED_OUT} and len(state["configs"]) == 2
    assert trials["ensemble"]["eligible_configs"] == 1
    manifest = json.loads((root / "manifest.json").read_text())
    assert manifest["stages"]["evaluate"]["status"] == "done" and manifest["metrics"]["test_macro_f1"] > 0.7


def test_per_epoch_racing_through_ray_tune_stops_a_broken_configs_fold_mid_training(ray_session, tmp_path):
    """Real Ray Tune, 2 configs x 3 folds x 2 epochs, one fold at a time (a fixed order): the config with
    lr 1e-8 finishes fold 0, is raced out at epoch 1 of fold 1 (its 2 folds at epoch 1 against the
    leader's), that fold stops there, its fold 2 never runs, and the run still ends with the sound
    config's 3-fold ensemble; no TrainController of the run outlives it (the stopped fold's once stayed
    ALIVE for Tune's 600 s force-cleanup timeout). The stopped fold ends at its stop file, so one trial
    process runs all 5 trials (Tune reuses it), and no trial errors on the reuse."""
    from orchestrator.pipeline import run_experiment
    from tests.test_fault_tolerance import actors, wait_for

    cfg = with_overrides(load_config(SMOKE), {
        "name": "epochs", "runs_dir": str(tmp_path), "train.epochs": 2, "data.max_rows": 240, "data.test_fraction": 0.2,
        "cv.folds": 3, "cv.parallel": 1, "tune.searcher": "grid", "tune.search": {"train.lr": "grid([0.01, 1e-08])"},
        "tune.racing": {"enabled": True, "min_folds": 2, "confidence": 0.95}})
    alive_before = {a.actor_id for a in actors("TrainController")}  # other tests' leftovers, if any
    trial_processes_before = {a.actor_id for a in actors("ImplicitFunc", alive_only=False)}
    summary = run_experiment(cfg, log=lambda *_: None)
    root = summary.run.root
    trials = json.loads((root / "trials.json").read_text())
    by_lr = {t["params"]["train.lr"]: t for t in trials["trials"]}
    broken, sound = by_lr[1e-08], by_lr[0.01]
    assert not trials["failed"]
    assert len({a.actor_id for a in actors("ImplicitFunc", alive_only=False)} - trial_processes_before) == 1
    stopped = [d.name for d in (root / "trials").iterdir() if (d / "STOP").exists()]
    assert len(stopped) == 1 and stopped[0] not in broken["trial_ids"] + sound["trial_ids"]  # the stopped fold, no other
    assert broken["raced_out"] == "raced out after 1 folds, at epoch 1 of the next"
    assert (broken["folds_done"], broken["folds_stopped"]) == (1, 1) and sound["folds_done"] == 3
    assert trials["racing"]["folds_stopped_mid_training"] == 1 and trials["best_config"]["train.lr"] == 0.01
    state = json.loads((root / "racing.json").read_text())
    assert state["configs"][1]["curves"]["1"] and len(state["configs"][1]["curves"]["1"]) == 1  # one epoch, then stopped
    assert trials["ensemble"]["eligible_configs"] == 1
    assert json.loads((root / "manifest.json").read_text())["metrics"]["test_macro_f1"] > 0.7
    wait_for(lambda: not {a.actor_id for a in actors("TrainController")} - alive_before, 30,
             "the stopped fold's TrainController to go with its trial")


def test_asha_stops_trials_mid_training_and_tune_reuses_their_process(ray_session, tmp_path):
    """Real Ray Tune with ASHA (one fold, 3 epochs, grace 1, one trial at a time; the grid runs lr 1e-7,
    0.03, 0.01, 1e-8 in that order): the last, with an lr too small to learn, is stopped after epoch 1
    (below the rung's median), stopped folds end at their stop file and keep no model, one trial process
    runs all four trials, no trial errors, and a sound config is chosen from those that finished."""
    from orchestrator.pipeline import run_experiment
    from tests.test_fault_tolerance import actors

    cfg = with_overrides(load_config(SMOKE), {
        "name": "asha", "runs_dir": str(tmp_path), "train.epochs": 3, "data.max_rows": 240, "data.test_fraction": 0.2,
        "cv.folds": 1, "cv.parallel": 1, "tune.scheduler": "asha", "tune.searcher": "grid",
        "tune.search": {"train.lr": "grid([0.01, 0.03, 1e-07, 1e-08])"}})
    trial_processes_before = {a.actor_id for a in actors("ImplicitFunc", alive_only=False)}
    summary = run_experiment(cfg, log=lambda *_: None)
    root = summary.run.root
    trials = json.loads((root / "trials.json").read_text())
    by_lr = {t["params"]["train.lr"]: t for t in trials["trials"]}
    assert not trials["failed"] and trials["best_config"]["train.lr"] in (0.01, 0.03)
    assert len(trials["trials"]) == 4  # a trial errored on a failed actor reuse would be missing
    assert (by_lr[1e-08]["folds_done"], by_lr[1e-08]["folds_stopped"]) == (0, 1) and by_lr[1e-07]["folds_done"] == 1
    # at most one new trial process (the state API can lag behind in a long session: then none is listed yet)
    assert len({a.actor_id for a in actors("ImplicitFunc", alive_only=False)} - trial_processes_before) <= 1
    stopped = sorted(d for d in (root / "trials").iterdir() if (d / "STOP").exists())
    assert len(stopped) == sum(t["folds_stopped"] for t in trials["trials"]) and not any((d / "model").exists() for d in stopped)
    assert json.loads((root / "manifest.json").read_text())["metrics"]["test_macro_f1"] > 0.7
