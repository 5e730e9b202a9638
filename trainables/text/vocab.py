"""Character / word tokenization and a frequency vocabulary for models trained from scratch.

Tokenization for mixed Chinese/English text:

* ``char_tokens``: every CJK character (Han, kana, hangul) and every punctuation mark is its own
  token, but a run of other letters/digits (``iPhone15``, ``café``, ``２０２４``) stays one token.
  Splitting English into single letters would waste ``max_length`` on letters that carry no
  meaning alone, while Chinese characters do carry meaning and need no segmenter.
* ``word_tokens``: jieba for text containing CJK characters (it keeps Latin runs whole too), a
  regex split into words and single punctuation marks otherwise.

Whitespace never becomes a token. Case and normalisation are left to upstream cleanup.
"""
from __future__ import annotations

import functools
import json
import logging
import re
from collections import Counter
from pathlib import Path
from typing import Iterable, Mapping, Sequence

from trainables.atomic import atomic_write_text
from trainables.text.base import ENCODER_FILE

PAD, UNK = "<pad>", "<unk>"

_CJK = "\u1100-\u11ff\u3040-\u30ff\u3130-\u318f\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af\uf900-\ufaff\U00020000-\U0002ffff"
_HAS_CJK = re.compile(f"[{_CJK}]")
# A letter/digit that is not CJK ([^\W_] is \w without the underscore).
_CHAR_TOKEN = re.compile(f"(?:(?![{_CJK}])[^\\W_])+|\\S")
_WORD_TOKEN = re.compile(r"\w+|[^\w\s]")


def char_tokens(text: str) -> list[str]:
    """CJK characters and punctuation one by one; runs of other letters/digits whole."""
    return _CHAR_TOKEN.findall(text)


@functools.cache
def _jieba():
    import jieba

    # jieba logs "Building prefix dict ..." at DEBUG on first use; keep worker logs clean.
    jieba.setLogLevel(logging.WARNING)
    return jieba


def has_cjk(text: str) -> bool:
    """Whether ``text`` holds a CJK character (``word_tokens`` splits it with jieba)."""
    return _HAS_CJK.search(text) is not None


def word_tokens(text: str) -> list[str]:
    """jieba words for text with CJK characters, else words and punctuation marks."""
    if has_cjk(text):
        return [t for t in _jieba().lcut(text) if not t.isspace()]
    return _WORD_TOKEN.findall(text)


TOKENIZERS = {"char": char_tokens, "word": word_tokens}


class VocabTextEncoder:
    """Tokens -> ids through a vocabulary built from training texts; pad = 0, unk = 1.

    Stop words are dropped from every token stream (at build and at encode time) before truncation
    to ``max_length``.
    """

    kind = "vocab"
    pad_id = 0
    unk_id = 1

    def __init__(self, itos: Sequence[str], tokens: str, max_length: int, stop_words: Iterable[str] = ()):
        if tokens not in TOKENIZERS:
            raise ValueError(f"model.tokens: {tokens!r} is not one of {sorted(TOKENIZERS)}")
        if list(itos[:2]) != [PAD, UNK]:
            raise ValueError(f"vocabulary must start with {PAD!r}, {UNK!r}")
        self.itos = list(itos)
        self.stoi = {t: i for i, t in enumerate(self.itos)}
        self.tokens = tokens
        self.max_length = max_length
        self.stop_words = frozenset(stop_words)

    @classmethod
    def build(
        cls, texts: Iterable[str], tokens: str, max_length: int, vocab_size: int, min_freq: int = 1,
        stop_words: Iterable[str] = (),
    ) -> "VocabTextEncoder":
        """The ``vocab_size`` most frequent tokens seen at least ``min_freq`` times.

        ``vocab_size`` counts the two special tokens, so it is the embedding's row count. Equal
        counts are ordered by the token string so the same texts always give the same ids.
        """
        tokenize = cls([PAD, UNK], tokens, max_length, stop_words).tokenize
        return cls.from_counts(Counter(t for text in texts for t in tokenize(text)), tokens, max_length, vocab_size, min_freq, stop_words)

    @classmethod
    def from_counts(
        cls, counts: Mapping[str, int], tokens: str, max_length: int, vocab_size: int, min_freq: int = 1,
        stop_words: Iterable[str] = (),
    ) -> "VocabTextEncoder":
        """``build``'s vocabulary from token counts made elsewhere (a distributed count: it needs the
        counts of at least every token it keeps)."""
        kept = sorted((t for t, c in counts.items() if c >= min_freq and t not in (PAD, UNK)), key=lambda t: (-counts[t], t))
        return cls([PAD, UNK] + kept[: max(0, vocab_size - 2)], tokens, max_length, stop_words)

    def tokenize(self, text: str) -> list[str]:
        """Tokens of one text, stop words removed, not truncated."""
        tokens = TOKENIZERS[self.tokens](text)
        return [t for t in tokens if t not in self.stop_words] if self.stop_words else tokens

    def encode(self, texts: Sequence[str]) -> list[list[int]]:
        unk, get = self.unk_id, self.stoi.get
        return [[get(t, unk) for t in self.tokenize(text)[: self.max_length]] for text in texts]

    def __len__(self) -> int:
        return len(self.itos)

    def save(self, directory: str | Path) -> None:
        """One JSON file (``text_encoder.json``) with options and vocabulary, replaced atomically."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        meta = {
            "kind": self.kind, "tokens": self.tokens, "max_length": self.max_length,
            "stop_words": sorted(self.stop_words), "itos": self.itos,
        }
        atomic_write_text(directory / ENCODER_FILE, json.dumps(meta, ensure_ascii=False))

    @classmethod
    def load(cls, directory: str | Path) -> "VocabTextEncoder":
        meta = json.loads((Path(directory) / ENCODER_FILE).read_text(encoding="utf-8"))
        if meta.get("kind") != cls.kind:
            raise ValueError(f"{directory}: text encoder kind {meta.get('kind')!r} is not {cls.kind!r}")
        return cls(meta["itos"], meta["tokens"], meta["max_length"], meta["stop_words"])
