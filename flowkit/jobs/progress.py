"""Progress inside a unit: pipelines count frames as they go; a heartbeat file per running unit carries
the count to the runner's progress bar and to `flowkit status`, whatever process or host runs the unit.

Pipelines only call `track(frames, total)` (or `advance`); outside a runner both are no-ops. The heartbeat
is `OUT/.flowkit/progress/<shard>/<unit>.json`, rewritten at most every FLOWKIT_HEARTBEAT_S seconds
(default 1) by an atomic rename, and removed when the unit ends; one left behind names an interrupted unit.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from flowkit.jobs.manifest import Manifest, safe_name

T = TypeVar("T")
_local = threading.local()


def heartbeat_interval() -> float:
    """Seconds between two heartbeat writes of a unit (FLOWKIT_HEARTBEAT_S, default 1)."""
    try:
        return max(0.0, float(os.environ.get("FLOWKIT_HEARTBEAT_S", "1")))
    except ValueError:
        return 1.0


def progress_dir(manifest: Manifest, tag: str) -> Path:
    """The folder of one shard's heartbeat files."""
    return manifest.state_dir / "progress" / tag


@dataclass
class UnitProgress:
    """Frames done (and expected) of one running unit, written to its heartbeat file now and then."""

    path: Path
    unit: str
    run: int
    interval: float = field(default_factory=heartbeat_interval)
    done: int = 0
    total: int = 0
    _last: float = field(default_factory=time.monotonic)

    def advance(self, n: int = 1) -> None:
        """Count n more frames; write the heartbeat when the interval has passed."""
        self.done += n
        now = time.monotonic()
        if now - self._last >= self.interval:
            self._last = now
            self.write()

    def write(self) -> None:
        """Replace the heartbeat file (no fsync: it is a hint that a crash may lose, never a record)."""
        record = {"unit": self.unit, "frames": self.done, "total": self.total, "run": self.run,
                  "host": socket.gethostname(), "pid": os.getpid(), "time": time.time()}
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp.write_text(json.dumps(record), encoding="utf-8")
            os.replace(tmp, self.path)
        except OSError:  # a full disk must not fail the unit over a progress hint
            with contextlib.suppress(OSError):
                tmp.unlink()

    def clear(self) -> None:
        """Remove the heartbeat (the unit ended, done or failed)."""
        with contextlib.suppress(OSError):
            self.path.unlink()


@contextlib.contextmanager
def tracking(manifest: Manifest, tag: str, unit: str, run: int) -> Iterator[UnitProgress]:
    """Make `advance`/`track` in this thread count for `unit` while the block runs."""
    reporter = UnitProgress(progress_dir(manifest, tag) / f"{safe_name(unit)}.json", unit, run)
    previous = getattr(_local, "unit", None)
    _local.unit = reporter
    try:
        yield reporter
    finally:
        _local.unit = previous
        reporter.clear()


def advance(n: int = 1) -> None:
    """Count n frames (pairs, windows' frames) done for the unit this thread runs; no-op outside one."""
    reporter = getattr(_local, "unit", None)
    if reporter is not None:
        reporter.advance(n)


def set_total(total: int) -> None:
    """Start counting a video of `total` frames (a header count is fine: it only feeds the ETA).

    A unit holding several videos calls it per video; frames done restart from 0.
    """
    reporter = getattr(_local, "unit", None)
    if reporter is not None:
        reporter.total, reporter.done = max(int(total), 0), 0


def track(items: Iterable[T], total: int | Callable[[], int] | None = None) -> Iterator[T]:
    """Yield `items`, counting one frame each; `total` may be a callable read at the first item."""
    first = True
    for item in items:
        if first and total is not None:
            with contextlib.suppress(Exception):
                set_total(total() if callable(total) else total)
            first = False
        yield item
        advance(1)


def read_heartbeats(manifest: Manifest) -> dict[str, dict[str, Any]]:
    """Every heartbeat left in the folder, by unit (running units, or units of an interrupted run)."""
    beats: dict[str, dict[str, Any]] = {}
    for path in (manifest.state_dir / "progress").glob("*/*.json"):
        with contextlib.suppress(OSError, json.JSONDecodeError):
            record = json.loads(path.read_text(encoding="utf-8"))
            record["shard"] = path.parent.name
            beats[record["unit"]] = record
    return beats


def read_shard_heartbeats(manifest: Manifest, tag: str) -> list[dict[str, Any]]:
    """The heartbeats of one shard (what its running units have done so far)."""
    out = []
    for path in progress_dir(manifest, tag).glob("*.json"):
        with contextlib.suppress(OSError, json.JSONDecodeError):
            out.append(json.loads(path.read_text(encoding="utf-8")))
    return out


def clear_shard(manifest: Manifest, tag: str) -> None:
    """Forget one shard's heartbeats (at the start of a run: the shard's lock is ours)."""
    shutil.rmtree(progress_dir(manifest, tag), ignore_errors=True)


def describe(beats: list[dict[str, Any]], finished_frames: int, elapsed: float, failed: int) -> str:
    """The bar's postfix: frames done/expected of the running units, frame rate, ETA of those units."""
    done = sum(int(b.get("frames", 0)) for b in beats)
    expected = sum(max(int(b.get("total", 0)), int(b.get("frames", 0))) for b in beats)
    rate = (finished_frames + done) / elapsed if elapsed > 0 else 0.0
    parts = []
    if beats:
        parts.append(f"running {len(beats)}: {done}/{expected or '?'} frames")
        if rate > 0 and expected > done:
            parts.append(f"ETA {format_seconds((expected - done) / rate)}")
    parts += [f"{rate:.1f} frames/s", f"failed {failed}"]
    return ", ".join(parts)


def format_seconds(seconds: float) -> str:
    """12 -> '12s', 125 -> '2m05s', 7300 -> '2h01m'."""
    s = int(round(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


class RunBar:
    """The runner's progress bar: units done, plus frames done and an ETA of the units still running.

    Workers report through heartbeat files, so the same bar works for threads, loky processes and Dask
    workers on other hosts; a polling thread refreshes it between unit ends.
    """

    def __init__(self, manifest: Manifest, tag: str, total: int, quiet: bool) -> None:
        from tqdm import tqdm

        self.manifest, self.tag = manifest, tag
        self.bar = tqdm(total=total, unit="video", disable=quiet or None, dynamic_ncols=True)
        self.frames = self.failed = 0
        self.start = time.perf_counter()
        self._stop = threading.Event()

    def follow(self, results: Iterable[Any]) -> Iterator[Any]:
        """Yield the results (UnitResult) as they come, updating the bar."""
        from tqdm.contrib.logging import logging_redirect_tqdm

        poller = threading.Thread(target=self._poll, name="flowkit-progress", daemon=True)
        with logging_redirect_tqdm(), self.bar:
            if not self.bar.disable:
                poller.start()
            try:
                for result in results:
                    self.frames += result.frames
                    self.failed += result.status == "failed"
                    self.bar.update(1)
                    self.refresh()
                    yield result
            finally:
                self._stop.set()
                if poller.is_alive():
                    poller.join(timeout=2)

    def _poll(self) -> None:
        while not self._stop.wait(0.5):
            with contextlib.suppress(Exception):  # a display hiccup must never stop the run
                self.refresh()

    def refresh(self) -> None:
        """Re-read the heartbeats and redraw the postfix."""
        if self.bar.disable:
            return
        beats = read_shard_heartbeats(self.manifest, self.tag)
        elapsed = time.perf_counter() - self.start
        self.bar.set_postfix_str(describe(beats, self.frames, elapsed, self.failed))
