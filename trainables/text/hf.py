"""A transformers tokenizer as a ``TextEncoder``."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

from trainables.text.base import ENCODER_FILE


class HFTextEncoder:
    """A transformers tokenizer: ids with special tokens, truncated to max_length."""

    kind = "hf"

    def __init__(self, tokenizer, max_length: int):
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0

    @classmethod
    def from_pretrained(cls, name_or_path: str, max_length: int) -> "HFTextEncoder":
        from transformers import AutoTokenizer

        return cls(AutoTokenizer.from_pretrained(name_or_path), max_length)

    def encode(self, texts: Sequence[str]) -> list[list[int]]:
        return self.tokenizer(list(texts), truncation=True, max_length=self.max_length)["input_ids"]

    def save(self, directory: str | Path) -> None:
        directory = Path(directory)
        self.tokenizer.save_pretrained(directory / "tokenizer")
        (directory / ENCODER_FILE).write_text(json.dumps({"kind": self.kind, "max_length": self.max_length}))
