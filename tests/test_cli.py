"""CLI bad input: one line naming file/key/row, exit code 2, no traceback, nothing half-written."""
from __future__ import annotations

import subprocess
import sys

import pytest

from orchestrator.cli import main
from tests.conftest import ROOT


def _write(path, text):
    path.write_text(text, encoding="utf-8")
    return path


def _run(argv, capsys):
    code = main(argv)
    err = capsys.readouterr().err.strip()
    return code, err


def test_malformed_yaml(in_tmp, capsys):
    cfg = _write(in_tmp / "bad.yaml", "name: x\ntrain: [1, 2\n")
    code, err = _run(["run", str(cfg)], capsys)
    assert code == 2 and err.startswith("error: ") and "bad.yaml: malformed YAML at line" in err
    assert len(err.splitlines()) == 1 and not (in_tmp / "runs").exists()


def test_unknown_key(in_tmp, capsys):
    cfg = _write(in_tmp / "e.yaml", "name: x\ntrain:\n  epochz: 2\n")
    code, err = _run(["run", str(cfg)], capsys)
    assert code == 2 and "train.epochz: unknown key; did you mean 'epochs'?" in err


def test_missing_data_file_writes_nothing(in_tmp, capsys):
    cfg = _write(in_tmp / "e.yaml", "name: x\ndata:\n  train: nope.csv\n")
    code, err = _run(["run", str(cfg)], capsys)
    assert code == 2 and "nope.csv" in err and len(err.splitlines()) == 1
    assert not (in_tmp / "runs").exists()


def test_missing_column(in_tmp, capsys):
    _write(in_tmp / "d.csv", "sentence,label\na,x\nb,y\n")
    cfg = _write(in_tmp / "e.yaml", "name: x\ndata:\n  train: d.csv\n  text_column: text\n")
    code, err = _run(["run", str(cfg)], capsys)
    assert code == 2 and "d.csv" in err and "text" in err


def test_non_utf8(in_tmp, capsys):
    (in_tmp / "d.csv").write_bytes("text,label\nok,a\n".encode() + b"caf\xe9,b\n")
    cfg = _write(in_tmp / "e.yaml", "name: x\ndata:\n  train: d.csv\n")
    code, err = _run(["run", str(cfg)], capsys)
    assert code == 2 and "d.csv" in err and "UTF-8" in err.upper().replace("UTF8", "UTF-8")


def test_existing_run_dir_is_refused_and_kept(in_tmp, capsys):
    run = in_tmp / "runs" / "smoke"
    run.mkdir(parents=True)
    (run / "keep.txt").write_text("precious")
    code, err = _run(["run", str(ROOT / "experiments" / "smoke.yaml")], capsys)
    assert code == 2 and "--resume" in err and "--overwrite" in err
    assert (run / "keep.txt").read_text() == "precious"


def test_module_entry_point_prints_no_traceback(tmp_path):
    cfg = _write(tmp_path / "e.yaml", "train:\n  lr: fast\n")
    proc = subprocess.run([sys.executable, "-m", "orchestrator", "run", str(cfg)], capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.strip() == f"error: {cfg}: train.lr: expected a number, got 'fast'"
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize("cmd", ["test", "predict"])
def test_not_a_run_directory(tmp_path, capsys, cmd):
    code, err = _run([cmd, str(tmp_path)], capsys)
    assert code == 2 and "not a run directory" in err


def test_predict_file_errors_are_one_line(smoke_run, tmp_path, capsys):
    (tmp_path / "bad.txt").write_bytes(b"a cat\n\xff\xfe dog\n")
    for name, expected in (("missing.txt", "missing.txt: no such file (--file)"),
                           ("bad.txt", "bad.txt: line 2: not UTF-8 (byte 0xff")):
        code, err = _run(["predict", str(smoke_run.run.root), "--file", str(tmp_path / name)], capsys)
        assert code == 2 and expected in err and len(err.splitlines()) == 1 and "Traceback" not in err
