"""T5 text-to-text classification on a tiny random T5 with a sentencepiece tokenizer trained here
from the tweet data: class-name scores, the seq2seq loss against T5's own loss, training with the
one loop (Adafactor, weighted sampler), the model directory, the ensemble and the metrics."""
import io
import json
from pathlib import Path

import numpy as np
import pytest
import sentencepiece
import torch
import transformers

from orchestrator.config import ConfigError, ModelConfig, TrainConfig, parse_config
from orchestrator.evaluate.ensemble import Ensemble
from trainables.inference import predict_logits
from trainables.loop import FoldData, Trainer
from trainables.tricks.losses import build_loss
from trainables.metrics import compute_metrics, probabilities
from trainables.models import build_model, load_model_dir, save_model_dir
from trainables.text.encoders import build_text_encoder
from trainables.models.t5 import T5Classifier
from trainables.text.t5 import T5TextEncoder
from trainables.batching import collate

DATA = Path(__file__).resolve().parents[1] / "data" / "tweet_eval_emotion"
CLASSES = list(json.loads((DATA / "classes_map.json").read_text()))  # anger, joy, optimism, sadness
PREFIX = "emotion: "
TWEETS = [row["text"] for row in json.loads((DATA / "train.json").read_text())[:300]]
TOY = [("so happy and grateful today", 1), ("love this sunny day", 1), ("what a great win", 1),
       ("happy happy joy", 1), ("best day ever", 1), ("smiling all day", 1),
       ("so sad and tired", 3), ("i miss you and cry", 3), ("lost again today", 3),
       ("sad news tonight", 3), ("worst day ever", 3), ("crying all night", 3)]


@pytest.fixture(scope="module")
def encoder():
    """T5's own tokenizer class over a 300-piece unigram model trained from tweets: <pad>=0, </s>=1, <unk>=2."""
    model = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(TWEETS + [PREFIX + " ".join(CLASSES)] * 5), model_writer=model, vocab_size=300,
        model_type="unigram", pad_id=0, eos_id=1, unk_id=2, bos_id=-1, minloglevel=2)
    sp = sentencepiece.SentencePieceProcessor(model_proto=model.getvalue())
    vocab = [(sp.id_to_piece(i), sp.get_score(i)) for i in range(sp.get_piece_size())]
    return T5TextEncoder(transformers.T5Tokenizer(vocab=vocab, extra_ids=0), max_length=32, prefix=PREFIX)


def tiny_t5(encoder, seed=0):
    torch.manual_seed(seed)
    config = transformers.T5Config(
        vocab_size=len(encoder.tokenizer), d_model=32, d_kv=16, d_ff=48, num_layers=2, num_heads=2,
        relative_attention_num_buckets=8, pad_token_id=encoder.pad_id, eos_token_id=encoder.tokenizer.eos_token_id,
        decoder_start_token_id=encoder.pad_id, dropout_rate=0.0)  # dropout only slows a from-scratch toy run
    return build_model(model_cfg(), len(CLASSES), encoder, hf_config=config, classes=CLASSES)


def model_cfg():
    return ModelConfig(kind="t5", name="tiny-t5", max_length=32, prefix=PREFIX)


def batch(encoder, texts):
    b = collate(encoder.encode(texts), None, encoder.pad_id)
    return b["input_ids"], b["attention_mask"]


def lm_nll(model, encoder, text, class_index):
    """-log p(class name | text) from T5ForConditionalGeneration's own loss (a token mean) times the length."""
    target = torch.tensor([model.class_token_ids[class_index]])
    input_ids, mask = batch(encoder, [text])
    with torch.no_grad():
        return model.t5(input_ids=input_ids, attention_mask=mask, labels=target).loss.item() * target.shape[1]


def test_text_encoder_prefixes_texts_and_ends_targets_with_eos(encoder, tmp_path):
    tok = encoder.tokenizer
    assert encoder.encode(["i am fine"]) == tok([PREFIX + "i am fine"])["input_ids"]
    long = encoder.encode(["word " * 100])[0]
    assert len(long) == 32 and long[: 3] == tok(PREFIX)["input_ids"][:3] and long[-1] == tok.eos_token_id
    targets = encoder.target_ids(CLASSES)
    assert all(t[-1] == tok.eos_token_id for t in targets) and len({tuple(t) for t in targets}) == len(CLASSES)
    assert [tok.decode(t, skip_special_tokens=True) for t in targets] == CLASSES
    encoder.save(tmp_path)
    loaded = T5TextEncoder.load(tmp_path)
    assert (loaded.prefix, loaded.max_length) == (PREFIX, 32) and loaded.encode(TWEETS[:5]) == encoder.encode(TWEETS[:5])


def test_scores_are_class_name_log_probs_of_t5(encoder):
    model = tiny_t5(encoder).eval()
    texts = TWEETS[:3]
    with torch.no_grad():
        scores = model(*batch(encoder, texts))
    assert scores.shape == (3, len(CLASSES)) and bool((scores < 0).all())
    expected = torch.tensor([[-lm_nll(model, encoder, t, c) for c in range(len(CLASSES))] for t in texts])
    torch.testing.assert_close(scores, expected, atol=1e-4, rtol=1e-5)  # batched + padded = one by one


