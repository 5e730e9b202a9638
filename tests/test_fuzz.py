"""Fuzzed input always gets a clear answer (hypothesis, fixed seed, bounded examples).

Mutations of a valid experiment YAML and of a valid CSV / JSONL training file go through
``orchestrator check`` (the ``validate`` that ``run`` calls before it writes anything): every example
ends in exit 0, or in exit 2 with one line and no traceback, and nothing is written. Random request
bodies of the HTTP API get a 200-able parse or a 4xx ``RequestError``, never another exception.
"""
from __future__ import annotations

import io
import json
import os
import tempfile
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import yaml
from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st

from orchestrator.cli import main
from orchestrator.serve.schema import RequestError, parse_predict

ROWS = [("a cat sat", "x"), ("the dog ran", "y"), ("a cat slept", "x"), ("a dog barked", "y"),
        ("cats and mats", "x"), ("dogs and logs", "y"), ("one more cat", "x"), ("one more dog", "y")]
BASE = {"name": "fuzz", "data": {"train": "d.csv", "val_fraction": 0.25},
        "model": {"kind": "small", "arch": "textcnn", "max_length": 16, "embedding_dim": 8, "num_filters": 4},
        "train": {"epochs": 1, "batch_size": 4, "lr": 0.01}, "cv": {"folds": 2},
        "tune": {"search": {"train.lr": "loguniform(1e-4, 1e-2)"}, "samples": 2}}
FUZZ = settings(max_examples=60, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))

values = st.one_of(st.none(), st.booleans(), st.integers(-10**6, 10**6), st.floats(allow_nan=True),
                   st.text(max_size=30), st.lists(st.integers(-3, 3), max_size=3), st.dictionaries(st.text(max_size=5), st.integers(), max_size=2))


def _check(folder: Path, experiment: str | bytes, data: bytes, data_name: str = "d.csv") -> tuple[int, str]:
    (folder / "e.yaml").write_bytes(experiment if isinstance(experiment, bytes) else experiment.encode())
    (folder / data_name).write_bytes(data)
    before = sorted(p.name for p in folder.iterdir())
    cwd = os.getcwd()
    os.chdir(folder)
    try:
        err, out = io.StringIO(), io.StringIO()
        with redirect_stderr(err), redirect_stdout(out):
            code = main(["check", str(folder / "e.yaml")])
    finally:
        os.chdir(cwd)
    assert sorted(p.name for p in folder.iterdir()) == before, "check wrote something"
    return code, err.getvalue().strip()


def _answered(code: int, err: str) -> None:
    assert code in (0, 2), (code, err)
    if code == 2:
        assert err.startswith("error: ") and len(err.splitlines()) == 1 and "Traceback" not in err, err


def _csv(rows) -> bytes:
    return ("text,label\n" + "".join(f"{t},{l}\n" for t, l in rows)).encode()


@st.composite
def mutated_experiment(draw) -> str:
    cfg = json.loads(json.dumps(BASE))
    for _ in range(draw(st.integers(1, 3))):
        section = draw(st.sampled_from(sorted(cfg)))
        action = draw(st.sampled_from(["set", "delete", "unknown", "replace"]))
        if action == "delete":
            cfg.pop(section, None)
        elif action == "replace":
            cfg[section] = draw(values)
        elif isinstance(cfg.get(section), dict) and cfg[section]:
            key = draw(st.sampled_from(sorted(cfg[section])))
            if action == "set":
                cfg[section][key] = draw(values)
            else:
                cfg[section][key + draw(st.text("xyz_", min_size=1, max_size=3))] = draw(values)
    return yaml.safe_dump(cfg)


@seed(1)
@FUZZ
@given(experiment=mutated_experiment())
def test_mutated_experiments_get_exit_0_or_one_line(experiment):
    with tempfile.TemporaryDirectory() as tmp:
        _answered(*_check(Path(tmp), experiment, _csv(ROWS)))


