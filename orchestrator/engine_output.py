"""The engine's output (Ray, Tune, Train, Serve, transformers, warnings: whatever the driver process
prints, worker output forwarded by Ray included) goes to a log file, while the run's own view keeps
the terminal. Redirection is at the file-descriptor level, so it catches C++ and subprocess writes too.

Until the run directory exists the log is a temporary file; ``move_to`` carries it into
``runs/<name>/logs/driver.log``. A run refused before that (bad input) leaves nothing behind.
"""
from __future__ import annotations

import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import IO, Optional


def _writes_to_fd1(stream) -> bool:
    try:
        return stream.fileno() == 1
    except (AttributeError, OSError, ValueError):
        return False


class EngineOutput:
    """Context manager: fds 1 and 2 go to the log; ``terminal`` is a text stream to the real stdout."""

    def __init__(self, enabled: bool = True):
        self.enabled = enabled
        self.path: Optional[Path] = None  # the log in the run directory, once moved there
        self.terminal: IO[str] = sys.stdout
        self._saved: list[int] = []
        self._tmp: Optional[Path] = None

    def __enter__(self) -> "EngineOutput":
        if not self.enabled:
            return self
        sys.stdout.flush()
        sys.stderr.flush()
        self._saved = [os.dup(1), os.dup(2)]
        self._streams = (sys.stdout, sys.stderr)
        # the view's stream: the real stdout, or what replaced sys.stdout (pytest's capsys, a notebook)
        self.terminal = (os.fdopen(os.dup(self._saved[0]), "w", buffering=1, encoding="utf-8", errors="replace")
                         if _writes_to_fd1(sys.stdout) else sys.stdout)
        fd, name = tempfile.mkstemp(prefix="orchestrator-engine-", suffix=".log")
        self._tmp = Path(name)
        self._point_at(fd)
        os.close(fd)
        # Python-level writes follow the descriptors even where sys.stdout/sys.stderr had been replaced
        sys.stdout = open(1, "w", buffering=1, encoding="utf-8", errors="replace", closefd=False)
        sys.stderr = open(2, "w", buffering=1, encoding="utf-8", errors="replace", closefd=False)
        return self

    def _point_at(self, fd: int) -> None:
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(fd, 1)
        os.dup2(fd, 2)

    def move_to(self, path: Path) -> None:
        """Carry the log written so far into ``path`` and write there from now on (appending)."""
        if not self.enabled or self.path is not None:
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "ab") as target:
            sys.stdout.flush()
            sys.stderr.flush()
            with open(self._tmp, "rb") as written:
                shutil.copyfileobj(written, target)
            target.flush()
            self._point_at(target.fileno())
        self._tmp.unlink(missing_ok=True)
        self._tmp, self.path = None, path

    def __exit__(self, *exc) -> None:
        if not self.enabled:
            return
        self._point_at(self._saved[0])
        os.dup2(self._saved[1], 2)
        for wrapper in (sys.stdout, sys.stderr):
            wrapper.close()  # closefd=False: the descriptors stay
        sys.stdout, sys.stderr = self._streams
        for fd in self._saved:
            os.close(fd)
        if self.terminal is not sys.stdout:
            self.terminal.close()
        self.terminal = sys.stdout
        if self._tmp is not None:
            self._tmp.unlink(missing_ok=True)  # refused before the run directory existed: no log kept
