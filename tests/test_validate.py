"""Everything is checked before anything is written: one line, exit 2, no run directory; the serve
token never lands in a run's files."""
from __future__ import annotations

import json

from orchestrator.cli import main
from orchestrator.config import ExperimentConfig, ServeConfig, load_config
from orchestrator.rundir import RunDir
from tests.conftest import ROOT

SMOKE = ROOT / "experiments" / "smoke.yaml"


def _experiment(folder, extra: str = "", rows: str = "a cat,x\nb dog,y\nc cat,x\nd dog,y\n") -> str:
    (folder / "d.csv").write_text("text,label\n" + rows, encoding="utf-8")
    path = folder / "e.yaml"
    path.write_text("name: v\ndata:\n  train: d.csv\n  val_fraction: 0.5\nmodel:\n  kind: small\n" + extra, encoding="utf-8")
    return str(path)


def _refused(argv, capsys, folder) -> str:
    code = main(argv)
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.startswith("error: ") and len(err.splitlines()) == 1, err
    assert "Traceback" not in err and not (folder / "runs").exists()
    return err


def test_one_class_training_file_is_refused(in_tmp, capsys):
    path = _experiment(in_tmp, rows="a cat,x\nb dog,x\nc cow,x\n")
    err = _refused(["run", path], capsys, in_tmp)
    assert "d.csv" in err and "1 class(es) ('x')" in err and "at least 2" in err