@st.composite
def mutated_csv(draw) -> bytes:
    data = bytearray(_csv(ROWS))
    kind = draw(st.sampled_from(["truncate", "encoding", "extra field", "missing field", "empty cell", "giant cell",
                                 "bytes", "header"]))
    if kind == "truncate":
        return bytes(data[: draw(st.integers(0, len(data)))])
    if kind == "encoding":
        return _csv(ROWS).decode().encode(draw(st.sampled_from(["utf-16", "utf-32", "latin-1", "cp1252"])), errors="replace") + b"caf\xe9,x\n"
    if kind == "bytes":
        at = draw(st.integers(0, len(data)))
        return bytes(data[:at] + draw(st.binary(min_size=1, max_size=8)) + data[at:])
    lines = data.decode().splitlines()
    row = draw(st.integers(1, len(lines) - 1))
    if kind == "extra field":
        lines[row] += "," + draw(st.text(",\"x", max_size=4))
    elif kind == "missing field":
        lines[row] = lines[row].split(",")[0]
    elif kind == "empty cell":
        text, label = lines[row].split(",")
        lines[row] = draw(st.sampled_from([f",{label}", f"{text},", ","]))
    elif kind == "giant cell":
        lines[row] = "x" * draw(st.integers(10_000, 200_000)) + ",x"
    else:
        lines[0] = draw(st.sampled_from(["", "text", "label,text,extra", "TEXT,LABEL", "text;label"]))
    return ("\n".join(lines) + "\n").encode()


@seed(2)
@FUZZ
@given(data=mutated_csv())
def test_mutated_csv_gets_exit_0_or_one_line(data):
    with tempfile.TemporaryDirectory() as tmp:
        _answered(*_check(Path(tmp), yaml.safe_dump({**BASE, "tune": {}}), data))


@st.composite
def mutated_jsonl(draw) -> bytes:
    rows = [{"text": t, "label": l} for t, l in ROWS]
    i = draw(st.integers(0, len(rows) - 1))
    kind = draw(st.sampled_from(["value", "key", "drop", "line"]))
    if kind == "value":
        rows[i][draw(st.sampled_from(["text", "label"]))] = draw(values)
    elif kind == "key":
        rows[i][draw(st.text(max_size=6))] = draw(values)
    elif kind == "drop":
        rows[i].pop(draw(st.sampled_from(["text", "label"])))
    lines = [json.dumps(r) for r in rows]
    if kind == "line":
        lines[i] = draw(st.sampled_from(["", "{", "[]", "null", "1", '{"text": "a"', "\x00"]))
    return ("\n".join(lines) + "\n").encode()


@seed(3)
@FUZZ
@given(data=mutated_jsonl())
def test_mutated_jsonl_gets_exit_0_or_one_line(data):
    experiment = {**BASE, "tune": {}, "data": {"train": "d.jsonl", "val_fraction": 0.25}}
    with tempfile.TemporaryDirectory() as tmp:
        _answered(*_check(Path(tmp), yaml.safe_dump(experiment), data, "d.jsonl"))


json_values = st.recursive(st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=20)),
                           lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=6), inner, max_size=4)),
                           max_leaves=12)
bodies = st.one_of(
    json_values.map(lambda v: json.dumps(v).encode()),
    st.fixed_dictionaries({}, optional={"text": json_values, "texts": json_values, "top_k": json_values,
                                        "extra": json_values}).map(lambda v: json.dumps(v).encode()),
    st.binary(max_size=64),
)


@seed(4)
@settings(max_examples=300, deadline=None, derandomize=True)
@given(body=bodies)
def test_random_request_bodies_get_a_parse_or_a_4xx(body):
    try:
        texts, top_k = parse_predict(body)
    except RequestError as exc:
        assert 400 <= exc.status < 500 and exc.message and "\n" not in exc.message
    else:
        assert texts and all(isinstance(t, str) and t.strip() for t in texts)
        assert top_k is None or (isinstance(top_k, int) and top_k >= 1)
