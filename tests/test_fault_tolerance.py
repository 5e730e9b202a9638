"""Real failures against real Ray: a SIGKILLed training worker, a SIGKILLed driver resumed with
``run --resume``, and no placement group or Train actor left behind by a run (one with a failing
trial included). Tiny TextCNN on experiments/smoke.yaml data; every wait is bounded.

All runs use the session's local Ray (``ray_session``); the killed driver is a subprocess that joins
it by address, so killing it leaves the cluster (and this pytest process) alive for the resume.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Callable, Optional

import pytest

from orchestrator.config import load_config, with_overrides
from orchestrator.pipeline import run_experiment
from tests.conftest import ROOT

pytestmark = pytest.mark.ray

SMOKE = ROOT / "experiments" / "smoke.yaml"
LIVE_PG_STATES = {"CREATED", "PENDING", "RESCHEDULING"}


# ---- helpers -------------------------------------------------------------------------------------
def wait_for(predicate: Callable[[], object], timeout: float, what: str, interval: float = 0.2):
    """Poll ``predicate`` until it returns something truthy; fail the test after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)


def state_address() -> str:
    """The session cluster's GCS address: the state API must be told which Ray to ask, since other
    Ray instances may run on this host (it refuses to guess among several)."""
    import ray

    return ray.get_runtime_context().gcs_address


def actors(class_name: str, alive_only: bool = True) -> list:
    from ray.util.state import list_actors

    filters = [("class_name", "=", class_name)] + ([("state", "=", "ALIVE")] if alive_only else [])
    return list_actors(address=state_address(), filters=filters, limit=10_000, raise_on_missing_output=False)


def placement_groups() -> list:
    from ray.util.state import list_placement_groups

    return list_placement_groups(address=state_address(), limit=10_000, raise_on_missing_output=False)


def live_pg_ids() -> set[str]:
    return {pg.placement_group_id for pg in placement_groups() if pg.state in LIVE_PG_STATES}


def live_train_actor_ids() -> set[str]:
    """Ray Train workers and controllers alive now (earlier tests of the session may have left some:
    each test judges only the ones its own run created)."""
    return {a.actor_id for a in actors("RayTrainWorker") + actors("TrainController")}


def assert_nothing_left(pgs_before: set[str], actors_before: set[str], timeout: float = 60.0) -> None:
    """No placement group created since ``pgs_before`` still holds resources, and no Ray Train
    worker or controller started since ``actors_before`` is alive (removal is asynchronous after a
    run returns: bounded wait)."""
    def clean():
        return not (live_pg_ids() - pgs_before) and not (live_train_actor_ids() - actors_before)
    deadline = time.monotonic() + timeout
    while not clean():
        if time.monotonic() > deadline:
            leaked = [(pg.placement_group_id, pg.state, pg.creator_job_id) for pg in placement_groups()
                      if pg.state in LIVE_PG_STATES and pg.placement_group_id not in pgs_before]
            alive = [(a.class_name, a.pid) for a in actors("RayTrainWorker") + actors("TrainController")
                     if a.actor_id not in actors_before]
            pytest.fail(f"left behind after {timeout:.0f}s: placement groups {leaked}, actors {alive}")
        time.sleep(0.5)


def tune_reports(run_root: Path) -> dict[str, list[dict]]:
    """Every result Tune recorded, per trial id (result.json lines of runs/<name>/ray/tune/*/)."""
    out: dict[str, list[dict]] = {}
    for path in (run_root / "ray" / "tune").glob("*/result.json"):
        rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        if rows:
            out[rows[0]["trial_id"]] = rows
    return out


