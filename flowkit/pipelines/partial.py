"""Resume an interrupted extract-flow video where it stopped (JPEG/PNG flow formats).

While a video is written, its folder `.NAME.partial` beside the final one holds the finished files and
`.flowkit-partial.json`: how many RGB files and flow pairs were complete at the last checkpoint and what
they were made from (output config hash, source path, size and mtime). A rerun verifies the record and
every file it lists (present, complete JPEG/PNG), deletes whatever was written after it, and goes on:
decoding restarts at frame 0 (seeking is not frame-exact) but no finished pair is computed again and no
finished file rewritten. A pair's flow depends only on its two frames, so the final folder is
byte-identical to an uninterrupted run. Checkpoints come every FLOWKIT_CHECKPOINT_S seconds (default 10).

h5/npy restart from zero: an HDF5 file killed mid-write may not reopen, and rebuilding it (or a streamed
npy with a patched header) from a prefix costs about what it saves; their videos are one file anyway.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import flowkit
from flowkit.atomic import atomic_write_text
from flowkit.outputs.rawframes import FolderWriter, Layout

RECORD = ".flowkit-partial.json"
_TRAILERS = {"jpg": b"\xff\xd9", "png": b"IEND\xaeB`\x82"}


def checkpoint_interval() -> float:
    """Seconds between two checkpoints of a video (FLOWKIT_CHECKPOINT_S, default 10)."""
    try:
        return max(0.0, float(os.environ.get("FLOWKIT_CHECKPOINT_S", "10")))
    except ValueError:
        return 10.0


def partial_dir(target: Path) -> Path:
    """The resumable temporary folder of a video's output folder."""
    return target.parent / f".{target.name}.partial"


def source_identity(config_hash: str, source: Path) -> dict[str, Any]:
    """What a partial folder must have been made from to be reused."""
    st = os.stat(source)
    return {"config": config_hash, "source": str(source), "size": st.st_size, "mtime_ns": st.st_mtime_ns,
            "flowkit": flowkit.__version__}


@dataclass
class Partial:
    """The resumable state of one video: files finished at the last checkpoint (0, 0 for a fresh start)."""

    folder: Path
    identity: dict[str, Any]
    pairs: int = 0
    rgb: int = 0
    interval: float = field(default_factory=checkpoint_interval)
    _last: float = field(default_factory=time.monotonic)

    @classmethod
    def open(cls, target: Path, identity: dict[str, Any], layout: Layout, ext: str) -> Partial:
        """Adopt a verified partial folder of `target`, or remove an unusable one and start at zero."""
        state = cls(partial_dir(target), identity)
        try:
            record = json.loads((state.folder / RECORD).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            record = None
        expected = _expected(layout, ext, record) if isinstance(record, dict) else None
        if record is not None and record.get("identity") == identity and expected is not None \
                and _keep_only(state.folder, expected, ext):
            state.pairs, state.rgb = int(record["pairs"]), int(record["rgb"])
        else:
            shutil.rmtree(state.folder, ignore_errors=True)
        return state

    def checkpoint(self, writer: FolderWriter, pairs: int, rgb: int) -> None:
        """Record progress (after every queued file is on disk) when the interval has passed."""
        now = time.monotonic()
        if now - self._last < self.interval:
            return
        self._last = now
        writer.flush()
        record = {"identity": self.identity, "pairs": pairs, "rgb": rgb}
        atomic_write_text(self.folder / RECORD, json.dumps(record))

    def finish(self) -> None:
        """Drop the record just before the folder is renamed into place (it is no output file)."""
        with contextlib.suppress(FileNotFoundError):
            (self.folder / RECORD).unlink()


def _expected(layout: Layout, ext: str, record: dict[str, Any]) -> set[str] | None:
    try:
        pairs, rgb = int(record["pairs"]), int(record["rgb"])
    except (KeyError, TypeError, ValueError):
        return None
    names = {layout.rgb_name(k) for k in range(rgb)}
    names |= {layout.flow_name(a, k, ext) for k in range(pairs) for a in "xy"}
    return names


def _keep_only(folder: Path, expected: set[str], ext: str) -> bool:
    """True if every expected file is there and complete; then delete every other entry."""
    try:
        present = set(os.listdir(folder))
    except OSError:
        return False
    if not expected <= present or not all(_complete(folder / n) for n in expected):
        return False
    for name in present - expected - {RECORD}:
        path = folder / name
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
    return True


def _complete(path: Path) -> bool:
    """A JPEG/PNG file that ends with its format's end marker (not cut short by a kill)."""
    trailer = _TRAILERS.get(path.suffix.lstrip("."))
    try:
        size = path.stat().st_size
        if trailer is None or size < len(trailer):
            return False
        with open(path, "rb") as fh:
            fh.seek(size - len(trailer))
            return fh.read() == trailer
    except OSError:
        return False
