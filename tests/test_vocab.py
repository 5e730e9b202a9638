import json

import pytest

from trainables.text.base import ENCODER_FILE
from trainables.text.encoders import load_text_encoder
from trainables.text.vocab import PAD, UNK, VocabTextEncoder, char_tokens, word_tokens

TEXTS = ["a b a c", "a b d", "a e", "b a"]  # counts: a=5, b=3, c=d=e=1


def build(**kwargs):
    options = dict(tokens="word", max_length=16, vocab_size=100, min_freq=1)
    return VocabTextEncoder.build(TEXTS, **{**options, **kwargs})


def test_char_tokens_split_cjk_and_keep_latin_runs():
    assert char_tokens("我爱iPhone15 手机，好!") == ["我", "爱", "iPhone15", "手", "机", "，", "好", "!"]


def test_word_tokens_regex_and_jieba():
    assert word_tokens("Hello, world 42") == ["Hello", ",", "world", "42"]
    assert word_tokens("我爱北京天安门 ok") == ["我", "爱", "北京", "天安门", "ok"]


def test_build_orders_by_frequency_then_token():
    enc = build()
    assert enc.itos == [PAD, UNK, "a", "b", "c", "d", "e"]
    assert (enc.pad_id, enc.unk_id, len(enc)) == (0, 1, 7)


def test_min_freq_and_vocab_size_cap():
    assert build(min_freq=2).itos == [PAD, UNK, "a", "b"]
    assert build(vocab_size=3).itos == [PAD, UNK, "a"]


def test_unknown_tokens_and_truncation():
    enc = build(max_length=3)
    assert enc.encode(["a zzz b c d", ""]) == [[2, 1, 3], []]


def test_stop_words_removed_before_counting_and_truncation():
    enc = build(stop_words=["a"], max_length=2)
    assert "a" not in enc.stoi
    assert enc.encode(["a a b c"]) == [[enc.stoi["b"], enc.stoi["c"]]]


def test_save_load_round_trip(tmp_path):
    enc = VocabTextEncoder.build(["我爱北京", "北京欢迎你", "hello 北京"], tokens="char", max_length=4, vocab_size=100,
                                 min_freq=1, stop_words=["你"])
    enc.save(tmp_path)
    assert json.loads((tmp_path / ENCODER_FILE).read_text(encoding="utf-8"))["kind"] == "vocab"
    assert not [p for p in tmp_path.iterdir() if p.name != ENCODER_FILE]  # no temp files left behind
    loaded = load_text_encoder(tmp_path)
    probe = ["北京欢迎你 hello world", "爱你", ""]
    assert isinstance(loaded, VocabTextEncoder)
    assert (loaded.itos, loaded.max_length, loaded.tokens) == (enc.itos, enc.max_length, enc.tokens)
    assert loaded.encode(probe) == enc.encode(probe)


def test_unknown_token_kind_names_the_option():
    with pytest.raises(ValueError, match="model.tokens"):
        build(tokens="bpe")