def clean_fold_history(cfg) -> list[dict]:
    """Fold 0 trained in this process, without Ray and without interruption, exactly as
    trainables/ray_worker.py trains it (same seed, data, model, one thread)."""
    import torch

    from orchestrator.data import load_dataset
    from orchestrator.train.folds import prepare_folds
    from orchestrator.train.folds import fold_data
    from trainables.loop import Trainer
    from trainables.models import build_model
    from trainables.ray_worker import _seed_everything

    dataset = load_dataset(cfg.data, cfg.seed)
    shared = prepare_folds(cfg, dataset)
    data = fold_data(shared["ids"], shared["labels"], *shared["plan"][0], shared["encoder"],
                     len(dataset.classes), dataset.multilabel)
    torch.set_num_threads(1)
    _seed_everything(cfg.seed)
    model = build_model(cfg.model, data.num_classes, shared["encoder"])
    return Trainer(model, data, cfg.train, seed=cfg.seed).fit().history


class WorkerKiller(threading.Thread):
    """SIGKILLs the fold's RayTrainWorker process once Ray Train has registered its first checkpoint
    (runs/<name>/ray/trial_*/checkpoint_manager_snapshot.json is written after registration)."""

    def __init__(self, storage: Path, timeout: float = 300.0):
        super().__init__(daemon=True)
        self.storage, self.timeout = storage, timeout
        self.killed_pid: Optional[int] = None
        self.checkpoint_epoch: Optional[int] = None
        self.error: Optional[str] = None
        self.stop = threading.Event()

    def run(self) -> None:
        try:
            deadline, pid = time.monotonic() + self.timeout, None
            while not self.stop.is_set() and time.monotonic() < deadline:
                if pid is None:  # known before the checkpoint lands, so the kill follows it within ~50 ms
                    alive = actors("RayTrainWorker")
                    pid = alive[0].pid if alive else None
                snapshots = list(self.storage.glob("trial_*/checkpoint_manager_snapshot.json"))
                if pid is not None and snapshots:
                    snapshot = json.loads(snapshots[0].read_text())
                    self.checkpoint_epoch = snapshot["latest_checkpoint_result"]["metrics"]["epoch"]
                    os.kill(pid, signal.SIGKILL)
                    self.killed_pid = pid
                    return
                time.sleep(0.05 if pid is not None else 0.3)
            self.error = "no worker checkpoint to kill after"
        except Exception as exc:  # reported by the test, not lost in the thread
            self.error = repr(exc)


def run_with_a_worker_killed(cfg, root: Path):
    """(summary, killer) of the experiment run while a WorkerKiller SIGKILLs a training worker of it."""
    killer = WorkerKiller(root / "ray")
    killer.start()
    try:
        summary = run_experiment(cfg, log=lambda *_: None)
    finally:
        killer.stop.set()
        killer.join(timeout=10)
    assert killer.error is None and killer.killed_pid, killer.error
    return summary, killer


# ---- tests ---------------------------------------------------------------------------------------
def test_killed_worker_restarts_from_the_folds_last_checkpoint(ray_session, tmp_path):
    """SIGKILL of the training worker mid-fold: FailureConfig restarts the worker group, the new
    worker resumes from the last registered checkpoint, and the fold ends exactly as an
    uninterrupted training of the same fold (the checkpoint holds the full state, RNGs included)."""
    epochs = 8
    cfg = with_overrides(load_config(SMOKE), {"name": "worker_kill", "runs_dir": str(tmp_path), "train.epochs": epochs,
                                               "train.early_stopping_patience": None})
    pgs_before, actors_before = live_pg_ids(), live_train_actor_ids()
    root = tmp_path / "worker_kill"
    summary, killer = run_with_a_worker_killed(cfg, root)
    assert killer.checkpoint_epoch >= 1

    # every epoch exactly once in the fold's history (restored from the checkpoint, then continued)
    history = summary.folds[0].history
    assert [h["epoch"] for h in history] == list(range(1, epochs + 1))

    # the restart is visible: a second worker process started at a checkpointed epoch > 0
    (rows,) = tune_reports(root).values()
    epoch_rows = [r for r in rows if "start_epoch" in r]
    starts = sorted({r["start_epoch"] for r in epoch_rows})
    assert starts[0] == 0 and len(starts) == 2 and starts[1] >= killer.checkpoint_epoch, starts
    resumed = [r["epoch"] for r in epoch_rows if r["start_epoch"] == starts[1]]
    assert resumed == list(range(starts[1] + 1, epochs + 1))
    assert killer.killed_pid not in {a.pid for a in actors("RayTrainWorker", alive_only=False) if a.state == "ALIVE"}

    # the final model exists and the interrupted fold trained exactly like an uninterrupted one
    assert (root / "folds" / "0" / "model" / "model.pt").is_file()
    clean = clean_fold_history(cfg)
    assert len(clean) == epochs
    for got, want in zip(history, clean):
        for key in ("val_loss", "val_macro_f1", "train_loss"):
            assert got[key] == pytest.approx(want[key], rel=1e-5, abs=1e-6), (got["epoch"], key)
    assert summary.test_metrics["macro_f1"] > 0.7
    assert_nothing_left(pgs_before, actors_before)


