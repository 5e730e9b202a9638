"""The training data as a Ray Data dataset (``data.streaming``): read, checked, labelled, split into
folds and tokenized on the cluster, kept in the object store (spilled to disk past its budget). The
driver holds only counts: the classes, rows per fold and class, and a small model's vocabulary.

Folds come from a per-row rule, so no process ever needs the whole table: a row's 64-bit hash of
(seed, cleaned text) as a number u in [0, 1) picks its place: u < test_fraction -> the test split
(fold -1) when no test file is given, else fold floor(K * (u - test_fraction) / (1 - test_fraction)).
Hashes are uniform and independent of the label, so every fold holds each class in the share the data
does, up to sampling noise (stratified in expectation: ``class_share_spread`` measures it), and
identical texts always share a fold (a duplicate never sits on both sides of a fold). With one fold,
val_fraction of the rows (by the same u) validate and the rest (fold 1) only train.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from itertools import chain
from pathlib import Path
from typing import Any, Optional

import numpy as np

from orchestrator.config import ConfigError, DataConfig, ExperimentConfig, is_uri
from orchestrator.data import (DataError, check_columns, class_labels, clean_text, data_format, existing_file, existing_uri,
                               label_name, load_stop_words)
from trainables.text.base import TextEncoder

STREAM_FORMATS = ("csv", "tsv", "jsonl", "parquet")
# data.streaming: auto streams a training file of at least this many rows (estimated; docs/benchmarks.md, data_scale)
AUTO_ROWS = 2_000_000
TEST_FOLD = -1
BATCH_ROWS = 4096  # rows per map_batches call
COUNT_PARTITIONS = 4  # of the counting groupby: its result is a few thousand rows (a vocabulary)


def streaming(cfg: ExperimentConfig) -> bool:
    """Whether this run streams its data (``data.streaming``; auto: a training file of AUTO_ROWS rows or more)."""
    data = cfg.data
    if data.streaming != "auto":
        return data.streaming == "on"
    if data.source is not None:
        return False
    if is_uri(data.train):  # s3://...: Ray Data reads it, this process does not
        return True
    file = Path(data.train)
    try:
        fmt = data_format(data, file)
        return fmt in STREAM_FORMATS and estimated_rows(file, fmt) >= AUTO_ROWS
    except Exception:  # unreadable, unknown or broken: the in-memory reader names the problem in its one line
        return False


def estimated_rows(file: Path, fmt: str) -> int:
    """Parquet: the footer's row count; text formats: file size / mean line length of the first MiB."""
    if fmt == "parquet":
        import pyarrow.parquet as pq

        return pq.ParquetFile(file).metadata.num_rows
    with open(file, "rb") as handle:
        head = handle.read(1 << 20)
    return int(file.stat().st_size / max(1, len(head) / max(1, head.count(b"\n"))))


def check_streaming(cfg: ExperimentConfig) -> None:
    """What streaming does not do (yet), refused before anything runs, one line each."""
    data = cfg.data
    why = None
    if data.source is not None:
        why = f"data.source={data.source!r} is an in-memory set; streaming reads data.train files"
    elif data.multilabel:
        why = "data.multilabel: streamed runs are single-label"
    elif cfg.train.sampler == "weighted":
        why = "train.sampler: weighted samples from the whole fold; use bucket or random"
    elif cfg.distill.enabled:
        why = "distill.enabled: the student trains on the teachers' logits of an in-memory pool"
    elif cfg.prune.mode != "none":
        why = f"prune.mode: {cfg.prune.mode} measures importance on the in-memory pool"
    elif cfg.export.onnx or cfg.export.hf:
        why = "export: its parity checks read the in-memory evaluation split"
    elif cfg.train.tune_thresholds:
        why = "train.tune_thresholds: thresholds are tuned on in-memory OOF predictions"
    elif cfg.tracking.mlflow:
        why = "tracking.mlflow: a streamed run is not tracked yet"
    elif cfg.serve.enabled:
        why = "serve.enabled: a streamed run does not serve at its end yet"
    if why is not None:
        raise ConfigError(f"data.streaming: on cannot be combined with {why} (set data.streaming: off)")
    for key in ("train", "val", "test"):
        path = getattr(data, key)
        if path:
            fmt = data_format(data, _located(path, f"data.{key}", data))
            if fmt not in STREAM_FORMATS:
                raise ConfigError(f"data.streaming: data.{key} is {fmt}; streaming reads {', '.join(STREAM_FORMATS)}")