def test_unknown_model_name_fails_fast_offline(in_tmp, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    path = _experiment(in_tmp)
    (in_tmp / "e.yaml").write_text((in_tmp / "e.yaml").read_text().replace("  kind: small\n", "  kind: hf\n  name: bert-base-uncasedd\n"))
    err = _refused(["run", path], capsys, in_tmp)
    assert "model.name: 'bert-base-uncasedd' is not a built-in alias (minilm-l6), not a local folder" in err
    assert "offline" in err


def test_a_model_folder_without_config_is_refused(in_tmp, capsys):
    (in_tmp / "empty").mkdir()
    path = _experiment(in_tmp)
    (in_tmp / "e.yaml").write_text((in_tmp / "e.yaml").read_text().replace("  kind: small\n", f"  kind: hf\n  name: {in_tmp / 'empty'}\n"))
    assert "without config.json" in _refused(["check", path], capsys, in_tmp)


def test_bad_search_space_is_refused_before_the_run_directory(in_tmp, capsys):
    path = _experiment(in_tmp, "tune:\n  search:\n    train.lrr: loguniform(1e-5, 1e-4)\n")
    assert "tune.search.train.lrr" in _refused(["run", path], capsys, in_tmp)
    path = _experiment(in_tmp, "tune:\n  search:\n    train.lr: loguniform(1e-5)\n")
    assert "tune.search.train.lr" in _refused(["run", path], capsys, in_tmp)


def test_too_many_folds_for_a_class_is_refused_before_the_run_directory(in_tmp, capsys):
    path = _experiment(in_tmp, "cv:\n  folds: 3\n")
    assert "cv.folds=3" in _refused(["run", path], capsys, in_tmp)


def test_pretrained_vectors_are_checked_before_the_run_directory(in_tmp, capsys):
    path = _experiment(in_tmp, "  embedding_dim: 16\n  pretrained_vectors: vec.txt\n")
    assert "vec.txt: no such file" in _refused(["run", path], capsys, in_tmp)
    (in_tmp / "vec.txt").write_text("cat 0.1 0.2 0.3\n")
    assert "3-dimensional vectors (line 1), model.embedding_dim is 16" in _refused(["run", path], capsys, in_tmp)
    (in_tmp / "vec.txt").write_bytes(b"\xff\xfe 1 2\n")
    assert "not UTF-8" in _refused(["check", path], capsys, in_tmp)


def test_a_token_in_the_yaml_is_refused(in_tmp, capsys):
    path = _experiment(in_tmp, "serve:\n  token: s3cret\n")
    err = _refused(["run", path], capsys, in_tmp)
    assert "serve.token" in err and "--token" in err and "ORCHESTRATOR_SERVE_TOKEN" in err and "token_file" in err
    assert "s3cret" not in err
    assert "serve.token" in _refused(["check", _experiment(in_tmp), "--set", "serve.token=s3cret"], capsys, in_tmp)


def test_open_service_on_a_public_host_needs_insecure(in_tmp, capsys, monkeypatch):
    monkeypatch.delenv("ORCHESTRATOR_SERVE_TOKEN", raising=False)
    path = _experiment(in_tmp, "serve:\n  enabled: true\n  host: 0.0.0.0\n")
    assert "serve.host: 0.0.0.0" in _refused(["check", path], capsys, in_tmp)
    assert main(["check", path, "--set", "serve.insecure=true"]) == 0
    monkeypatch.setenv("ORCHESTRATOR_SERVE_TOKEN", "from-env")
    assert main(["check", path]) == 0
    monkeypatch.delenv("ORCHESTRATOR_SERVE_TOKEN")
    (in_tmp / "token.txt").write_text("from-file\n")
    assert main(["check", path, "--set", "serve.token_file=token.txt"]) == 0
    assert "serve.token_file" in _refused(["check", path, "--set", "serve.token_file=missing.txt"], capsys, in_tmp)
    capsys.readouterr()


def test_serve_autoscaling_is_checked_in_the_yaml(in_tmp, capsys):
    path = _experiment(in_tmp, "serve:\n  autoscaling:\n    min_replicas: 1\n    max_replicas: 3\n")
    assert main(["check", path]) == 0
    err = _refused(["check", path, "--set", "serve.autoscaling.max_replicas=0"], capsys, in_tmp)
    assert "serve.autoscaling.max_replicas" in err
    err = _refused(["check", path, "--set", "serve.autoscaling.min_replicas=4"], capsys, in_tmp)
    assert "serve.autoscaling: max_replicas 3 is below min_replicas 4" in err
    assert "serve.replicas: 5 is outside serve.autoscaling's 1..3" in _refused(["check", path, "--set", "serve.replicas=5"], capsys, in_tmp)
    assert "serve.autoscaling.target" in _refused(["check", path, "--set", "serve.autoscaling.target=2"], capsys, in_tmp)
    capsys.readouterr()


def test_check_accepts_a_good_experiment_and_writes_nothing(in_tmp, capsys):
    assert main(["check", str(SMOKE)]) == 0
    assert "ok (2 classes" in capsys.readouterr().out and not (in_tmp / "runs").exists()


def test_the_token_is_in_no_file_of_the_run(in_tmp, monkeypatch):
    monkeypatch.setenv("ORCHESTRATOR_SERVE_TOKEN", "from-env-s3cret")
    (in_tmp / "token.txt").write_text("file-s3cret\n")
    cfg = ExperimentConfig(runs_dir=str(in_tmp / "runs"), serve=ServeConfig(token="given-s3cret", token_file="token.txt"))
    assert cfg.serve.with_token().token == "from-env-s3cret"
    monkeypatch.delenv("ORCHESTRATOR_SERVE_TOKEN")
    assert cfg.serve.with_token().token == "file-s3cret" and cfg.serve.with_token("flag").token == "flag"
    run = RunDir.create(cfg)
    text = run.manifest_path.read_text()
    assert "s3cret" not in text and json.loads(text)["config"]["serve"]["token_file"] == "token.txt"
    assert "s3cret" not in repr(cfg) and "given-s3cret" not in cfg.hash()
    assert load_config(SMOKE).serve.token is None


def test_a_class_weights_list_of_the_wrong_length_is_refused_before_the_run_directory(in_tmp, capsys):
    assert "train.class_weights: expected 'none', 'balanced' or a list of 2 numbers" in _refused(
        ["run", str(SMOKE), "--set", "train.class_weights=[1.0, 2.0, 3.0]"], capsys, in_tmp)
    search = "--set", "tune.search={train.class_weights: 'grid([[1.0, 2.0], [1.0, 2.0, 3.0]])'}"
    err = _refused(["check", str(SMOKE), *search], capsys, in_tmp)
    assert err.startswith("error: tune.search.train.class_weights = [1.0, 2.0, 3.0]: train.class_weights") and "list of 2" in err
    err = _refused(["check", str(SMOKE), "--set", "train.loss=focal", "--set", "train.label_smoothing=0.1"], capsys, in_tmp)
    assert err == "error: train.label_smoothing: only used by loss 'ce', not 'focal'"
    err = _refused(["check", str(SMOKE), "--set", "distill.enabled=true", "--set", "distill.train.class_weights=[1.0]"], capsys, in_tmp)
    assert err.startswith("error: distill.train.class_weights")


def test_an_error_raised_in_the_worker_ends_the_run_at_once(ray_session, in_tmp, capsys, broken_bert):
    """A deterministic error inside a training worker (here a model folder whose weights file is
    garbage: every check before training passes, loading it in the worker fails) is reported with its
    message, not retried as if a worker died."""
    code = main(["run", str(SMOKE), "--set", "name=failing", "--set", f"model={{kind: hf, name: {broken_bert}, max_length: 32}}",
                 "--set", "train.epochs=1"])
    printed = capsys.readouterr().err.strip()
    assert "pid=" not in printed  # Ray's worker output went to the engine log
    err = printed.splitlines()[-1]  # earlier lines: the fixture's save_pretrained bar
    log = in_tmp / "runs" / "failing" / "logs" / "driver.log"
    suffix = f" (engine log: {log.relative_to(in_tmp)})"
    assert code == 2 and err.startswith("error: tune: no config finished all 1 folds; fold 0: ") and err.endswith(suffix), err
    assert "Traceback" not in err and "SafetensorError" in log.read_text()  # the worker's traceback is in the log
    last = err.removesuffix(suffix)
    trials = [json.loads(line) for line in next((in_tmp / "runs" / "failing" / "ray" / "tune").glob("*/result.json")).read_text().splitlines()]
    # the worker's one report (a retry would add more) and the trial's last result, which names the fold
    assert [t["failed"] for t in trials if "failed" in t] == [last.split("fold 0: ", 1)[1]] * 2
    assert trials[-1]["fold"] == 0 and len(trials) == 2
