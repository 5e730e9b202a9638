"""What every text encoder is: ``encode(texts)`` -> truncated, unpadded id lists, ``pad_id``,
``max_length``, and ``save(dir)`` writing ``text_encoder.json`` (its ``kind``) beside what it needs."""
from __future__ import annotations

from pathlib import Path
from typing import Protocol, Sequence

ENCODER_FILE = "text_encoder.json"


class TextEncoder(Protocol):
    pad_id: int
    max_length: int

    def encode(self, texts: Sequence[str]) -> list[list[int]]: ...

    def save(self, directory: str | Path) -> None: ...
