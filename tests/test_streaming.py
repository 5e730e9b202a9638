"""data.streaming: the pool on Ray Data, folds by a per-row hash, workers fed from dataset shards, OOF
and test predictions written as Parquet. Units on the fold rule and the streamed batches; one run of
the smoke experiment streamed with K = 3 next to the same run in memory; bad input refused whole."""
from __future__ import annotations

import json
import math
import threading
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from orchestrator.config import ConfigError, load_config, with_overrides
from orchestrator.data import DataError, clean_text
from orchestrator.stream.source import TEST_FOLD, StreamedPool, check_streaming, estimated_rows, fold_of, row_keys, streaming
from tests.conftest import ROOT
from trainables.config import TrainConfig
from trainables.streamed_fold import StreamedFold

SMOKE = ROOT / "experiments" / "smoke.yaml"


def _keys(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 2**63, n, dtype=np.int64).astype(np.uint64) * np.uint64(2) + np.uint64(1)


def test_the_fold_rule_is_per_row_deterministic_and_balanced():
    keys = _keys(200_000)
    folds = fold_of(keys, 5, 0.2, 0.0)
    assert (fold_of(keys[::-1], 5, 0.2, 0.0) == folds[::-1]).all()  # a row's fold depends on the row alone
    share = np.bincount(folds + 1, minlength=6) / len(keys)
    assert abs(share[0] - 0.2) < 0.005 and np.abs(share[1:] - 0.16).max() < 0.005  # test 20%, 5 folds of 16%
    one = fold_of(keys, 1, 0.0, 0.1)  # one fold: 10% validate (fold 0), the rest only trains (fold 1)
    assert set(np.unique(one)) == {0, 1} and abs((one == 0).mean() - 0.1) < 0.005


def test_class_share_spread_measures_stratification():
    exact = StreamedPool(None, ["a", "b"], {0: [10, 30], 1: [20, 60], TEST_FOLD: [5, 5]}, None)
    assert exact.class_share_spread() == pytest.approx(0.0)
    skewed = StreamedPool(None, ["a", "b"], {0: [20, 20], 1: [10, 70]}, None)
    assert skewed.class_share_spread() == pytest.approx(0.5 - 30 / 120)
    assert skewed.train_counts(0) == [10, 70] and skewed.pool_rows() == 120


def test_streaming_switch_auto_and_refusals(tmp_path):
    cfg = load_config(SMOKE)
    assert not streaming(cfg)  # auto: 8.5k rows stay in memory
    assert streaming(with_overrides(cfg, {"data.streaming": True}))  # YAML's bare `on` is a boolean
    big = tmp_path / "big.csv"
    big.write_text("sentence,label\n" + "a fine review,positive\n" * 50_000)
    assert abs(estimated_rows(big, "csv") - 50_001) < 100
    broken = tmp_path / "broken.parquet"
    broken.write_bytes(b"not parquet at all")
    assert not streaming(with_overrides(cfg, {"data.train": str(broken)}))  # auto leaves the error to the reader's one line
    for overrides, message in [({"data.multilabel": True, "train.loss": "bce"}, "data.multilabel: streamed runs are single-label"),
                               ({"distill.enabled": True}, "distill.enabled"),
                               ({"train.sampler": "weighted"}, "train.sampler: weighted"),
                               ({"data.train": None, "data.val": None, "data.source": "bbc_news"}, "data.source='bbc_news'")]:
        with pytest.raises(ConfigError, match=r"data\.streaming: on cannot be combined with " + message.replace(".", r"\.")):
            check_streaming(with_overrides(cfg, {"data.streaming": "on", **overrides}))


def _pool(ray, rows: int = 500):
    rng = np.random.default_rng(0)
    lengths = rng.integers(1, 40, rows)
    frame = pd.DataFrame({"ids": [np.arange(2, 2 + n, dtype=np.int32) for n in lengths], "length": lengths, "label": rng.integers(0, 2, rows),
                          "fold": rng.integers(-1, 3, rows), "key": rng.permutation(rows)})
    return ray.data.from_pandas(frame).repartition(7).materialize(), frame


