"""Atomic file writes: a temporary sibling, fsync, then os.replace, so readers never see half a file."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO


def atomic_write(path: Path, write: Callable[[BinaryIO], Any]) -> None:
    """Write through `write(fh)` into a hidden temporary beside `path`, fsync, rename it over `path`.

    The temporary is removed if anything fails (disk full included), so no partial file is left.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    """Atomically replace `path` with UTF-8 text."""
    atomic_write(path, lambda fh: fh.write(text.encode("utf-8")))
