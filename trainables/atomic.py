"""Atomic file writes: readers see the old file or the new one, never a partial one."""
from __future__ import annotations

import contextlib
import os
import uuid
from pathlib import Path
from typing import Iterator


@contextlib.contextmanager
def atomic_output(path: str | Path) -> Iterator[Path]:
    """A temp path beside ``path`` to write to; renamed over ``path`` only if the block succeeds.

    Same folder, so os.replace is a rename within one filesystem; pid + random suffix keeps
    concurrent writers of the same file apart.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to a temp file beside ``path`` (fsynced), then rename it over ``path``."""
    with atomic_output(path) as tmp:
        # os.open with 0o666 lets the umask decide the mode, as a plain open() would
        # (mkstemp would leave every report file at 0600).
        with os.fdopen(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666), "wb") as f:
            f.write(data)
            f.flush()
            # Without fsync a crash right after the rename can leave an empty file behind.
            os.fsync(f.fileno())


def atomic_write_text(path: str | Path, text: str, encoding: str = "utf-8") -> None:
    """``atomic_write_bytes`` of ``text`` encoded with ``encoding``."""
    atomic_write_bytes(path, text.encode(encoding))


def atomic_save_npy(path: str | Path, array) -> None:
    """``np.save`` of ``array`` to ``path``, atomically (``atomic_write_bytes``)."""
    import io

    import numpy as np

    buffer = io.BytesIO()
    np.save(buffer, array)
    atomic_write_bytes(path, buffer.getvalue())