def test_an_error_on_one_of_two_workers_fails_the_fold_after_one_attempt(ray_session, tmp_path):
    """With 2 workers, a deterministic error on rank 1 cannot be reported by rank 1 alone: it leaves a
    note and raises; Ray Train restarts the group once, and both ranks of that attempt report the
    note's error before training. One attempt trained (each rank started once), not 3."""
    import ray

    from orchestrator.data import load_dataset
    from orchestrator.rundir import RunDir
    from orchestrator.train.folds import build_torch_trainer, failure, fold_data, prepare_folds
    from trainables.hooks import Hook
    from trainables.ray_worker import FAILURE_NOTE

    starts = tmp_path / "starts.txt"

    class FailOnRank1(Hook):  # defined here: pickled by value into the workers
        def on_fit_start(self, state):
            import ray.train

            with open(starts, "a") as out:
                out.write(f"{ray.train.get_context().get_world_rank()}\n")

        def after_optimizer_step(self, state):
            import ray.train

            if ray.train.get_context().get_world_rank() == 1 and state.step == 2:
                raise ValueError("bad batch on rank 1")

    cfg = with_overrides(load_config(SMOKE), {"runs_dir": str(tmp_path), "train.num_workers": 2, "train.epochs": 1})
    dataset = load_dataset(cfg.data, cfg.seed)
    shared = prepare_folds(cfg, dataset)
    data = fold_data(shared["ids"], shared["labels"], *shared["plan"][0], shared["encoder"], len(dataset.classes), dataset.multilabel)
    payload = {"data": data, "text_encoder": shared["encoder"], "meta": shared["meta"], "hooks": [FailOnRank1()]}
    run = RunDir(tmp_path / "two_workers")
    result = build_torch_trainer(cfg, run, "fold", ray.put(payload), run.root / "fold").fit()
    assert failure(result) == "ValueError: bad batch on rank 1"
    assert sorted(starts.read_text().split()) == ["0", "1"]
    assert json.loads((run.ray_run("fold") / FAILURE_NOTE).read_text()) == {"error": "ValueError: bad batch on rank 1", "rank": 1}


def test_a_killed_worker_of_two_restarts_the_fold_from_its_checkpoint(ray_session, tmp_path):
    """SIGKILL of one of a fold's 2 DDP workers: the other rank's collective error (gloo: connection
    reset) is not taken for a deterministic one, so the group restarts from the checkpoint and the
    fold trains every epoch exactly once."""
    epochs = 6
    cfg = with_overrides(load_config(SMOKE), {"name": "two_worker_kill", "runs_dir": str(tmp_path), "train.epochs": epochs,
                                               "train.num_workers": 2, "train.early_stopping_patience": None})
    root = tmp_path / "two_worker_kill"
    summary, killer = run_with_a_worker_killed(cfg, root)
    assert [h["epoch"] for h in summary.folds[0].history] == list(range(1, epochs + 1))
    (rows,) = tune_reports(root).values()
    starts = sorted({r["start_epoch"] for r in rows if "start_epoch" in r})
    assert starts[0] == 0 and len(starts) == 2 and starts[1] >= killer.checkpoint_epoch, starts
    assert summary.test_metrics["macro_f1"] > 0.6


