"""The T5 text encoder: the task prefix before every text, and the class names as decoder targets."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

from trainables.text.base import ENCODER_FILE
from trainables.text.hf import HFTextEncoder


class T5TextEncoder(HFTextEncoder):
    """An HF tokenizer that puts the task ``prefix`` (e.g. "emotion: ") before every text; it also
    tokenizes the class names into the decoder targets."""

    kind = "t5"

    def __init__(self, tokenizer, max_length: int, prefix: str):
        super().__init__(tokenizer, max_length)
        self.prefix = prefix

    @classmethod
    def from_pretrained(cls, name_or_path: str, max_length: int, prefix: str) -> "T5TextEncoder":
        from transformers import AutoTokenizer

        return cls(AutoTokenizer.from_pretrained(name_or_path), max_length, prefix)

    @classmethod
    def load(cls, directory: str | Path) -> "T5TextEncoder":
        meta = json.loads((Path(directory) / ENCODER_FILE).read_text())
        return cls.from_pretrained(str(Path(directory) / "tokenizer"), meta["max_length"], meta["prefix"])

    def encode(self, texts: Sequence[str]) -> list[list[int]]:
        # truncation cuts the end of the text, never the prefix
        return super().encode([self.prefix + text for text in texts])

    def target_ids(self, class_names: Sequence[str]) -> list[list[int]]:
        """Token ids of each class name, ending with </s> as T5's training targets do."""
        eos = self.tokenizer.eos_token_id
        ids = self.tokenizer(list(class_names))["input_ids"]
        return [x if x[-1:] == [eos] else [*x, eos] for x in ids]

    def save(self, directory: str | Path) -> None:
        super().save(directory)
        path = Path(directory) / ENCODER_FILE
        path.write_text(json.dumps({**json.loads(path.read_text()), "prefix": self.prefix}))
