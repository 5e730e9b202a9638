"""Length-bucketed batches: every row once per epoch, little padding, and a label mix close to the data's
even where length predicts the label (data/example1: rows under ~16 characters are nearly all negative)."""
from __future__ import annotations

import csv

import numpy as np
import pytest

from orchestrator.config import ConfigError, TrainConfig, with_overrides
from orchestrator.config import ExperimentConfig
from tests.conftest import ROOT
from trainables.loop import FoldData, epoch_batches, label_strata
from trainables.batching import BucketBatchSampler


@pytest.fixture(scope="module")
def example1():
    """800 rows of data/example1 as (lengths, labels): characters + 2 special tokens, positive = 1."""
    with open(ROOT / "data" / "example1" / "train.csv", encoding="utf-8", newline="") as f:
        rows = [r for r in csv.DictReader(f) if r["label"] in ("negative", "positive")][:800]
    return np.array([min(len(r["sentence"]), 126) + 2 for r in rows]), np.array([r["label"] == "positive" for r in rows], dtype=int)


def fold(lengths, labels) -> FoldData:
    return FoldData(train_ids=[[1] * n for n in lengths], train_labels=np.asarray(labels), val_ids=[], val_labels=np.zeros(0, int),
                    pad_id=0, num_classes=2)


def padding_share(batches, lengths) -> float:
    real = sum(lengths[b].sum() for b in batches)
    return 1 - real / sum(len(b) * lengths[b].max() for b in batches)


def label_deviation(batches, labels) -> float:
    """Mean |positive share of a batch - positive share of the data| over full batches."""
    return float(np.mean([abs(labels[b].mean() - labels.mean()) for b in batches if len(b) == 16]))


def epochs(data, cfg, n=4):
    return [b for seed in range(2) for epoch in range(n) for b in epoch_batches(data, cfg, seed, epoch)]


@pytest.mark.parametrize("options", [{}, {"pool": 4}, {"noise": 0.3}, {"strata": "labels"}, {"pool": 3, "noise": 0.2, "strata": "labels"}])
def test_every_row_once_per_epoch_deterministic_and_fresh_each_epoch(example1, options):
    lengths, labels = example1
    if options.get("strata"):
        options = {**options, "strata": labels.tolist()}
    sampler = BucketBatchSampler(lengths.tolist(), 16, seed=3, **options)
    orders = []
    for epoch in (0, 1, 0):
        sampler.set_epoch(epoch)
        batches = list(sampler)
        assert len(batches) == len(sampler) == 50 and all(len(b) == 16 for b in batches)
        assert sorted(r for b in batches for r in b) == list(range(len(lengths)))
        orders.append(batches)
    assert orders[0] == orders[2] and orders[0] != orders[1]


def test_default_keeps_batches_length_homogeneous_and_label_mixed(example1):
    """The default (stratified buckets) against random batches and against plain length buckets, which
    sort 800 rows at once: little padding, and each batch's label mix as close to the data's as random
    batches get (plain buckets put the short, all-negative rows into one-class batches)."""
    lengths, labels = example1
    data = fold(lengths, labels)
    default = TrainConfig(batch_size=16)
    assert default.sampler == "bucket" and default.bucket_stratify
    ours = epochs(data, default)
    random_ = epochs(data, default.model_copy(update={"sampler": "random"}))
    plain = epochs(data, default.model_copy(update={"bucket_stratify": False}))

    assert padding_share(random_, lengths) > 0.5
    assert padding_share(ours, lengths) < 0.25  # most of the savings kept (plain buckets: < 0.1)
    assert padding_share(plain, lengths) < 0.1
    # length spread inside a batch stays within a small bound of a class's own length quantiles
    spread = np.array([lengths[b].max() - lengths[b].min() for b in ours])
    assert np.median(spread) <= 0.25 * np.median([lengths[b].max() - lengths[b].min() for b in random_])

    assert label_deviation(ours, labels) <= label_deviation(random_, labels)
    assert label_deviation(plain, labels) > 1.5 * label_deviation(random_, labels)
    one_class = lambda bs: np.mean([labels[b].min() == labels[b].max() for b in bs])
    assert one_class(ours) == 0 and one_class(plain) > 0.05
    for b in ours:  # both classes in every full batch, near the data's share of positives
        assert 0.25 <= labels[b].mean() <= 0.75


def test_noise_and_small_pools_trade_padding_for_mixing(example1):
    lengths, labels = example1
    data = fold(lengths, labels)
    base = TrainConfig(batch_size=16, bucket_stratify=False)
    share = {pool: padding_share(epochs(data, base.model_copy(update={"bucket_pool": pool})), lengths) for pool in (1, 4, 16, 50)}
    assert share[1] > share[4] > share[16] > share[50]  # pool 1 = random batches
    noisy = padding_share(epochs(data, base.model_copy(update={"bucket_noise": 0.3})), lengths)
    assert share[50] < noisy < share[1]


def test_label_strata_multilabel_takes_the_rarest_label():
    labels = np.array([[1, 1, 0], [1, 0, 0], [0, 0, 0], [1, 0, 1], [0, 1, 0]])
    data = FoldData(train_ids=[[1]] * 5, train_labels=labels, val_ids=[], val_labels=labels[:0], pad_id=0, num_classes=3, multilabel=True)
    assert label_strata(data) == [1, 0, -1, 2, 1]
    cfg = TrainConfig(sampler="bucket", batch_size=2, bucket_pool=50, bucket_noise=0.0, bucket_stratify=True)
    assert sorted(r for b in epoch_batches(data, cfg, 0, 0) for r in b) == list(range(5))


def test_sampler_options_are_validated():
    with pytest.raises(ValueError, match="noise"):
        BucketBatchSampler([3, 4], 2, noise=1.0)
    with pytest.raises(ValueError, match="strata"):
        BucketBatchSampler([3, 4], 2, strata=[0])
    with pytest.raises(ConfigError, match="bucket_pool"):
        with_overrides(ExperimentConfig(), {"train.bucket_pool": 0})


@pytest.mark.parametrize("sampler", ["bucket", "random"])
@pytest.mark.parametrize("world", [2, 3])
def test_every_rank_gets_the_same_number_of_batches_and_all_rows_are_covered(example1, sampler, world):
    """DDP all-reduces every step: a rank with one batch fewer would leave the others waiting forever.
    15 batches of 16 rows (240 rows) split over 2 or 3 ranks; the padding repeats the first batches."""
    lengths, labels = example1[0][:235], example1[1][:235]
    data = fold(lengths, labels)
    cfg = TrainConfig(sampler=sampler, batch_size=16)
    ranks = [epoch_batches(data, cfg, 0, 1, rank, world) for rank in range(world)]
    assert len({len(r) for r in ranks}) == 1 and len(ranks[0]) == -(-15 // world)
    assert sorted({i for r in ranks for b in r for i in b}) == list(range(235))
    assert sum(len(b) for b in epoch_batches(data, cfg, 0, 1)) == 235  # one rank: no padding