def run_cli(args: list[str], log: Path) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env["PYTHONUNBUFFERED"] = "1"
    with open(log, "ab") as out:
        return subprocess.Popen([sys.executable, "-m", "orchestrator", "run", *args], cwd=ROOT, env=env,
                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)


def log_tail(log: Path, n: int = 3000) -> str:
    return log.read_text(errors="replace")[-n:] if log.exists() else ""


def test_killed_driver_resumes_without_rerunning_finished_trials(ray_session, tmp_path):
    """`orchestrator run` (a driver joining the session's Ray) is SIGKILLed once a fold trial has
    finished; `run --resume` restores the Tune experiment, trains only the folds not finished,
    leaves the finished trials' models untouched and completes the run, and nothing of either
    driver is left on the cluster."""
    folds = 3
    args = [str(SMOKE), "--address", state_address(), "--set", "name=driver_kill", "--set", f"runs_dir={tmp_path}",
            "--set", f"cv.folds={folds}"]
    root, log = tmp_path / "driver_kill", tmp_path / "driver.log"
    pgs_before, actors_before = live_pg_ids(), live_train_actor_ids()
    driver = run_cli(args, log)
    try:
        def finished_trials():
            if driver.poll() is not None:
                pytest.fail(f"driver exited ({driver.returncode}) before it could be killed:\n{log_tail(log)}")
            return [p.parent for p in (root / "trials").glob("*/history.json")]
        wait_for(finished_trials, 300, "a finished fold trial (trials/<id>/history.json)", interval=0.05)
    finally:
        driver.kill()  # SIGKILL: no cleanup of any kind in the driver
        driver.wait(timeout=30)
    finished = {p.parent.name: (p / "model.pt").stat().st_mtime_ns for p in (root / "trials").glob("*/model")
                if (p.parent / "history.json").is_file()}
    assert 1 <= len(finished) < folds, finished

    # Ray reclaims the dead driver's trials and TorchTrainers. (Not always all its placement groups:
    # a fold controller that requests its worker group while the job is torn down leaves one behind,
    # holding a CPU; `run --resume` removes it, see train.cluster.release_dead_drivers.)
    wait_for(lambda: not (live_train_actor_ids() - actors_before), 60,
             "the killed driver's actors to be reclaimed", 0.5)

    controllers_before = len(actors("TrainController", alive_only=False))
    resume = run_cli(args + ["--resume"], log)
    try:
        code = resume.wait(timeout=300)
    except subprocess.TimeoutExpired:
        resume.kill()
        pytest.fail(f"run --resume did not finish in 300 s:\n{log_tail(log)}")
    assert code == 0, log_tail(log)
    assert "resuming Tune experiment" in log.read_text(errors="replace")

    # the finished trials were kept as they were, the others trained: one TorchTrainer each
    trials = json.loads((root / "trials.json").read_text())["trials"]
    assert len(trials) == 1 and len(trials[0]["fold_scores"]) == folds
    assert set(finished) <= set(trials[0]["trial_ids"])
    for trial_id, mtime in finished.items():
        assert (root / "trials" / trial_id / "model" / "model.pt").stat().st_mtime_ns == mtime, trial_id
    assert len(actors("TrainController", alive_only=False)) - controllers_before == folds - len(finished)
    reports = tune_reports(root)
    for trial_id in trials[0]["trial_ids"]:  # a finished trial Tune had not yet recorded as such reports "reused"
        last = reports[trial_id][-1]
        assert last["done"] == 1 and (trial_id in finished or "reused" not in last), (trial_id, last)
    manifest = json.loads((root / "manifest.json").read_text())
    assert manifest["stages"]["train"]["status"] == manifest["stages"]["evaluate"]["status"] == "done"
    for fold in range(folds):
        assert (root / "folds" / str(fold) / "model" / "model.pt").is_file()
    assert_nothing_left(pgs_before, actors_before)