@dataclass
class StreamedPool:
    """The tokenized rows (columns text, ids, label, fold, key) and what the driver knows of them."""

    dataset: Any                        # ray.data.MaterializedDataset
    classes: list[str]
    counts: dict[int, list[int]]        # fold (-1: test) -> rows per class
    encoder: TextEncoder

    def rows(self, fold: Optional[int] = None) -> int:
        return sum(sum(c) for f, c in self.counts.items() if fold is None or f == fold)

    def pool_rows(self) -> int:
        """Rows in the folds (every row but the test split's)."""
        return self.rows() - self.rows(TEST_FOLD)

    def train_counts(self, fold: int) -> list[int]:
        """Rows per class that train fold ``fold`` (every pooled row outside it)."""
        per = [c for f, c in self.counts.items() if f not in (fold, TEST_FOLD)]
        return np.sum(per, axis=0).astype(int).tolist() if per else [0] * len(self.classes)

    def class_share_spread(self) -> float:
        """Largest gap between a class's share in one fold and its share in the pool (0 = exactly stratified)."""
        pooled = {f: np.asarray(c, float) for f, c in self.counts.items() if f != TEST_FOLD}
        total = np.sum(list(pooled.values()), axis=0)
        return float(max(np.abs(c / max(c.sum(), 1) - total / total.sum()).max() for c in pooled.values()))


def _read(path: str, setting: str, data: DataConfig):
    """One file as a Ray Data dataset of two string columns, text and label (checked against its schema)."""
    import pyarrow as pa
    import pyarrow.csv as pa_csv
    import ray.data

    file = _located(path, setting, data)
    fmt = data_format(data, file)
    wanted = [data.text_column, data.label_column]
    def reader():
        if fmt in ("csv", "tsv"):
            return ray.data.read_csv(file, file_extensions=None,
                                     parse_options=pa_csv.ParseOptions(delimiter="\t" if fmt == "tsv" else ",", newlines_in_values=True),
                                     convert_options=pa_csv.ConvertOptions(column_types={c: pa.string() for c in wanted}))
        if fmt == "jsonl":
            return ray.data.read_json(file, lines=True, file_extensions=None)
        return ray.data.read_parquet(file, file_extensions=None)

    ds = _guarded(reader, f"{file}: cannot be read as {fmt} ({setting})")
    check_columns(file, _guarded(lambda: ds.schema().names, f"{file}: cannot be read as {fmt} ({setting})"), data)
    return ds.select_columns(wanted), file


def _located(path: str, setting: str, data: DataConfig) -> str:
    """A local file checked by ``existing_file`` (as an absolute path) or a URI by ``existing_uri``."""
    return existing_uri(path, setting, data) if is_uri(path) else str(existing_file(path, setting))


def _causes(exc: Optional[BaseException]) -> list[BaseException]:
    """``exc`` and what it wraps: Ray's wrappers (``cause``), then the Python cause/context chain."""
    wrapped: list[BaseException] = []
    while exc is not None and all(exc is not e for e in wrapped):
        wrapped.append(exc)
        exc = getattr(exc, "cause", None) or exc.__cause__ or exc.__context__
    return wrapped


def _data_error(exc: BaseException) -> Optional[DataError]:
    """The DataError a map task raised on a row, from Ray's wrapping of it (its cause chain, or the
    remote traceback it carries as text)."""
    for inner in _causes(exc):
        if isinstance(inner, DataError):
            return inner
        for line in reversed(str(inner).splitlines()):
            if line.startswith(f"{DataError.__module__}.DataError: "):
                return DataError(line.split(": ", 1)[1])
    return None


def _guarded(run, what: str):
    """``run()`` (a Ray Data action); a DataError raised on a row comes back as itself, any other
    failure as a DataError naming ``what`` with the first line of its message."""
    try:
        return run()
    except DataError:
        raise
    except Exception as exc:
        found = _data_error(exc)
        if found is not None:
            raise DataError(str(found)) from None
        wrapped = _causes(exc)
        arrow = [e for e in wrapped if type(e).__module__.startswith("pyarrow")]
        inner = (arrow or wrapped)[-1]  # the reader's own error, below Ray's wrappers
        first = next((line.strip() for line in str(inner).splitlines() if line.strip()), type(inner).__name__)
        raise DataError(f"{what}: {first}") from None