def test_a_streamed_fold_trains_on_each_of_its_rows_once_per_epoch_in_length_buckets(ray_session):
    ds, frame = _pool(ray_session)
    cfg = TrainConfig(batch_size=16)
    train_rows = frame[(frame.fold >= 0) & (frame.fold != 1)]
    fold = StreamedFold(ds.iterator(), ds.iterator(), 1, len(train_rows), [0, 0], 0, 2)
    epochs = [list(fold.train_batches(cfg, seed=3, epoch=e)) for e in range(2)]
    for batches in epochs:
        assert len(batches) == fold.train_batch_count(cfg, 3) == -(-len(train_rows) // 16)
        seen = Counter(len(ids) for b in batches for ids in b[0])
        assert seen == Counter(train_rows.ids.map(len))  # every training row once (told by its length multiset)
        assert sum(len(b[0]) for b in batches) == len(train_rows)
    assert [len(x) for x in epochs[0][0][0]] != [len(x) for x in epochs[1][0][0]]  # a new order each epoch
    spread = np.mean([max(map(len, b[0])) - min(map(len, b[0])) for b in epochs[0]])
    assert spread < 10  # sorted in windows: lengths 1..39 at random would spread ~30 within a batch

    model = torch.nn.Module()
    model.forward = lambda input_ids, attention_mask: torch.stack([attention_mask.sum(1).float(), -attention_mask.sum(1).float()], 1)
    logits, gold = fold.validation(model, 32, torch.device("cpu"))
    held = frame[frame.fold == 1].sort_values("key")  # returned in key order, whatever order the blocks came in
    assert (fold.val_keys == held.key.to_numpy()).all()
    assert (logits[:, 0].astype(int) == held.ids.map(len).to_numpy()).all() and (gold == held.label.to_numpy()).all()


def test_streamed_ranks_run_the_same_number_of_batches(ray_session):
    ds, frame = _pool(ray_session, 700)
    cfg = TrainConfig(batch_size=8)
    train_rows = int(((frame.fold >= 0) & (frame.fold != 0)).sum())
    shards = ds.streaming_split(2, equal=True)
    counts = {}

    def run(rank):
        fold = StreamedFold(shards[rank], None, 0, train_rows, [0, 0], 0, 2)
        counts[rank] = len(list(fold.train_batches(cfg, seed=0, epoch=0, rank=rank, world=2)))

    threads = [threading.Thread(target=run, args=(r,)) for r in range(2)]  # split shards are read together
    [t.start() for t in threads]
    [t.join(120) for t in threads]
    assert counts == {0: math.ceil(train_rows / 2 / 8), 1: math.ceil(train_rows / 2 / 8)}  # ranks' rows differ: padded or cut


def test_a_rank_without_training_rows_says_so(ray_session):
    ds, frame = _pool(ray_session, 50)
    only_test = ray_session.data.from_pandas(frame.assign(fold=-1)).materialize()
    fold = StreamedFold(only_test.iterator(), None, 0, 40, [0, 0], 0, 2)
    with pytest.raises(ValueError, match="fold 0: rank 0 of 1 got no training rows"):
        list(fold.train_batches(TrainConfig(batch_size=8), seed=0, epoch=0))


def _parquet(folder: Path) -> pd.DataFrame:
    import pyarrow.parquet as pq

    return pd.concat([pq.read_table(p).to_pandas() for p in sorted(folder.glob("*.parquet"))])


def test_a_streamed_k3_run_predicts_every_row_once_within_noise_of_the_in_memory_run(ray_session, tmp_path):
    from orchestrator.pipeline import run_experiment

    # the same rows both ways: all of example1's train.csv pooled into 3 folds, val.csv as the test file
    data = ROOT / "data" / "example1"
    base = with_overrides(load_config(SMOKE), {"runs_dir": str(tmp_path), "cv.folds": 3, "train.epochs": 1, "data.max_rows": None,
                                               "data.val": None, "data.test": str(data / "val.csv")})
    streamed = run_experiment(with_overrides(base, {"name": "streamed", "data.streaming": "on"}), log=lambda *_: None)
    memory = run_experiment(with_overrides(base, {"name": "memory", "data.streaming": "off"}), log=lambda *_: None)

    root = streamed.run.root
    oof, test = _parquet(root / "predictions" / "split=oof"), _parquet(root / "predictions" / "split=test")
    pooled = [clean_text(t, base.data.clean) for t in pd.read_csv(data / "train.csv").sentence]
    held = [clean_text(t, base.data.clean) for t in pd.read_csv(data / "val.csv").sentence]
    assert Counter(oof.key) == Counter(row_keys(pooled, base.seed).astype(np.int64))  # every pooled row once, out of fold
    assert Counter(test.text) == Counter(held)
    assert set(oof.fold) == {0, 1, 2} and set(test.fold) == {TEST_FOLD}
    sizes = streamed.run.stage("data")["sizes"]
    assert (len(oof), len(test)) == (sizes["pool"], sizes["test"])
    assert np.allclose(np.stack(oof.probs).sum(1), 1.0, atol=1e-5) and (np.stack(oof.probs).argmax(1) == oof.pred).all()
    assert streamed.run.stage("data")["class_share_spread"] < 0.08
    assert [r.fold for r in streamed.folds] == [0, 1, 2] and all((r.model_dir / "model.pt").is_file() for r in streamed.folds)
    # scored from counts, as sklearn scores the rows themselves
    from trainables.metrics import label_scores

    assert streamed.oof_metrics["macro_f1"] == pytest.approx(label_scores(oof.label.to_numpy(), oof.pred.to_numpy())["macro_f1"])
    assert streamed.report is None and not (root / "report.html").exists()
    # the same data and model in memory: the same quality up to the folds' sampling noise
    assert streamed.oof_metrics["macro_f1"] > 0.8 and memory.oof_metrics["macro_f1"] > 0.8
    assert abs(streamed.oof_metrics["macro_f1"] - memory.oof_metrics["macro_f1"]) < 0.03
    assert abs(streamed.test_metrics["macro_f1"] - memory.test_metrics["macro_f1"]) < 0.03


@pytest.mark.parametrize("content, message", [
    ("review,label\ngood,positive\n", r"train\.csv: no column 'sentence' \(data\.text_column\); columns are: review, label$"),
    ("sentence,label\ngood,positive\n,negative\n", r"train\.csv: a row's column 'sentence' has no text"),
    ("sentence,label\n\"unclosed,positive\n", r"train\.csv: cannot be read as csv \(data\.train\): "),
])
def test_bad_streamed_input_is_one_line_before_anything_is_written(ray_session, tmp_path, content, message):
    from orchestrator.pipeline import run_experiment

    (tmp_path / "train.csv").write_text(content)
    cfg = with_overrides(load_config(SMOKE), {"name": "bad", "runs_dir": str(tmp_path / "runs"), "data.streaming": "on",
                                              "data.train": str(tmp_path / "train.csv"), "data.val": None, "data.max_rows": None})
    with pytest.raises(DataError, match=message) as caught:
        run_experiment(cfg, log=lambda *_: None)
    assert "\n" not in str(caught.value)
    assert not (tmp_path / "runs").exists()


def test_a_test_file_label_unseen_in_training_is_named(ray_session, tmp_path):
    from orchestrator.pipeline import run_experiment

    (tmp_path / "test.csv").write_text("sentence,label\n还不错,neutral\n")
    cfg = with_overrides(load_config(SMOKE), {"name": "bad", "runs_dir": str(tmp_path / "runs"), "data.streaming": "on",
                                              "data.test": str(tmp_path / "test.csv")})
    with pytest.raises(DataError, match=r"test\.csv: column 'label': label 'neutral' does not occur in the training data"):
        run_experiment(cfg, log=lambda *_: None)
    assert not (tmp_path / "runs").exists()


def test_the_streamed_vocabulary_is_the_in_memory_one_and_only_its_top_reaches_the_driver(ray_session, tmp_path, monkeypatch):
    """Every row carries a token of its own (an id): the distributed count still hands the driver only
    the counts of the fold rows and of each block's top tokens, and builds VocabTextEncoder.build's vocabulary."""
    import orchestrator.stream.source as source
    from trainables.text.vocab import VocabTextEncoder

    rows = pd.read_csv(ROOT / "data" / "example1" / "train.csv").head(3000)
    rows["sentence"] = [f"{t} id{i}x" for i, t in enumerate(rows["sentence"])]
    rows.loc[::7, "sentence"] = rows["sentence"][::7] + " 重复"  # a shared token with a tie-prone count
    rows.to_csv(tmp_path / "train.csv", index=False)
    cfg = with_overrides(load_config(SMOKE), {"data.streaming": "on", "data.train": str(tmp_path / "train.csv"), "data.val": None,
                                              "data.max_rows": None, "model.vocab_size": 300, "model.tokens": "word", "cv.folds": 3})
    seen = []
    real = VocabTextEncoder.from_counts
    monkeypatch.setattr(VocabTextEncoder, "from_counts", lambda counts, *args: seen.append(len(counts)) or real(counts, *args))
    pool = source.stream_pool(cfg)
    texts = [clean_text(t, cfg.data.clean) for t in rows["sentence"]]
    built = VocabTextEncoder.build(texts, "word", cfg.model.max_length, 300, cfg.model.min_freq)
    assert pool.encoder.itos == built.itos and len(built.itos) == 300
    assert seen[0] < 300 * 8  # the blocks' top 298 each, not the 3,000+ distinct tokens


def test_info_on_a_streamed_config_counts_on_ray_data_and_never_reads_the_file_in_memory(ray_session, tmp_path, monkeypatch, capsys):
    import orchestrator.modelinfo as modelinfo
    from orchestrator.cli import main
    from orchestrator.stream.source import count_pool
    from trainables.models import build_model

    def in_memory(cfg):
        raise AssertionError("validate() read the data in memory")

    monkeypatch.setattr(modelinfo, "validate", in_memory)
    cfg = with_overrides(load_config(SMOKE), {"data.streaming": "on"})
    (tmp_path / "streamed.yaml").write_text(json.dumps(cfg.model_dump(mode="json")))
    assert main(["info", str(tmp_path / "streamed.yaml")]) == 0
    counted = count_pool(cfg)
    params = sum(p.numel() for p in build_model(cfg.model, 2, counted.encoder, classes=counted.classes).parameters())
    assert counted.classes == ["negative", "positive"] and len(counted.encoder.itos) > 100
    assert f"model: small:textcnn (TextCNN), 2 classes  parameters: {params:,}" in capsys.readouterr().out


def test_a_uri_folder_of_parquet_files_streams_and_a_missing_or_in_memory_uri_is_one_line(ray_session, tmp_path):
    """data.train as a URI (file:// here; s3:// goes through the same pyarrow file systems): a folder of
    Parquet files with data.format parquet is read by Ray Data; a URI with nothing there, a folder
    without data.format, and a URI with streaming off each get one line naming it."""
    from orchestrator.stream.source import stream_pool

    rows = pd.read_csv(ROOT / "data" / "example1" / "train.csv").head(900)
    folder = tmp_path / "reviews"
    folder.mkdir()
    for part in range(3):
        rows.iloc[part * 300 : (part + 1) * 300].to_parquet(folder / f"part-{part}.parquet")
    uri = folder.as_uri()
    (tmp_path / "exp.yaml").write_text(f"data: {{train: '{uri}', format: parquet, text_column: sentence, label_column: label, streaming: auto}}\n")
    cfg = with_overrides(load_config(tmp_path / "exp.yaml"), {"cv.folds": 3, "model.kind": "small", "model.arch": "textcnn"})
    assert cfg.data.train == uri and streaming(cfg)  # kept as given, and a URI streams
    pool = stream_pool(cfg)
    assert pool.pool_rows() == 900 and pool.classes == sorted(set(rows["label"]))
    with pytest.raises(DataError, match=rf"^{uri}/nothing: no such file or folder \(data.train\)$"):
        stream_pool(with_overrides(cfg, {"data.train": f"{uri}/nothing"}))
    with pytest.raises(DataError, match=r"a folder \(data.train\); set data.format"):
        stream_pool(with_overrides(cfg, {"data.format": "auto"}))
    from orchestrator.validate import validate

    with pytest.raises(DataError, match=r"a URI \(data.train\) is read by Ray Data only: set data.streaming: on$"):
        validate(with_overrides(cfg, {"data.streaming": "off"}))