@pytest.mark.filterwarnings("ignore:Mean of empty slice")  # Tune's Repeater averaging the failed config's no scores
def test_failed_trial_leaves_no_placement_group_or_train_actor(ray_session, tmp_path):
    """A grid of two configs where one cannot train (its word-vector file does not fit the model:
    the worker raises, and the fold ends at once with that message, issue #18: before, Ray Train
    retried the worker group and then Tune the trial): the run completes on the other config, the
    failed trial is left out of trials.json's ranking and listed under "failed" with its message, and
    after the run no placement group it created is alive and no Ray Train actor is left."""
    bad_vectors = tmp_path / "bad.vec"
    bad_vectors.write_text("好 0.1 0.2 0.3\n", encoding="utf-8")  # 3 dimensions, the model embeds in 32
    cfg = with_overrides(load_config(SMOKE), {
        "name": "failing_trial", "runs_dir": str(tmp_path), "train.epochs": 1, "tune.searcher": "grid",
        "tune.search": {"model.pretrained_vectors": f"grid([None, {str(bad_vectors)!r}])"},
    })
    pgs_before, actors_before = live_pg_ids(), live_train_actor_ids()
    summary = run_experiment(cfg, log=lambda *_: None)
    trials = json.loads((summary.run.root / "trials.json").read_text())
    assert [t["params"] for t in trials["trials"]] == [{"model.pretrained_vectors": None}]
    assert [f["params"] for f in trials["failed"]] == [{"model.pretrained_vectors": str(bad_vectors)}]
    assert "dimensional vectors" in trials["failed"][0]["error"]
    assert_nothing_left(pgs_before, actors_before)


HOLDER = """
import sys, ray
ray.init(address=sys.argv[1], namespace="ft_release_dead_drivers", logging_level="ERROR")

@ray.remote(num_cpus=0)
class Holder:
    def reserve(self):
        self.pg = ray.util.placement_group([{"CPU": 1}])
        ray.get(self.pg.ready(), timeout=60)
        return self.pg.id.hex()

holder = Holder.options(name="holder", lifetime="detached").remote()
print(ray.get(holder.reserve.remote()), ray.get_runtime_context().get_job_id())
"""


def test_resume_releases_placement_groups_of_its_dead_drivers_only(ray_session, tmp_path):
    """The resume-time cleanup (train.cluster.release_dead_drivers) on a stand-in for a leaked worker-group
    placement group: a PG that outlives its (dead) driver job. Left alone while the run's manifest
    does not name that job; removed once it names it as an earlier driver of the run."""
    import ray

    from orchestrator.rundir import RunDir
    from orchestrator.train.cluster import release_dead_drivers

    out = subprocess.run([sys.executable, "-c", HOLDER, state_address()], capture_output=True, text=True, timeout=120,
                         env={k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"})
    assert out.returncode == 0, out.stderr[-3000:]
    pg_id, job = out.stdout.split()
    try:
        session = ray.get_runtime_context().get_session_name()
        run = RunDir(tmp_path / "run")
        run.root.mkdir()
        lines: list[str] = []
        release_dead_drivers(run, lines.append)  # no earlier driver recorded: nothing to release
        assert pg_id in live_pg_ids() and not lines
        me = {"session": session, "job": ray.get_runtime_context().get_job_id()}
        assert run.stage("train")["drivers"] == [me]

        run.update("train", drivers=[{"session": "another cluster", "job": job}, {"session": session, "job": job}, me])
        release_dead_drivers(run, lines.append)
        assert pg_id not in live_pg_ids() and lines == ["removed 1 placement group(s) left by an earlier, killed driver of this run"]
        assert run.stage("train")["drivers"] == [me]
    finally:
        ray.kill(ray.get_actor("holder", namespace="ft_release_dead_drivers"))