class _Labelled:
    """map_batches: clean texts, name labels, hash rows to folds (module docstring); bad rows raise DataError."""

    def __init__(self, data: DataConfig, source: str, index: Optional[dict[str, int]], folds: int, seed: int,
                 fixed_fold: Optional[int] = None, val_fraction: float = 0.0):
        self.data, self.source, self.index, self.folds, self.fixed_fold = data, source, index, folds, fixed_fold
        self.val_fraction, self.seed = val_fraction, seed

    def __call__(self, batch):
        import pandas as pd

        text_col, label_col = self.data.text_column, self.data.label_column
        texts = [clean_text(t, self.data.clean) if isinstance(t, str) else t for t in batch[text_col]]
        for t, raw in zip(texts, batch[text_col]):
            if not isinstance(t, str) or not t.strip():
                raise DataError(f"{self.source}: a row's column '{text_col}' has no text (got {raw!r:.60})")
        names = []
        for value in batch[label_col]:
            name = label_name(value.item() if hasattr(value, "item") else value)
            if not name:
                raise DataError(f"{self.source}: column '{label_col}': {value!r:.60} is not a label name or an integer id")
            names.append(name)
        out = pd.DataFrame({"text": texts, "name": names})
        key = row_keys(texts, self.seed)
        out["key"] = key.astype(np.int64)  # the bits as a signed column: Parquet and pandas keep int64 whole
        if self.fixed_fold is not None:
            out["fold"] = self.fixed_fold
        else:
            out["fold"] = fold_of(key, self.folds, self.data.test_fraction if not self.data.test else 0.0, self.val_fraction)
        if self.index is not None:
            unknown = [n for n in names if n not in self.index]
            if unknown:
                raise DataError(f"{self.source}: column '{label_col}': label {unknown[0]!r} does not occur in the training data")
            out["label"] = [self.index[n] for n in names]
        return out


def row_keys(texts, seed: int) -> np.ndarray:
    """Each (cleaned) text's 64-bit hash under ``seed`` (pandas' SipHash: the same on every machine)."""
    import pandas as pd

    return pd.util.hash_pandas_object(pd.Series(list(texts), dtype=object), index=False, hash_key=f"{seed:016d}"[-16:]).to_numpy(np.uint64)


def fold_of(key: np.ndarray, folds: int, test_fraction: float, val_fraction: float) -> np.ndarray:
    """Each row's fold from its 64-bit hash (module docstring): -1 test, 0..K-1; with K = 1, 0 validates
    and 1 only trains."""
    u = (key >> np.uint64(11)).astype(np.float64) / float(1 << 53)  # the top 53 bits: exact in a double
    rest = np.clip((u - test_fraction) / (1.0 - test_fraction), 0.0, np.nextafter(1.0, 0.0))
    fold = (rest * folds).astype(np.int64) if folds > 1 else np.where(rest < val_fraction, 0, 1)
    return np.where(u < test_fraction, TEST_FOLD, fold)


class _Tokenized:
    """map_batches: token ids of the cleaned texts (the run's encoder) and their count."""

    def __init__(self, encoder: TextEncoder):
        self.encoder = encoder

    def __call__(self, batch):
        batch["ids"] = [np.asarray(x, dtype=np.int32) for x in self.encoder.encode(list(batch["text"]))]
        batch["length"] = batch["ids"].map(len).astype(np.int32)  # lets a worker bucket a window without a loop
        return batch


class _Counted:
    """map_batches: the batch's counts as rows (kind, key, n): ("fold", "<file>|<fold>|<label name>") for
    every row (file: its index in the run's files, 0 = data.train) and, for a small model's vocabulary,
    ("token", token) over its training rows (fold >= 0)."""

    def __init__(self, labelled: _Labelled, file: int, tokenize=None):
        self.labelled, self.file, self.tokenize = labelled, file, tokenize

    def __call__(self, batch):
        import pandas as pd

        rows = self.labelled(batch)
        folds = Counter(f"{self.file}|{f}|{n}" for f, n in zip(rows["fold"], rows["name"]))
        tokens = Counter(chain.from_iterable(self.tokenize(text) for text, f in zip(rows["text"], rows["fold"]) if f != TEST_FOLD)
                         if self.tokenize is not None else ())
        return pd.DataFrame({"kind": ["fold"] * len(folds) + ["token"] * len(tokens), "key": [*folds, *tokens],
                             "n": [*folds.values(), *tokens.values()]})


class _Kept:
    """map_batches over the counting groupby's blocks: every ("fold", ...) count, and of the tokens only
    the block's ``keep`` most frequent seen ``min_freq`` times (ties by the token string). A token sits in
    one block after the groupby, so the blocks' tops hold the overall top: the driver gets a few
    thousand rows however many distinct tokens the data has (an id in every text: one each);
    ``VocabTextEncoder.from_counts`` picks the vocabulary from the rows kept."""

    def __init__(self, keep: int, min_freq: int, special: tuple[str, ...]):
        self.keep, self.min_freq, self.special = keep, min_freq, special

    def __call__(self, batch):
        import pandas as pd

        tokens = batch[(batch["kind"] == "token") & (batch["n"] >= self.min_freq) & ~batch["key"].isin(self.special)]
        top = tokens.sort_values(["n", "key"], ascending=[False, True], kind="stable").head(self.keep)
        return pd.concat([batch[batch["kind"] == "fold"], top])


@dataclass
class Counted:
    """Pass 1's outcome: the files as Ray datasets (dataset, source, fixed fold, val fraction), the
    classes, rows per fold and class, and the run's text encoder."""

    files: list[tuple]
    classes: list[str]
    index: dict[str, int]
    counts: dict[int, list[int]]
    encoder: TextEncoder