def test_seq2seq_loss_is_t5_loss_on_the_gold_name_and_ce_renormalises_it(encoder):
    model = tiny_t5(encoder).eval()
    texts, gold = TWEETS[3:7], torch.tensor([0, 1, 2, 3])
    with torch.no_grad():
        scores = model(*batch(encoder, texts))
    seq2seq = build_loss(TrainConfig(loss="seq2seq"), len(CLASSES), multilabel=False)(scores, gold)
    expected = np.mean([lm_nll(model, encoder, t, int(y)) for t, y in zip(texts, gold)])
    assert seq2seq.item() == pytest.approx(expected, rel=1e-5)
    # ce is the same NLL normalised over the class set instead of over every possible output string
    ce = build_loss(TrainConfig(loss="ce"), len(CLASSES), multilabel=False)(scores, gold)
    assert ce.item() == pytest.approx(seq2seq.item() + scores.logsumexp(1).mean().item(), rel=1e-5)


def test_a_local_checkpoint_builds_like_a_hub_id(encoder, tmp_path):
    """The path the pipeline takes for model.name = t5-small: tokenizer and weights from one folder."""
    model = tiny_t5(encoder).eval()
    model.t5.save_pretrained(tmp_path)
    encoder.tokenizer.save_pretrained(tmp_path)
    cfg = model_cfg().model_copy(update={"name": str(tmp_path)})
    text_encoder = build_text_encoder(cfg, train_texts=[])
    assert isinstance(text_encoder, T5TextEncoder) and text_encoder.encode(TWEETS[:3]) == encoder.encode(TWEETS[:3])
    rebuilt = build_model(cfg, len(CLASSES), text_encoder, classes=CLASSES).eval()
    with torch.no_grad():
        torch.testing.assert_close(rebuilt(*batch(encoder, TWEETS[:3])), model(*batch(encoder, TWEETS[:3])))


def test_class_names_must_tokenize_apart(encoder):
    model = tiny_t5(encoder)
    with pytest.raises(ValueError, match="same tokens"):
        T5Classifier(model.t5, [[5, 1], [5, 1]])
    with pytest.raises(ValueError, match="class names"):
        build_model(model_cfg(), len(CLASSES), encoder, hf_config=model.t5.config)


@pytest.mark.parametrize("loss", ["seq2seq", "ce"])
def test_loop_separates_a_toy_problem_and_the_model_dir_reloads(loss, encoder, tmp_path):
    model = tiny_t5(encoder)
    ids, labels = encoder.encode([t for t, _ in TOY]), np.array([y for _, y in TOY])
    data = FoldData(ids, labels, ids, labels, pad_id=encoder.pad_id, num_classes=len(CLASSES))
    cfg = TrainConfig(epochs=16, batch_size=4, optimizer="adafactor", lr=3e-3, schedule="constant", warmup_ratio=0.0,
                      weight_decay=0.0, loss=loss, sampler="weighted", early_stopping_patience=None, metric="loss")
    trainer = Trainer(model, data, cfg, seed=0)
    history = trainer.fit().history
    assert history[-1]["train_loss"] < history[0]["train_loss"] / 2
    assert history[-1]["val_accuracy"] == 1.0

    meta = {"classes": CLASSES, "multilabel": False, "threshold": 0.5}
    save_model_dir(tmp_path, model, encoder, model_cfg(), meta)
    assert json.loads((tmp_path / "model.json").read_text())["class_token_ids"] == encoder.target_ids(CLASSES)
    loaded, loaded_encoder, _ = load_model_dir(tmp_path)
    logits = predict_logits(model, ids, encoder.pad_id, batch_size=5)
    reloaded = predict_logits(loaded, loaded_encoder.encode([t for t, _ in TOY]), loaded_encoder.pad_id, batch_size=5)
    assert np.abs(reloaded - logits).max() <= 1e-6

    scores = compute_metrics(labels, probabilities(logits, multilabel=False), multilabel=False)
    assert scores == {"accuracy": 1.0, "macro_f1": 1.0, "micro_f1": 1.0, "weighted_f1": 1.0}
    prediction = Ensemble([tmp_path, tmp_path], device="cpu").predict([t for t, _ in TOY] + TWEETS[:20])
    assert [names[0] for names in prediction.labels[: len(TOY)]] == [CLASSES[y] for y in labels]
    assert all(len(names) == 1 and names[0] in CLASSES for names in prediction.labels)  # never an invalid label


def test_model_dir_refuses_a_tokenizer_that_splits_class_names_differently(encoder, tmp_path):
    save_model_dir(tmp_path, tiny_t5(encoder), encoder, model_cfg(), {"classes": CLASSES, "multilabel": False})
    meta = json.loads((tmp_path / "model.json").read_text())
    meta["class_token_ids"][0] = [3, 1]
    (tmp_path / "model.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="splits the class names differently"):
        load_model_dir(tmp_path)


def test_config_cross_checks_for_t5():
    data = {"train": "a.json"}
    assert parse_config({"data": data, "model": {"kind": "t5"}, "train": {"loss": "seq2seq"}}).train.loss == "seq2seq"
    with pytest.raises(ConfigError, match=r"train.loss: 'seq2seq' needs model.kind=t5"):
        parse_config({"data": data, "train": {"loss": "seq2seq"}})
    with pytest.raises(ConfigError, match=r"model.kind: 't5' scores one class name per text"):
        parse_config({"data": {**data, "multilabel": True}, "model": {"kind": "t5"}, "train": {"loss": "bce"}})