def stream_pool(cfg: ExperimentConfig) -> StreamedPool:
    """Read, check, label, fold and tokenize the data on the cluster (Ray must be up); raises DataError
    with one line before anything is written. Two passes over the files: one counts (``count_pool``),
    one labels, tokenizes and keeps the pool in the object store, the only copy of the data that is
    ever held."""
    counted, data, k = count_pool(cfg), cfg.data, cfg.cv.folds
    parts = [ds.map_batches(_Labelled(data, source, counted.index, k, cfg.seed, fold, vf), batch_format="pandas", batch_size=BATCH_ROWS)
             for ds, source, fold, vf in counted.files]
    labelled = (parts[0].union(*parts[1:]) if len(parts) > 1 else parts[0]).drop_columns(["name"])
    pool = _guarded(lambda: labelled.map_batches(_Tokenized(counted.encoder), batch_format="pandas", batch_size=BATCH_ROWS).materialize(),
                    counted.files[0][1])
    return StreamedPool(pool, counted.classes, counted.counts, counted.encoder)


def count_pool(cfg: ExperimentConfig) -> Counted:
    """Pass 1 (Ray must be up): every row read and checked, counted per (file, fold, label name) and,
    for a small model, per token (a distributed groupby): the classes, fold sizes and vocabulary."""
    from ray.data.aggregate import Sum

    from trainables.text.encoders import build_text_encoder
    from trainables.text.vocab import PAD, UNK, VocabTextEncoder

    data, k = cfg.data, cfg.cv.folds
    train_ds, train_source = _read(data.train, "data.train", data)
    if data.max_rows:
        train_ds = train_ds.limit(data.max_rows)
    # train rows: hashed folds; with one fold and no val file, val_fraction of them validate (fold 0)
    files = [(train_ds, train_source, None, data.val_fraction if k == 1 and not data.val else 0.0)]
    if data.val:  # pooled into the folds, or with one fold the validation rows themselves
        files.append((*_read(data.val, "data.val", data), 0 if k == 1 else None, 0.0))
    if data.test:
        files.append((*_read(data.test, "data.test", data), TEST_FOLD, 0.0))
    stop_words = load_stop_words(data.stop_words) if data.stop_words else []
    tokenize = VocabTextEncoder([PAD, UNK], cfg.model.tokens, cfg.model.max_length, stop_words).tokenize if cfg.model.kind == "small" else None
    counted = [ds.map_batches(_Counted(_Labelled(data, source, None, k, cfg.seed, fold, vf), i, tokenize), batch_format="pandas",
                              batch_size=BATCH_ROWS) for i, (ds, source, fold, vf) in enumerate(files)]
    union = counted[0].union(*counted[1:]) if len(counted) > 1 else counted[0]
    kept = _Kept(max(0, cfg.model.vocab_size - 2), cfg.model.min_freq, (PAD, UNK))
    table = _guarded(lambda: union.groupby(["kind", "key"], num_partitions=COUNT_PARTITIONS).aggregate(Sum("n", alias_name="n"))
                     .map_batches(kept, batch_format="pandas", batch_size=None).to_pandas(), train_source)
    per_fold = [(int(file), int(fold), name, int(n)) for kind, key, n in zip(table["kind"], table["key"], table["n"])
                if kind == "fold" for file, fold, name in [key.split("|", 2)]]
    labels = class_labels(data, [[name] for file, _, name, _ in per_fold if file == 0], train_source)
    counts: dict[int, list[int]] = {}
    for file, fold, name, n in sorted(per_fold):
        if name not in labels.index:
            raise DataError(f"{files[file][1]}: column '{data.label_column}': label {name!r} {labels.unknown}")
        counts.setdefault(fold, [0] * len(labels.classes))[labels.index[name]] += n
    _check_folds(counts, k, labels.classes, train_source)
    if tokenize is not None:
        model = cfg.model
        encoder = VocabTextEncoder.from_counts({key: int(n) for kind, key, n in zip(table["kind"], table["key"], table["n"]) if kind == "token"},
                                               model.tokens, model.max_length, model.vocab_size, model.min_freq, stop_words)
    else:
        encoder = build_text_encoder(cfg.model, [], stop_words)
    return Counted(files, labels.classes, labels.index, counts, encoder)


def _check_folds(counts: dict[int, list[int]], k: int, classes: list[str], source: str) -> None:
    folds = range(k) if k > 1 else (0,)
    for fold in folds:
        if fold not in counts:
            raise DataError(f"{source}: fold {fold} of {k} got no rows (too few rows for cv.folds={k})")
    empty = [classes[c] for c in range(len(classes)) if sum(counts[f][c] for f in counts if f != TEST_FOLD) == 0]
    if empty:
        raise DataError(f"{source}: class '{empty[0]}' has no training rows")
