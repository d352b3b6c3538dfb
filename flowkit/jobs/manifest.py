"""The resumable job record in OUT/.flowkit/: job.json, per-worker event logs, done records, locks.

Ground truth for "done" is an output renamed into place plus its done record (written last); the event
logs explain what happened (start / done / failed with error and seconds). One writer per log file, so
the logs are safe on shared filesystems as long as process ids differ. Every event carries the number
of its run (allocated with an exclusive mkdir, so runs on different hosts never share one) and its
wall time; readers merge the logs by (run, time), never by file name.
"""

from __future__ import annotations

import contextlib
import hashlib
import heapq
import itertools
import json
import os
import socket
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import flowkit
from flowkit.atomic import atomic_write_text
from flowkit.errors import ManifestError
from flowkit.jobs.donestore import DoneStore, read_json_lines
from flowkit.jobs.lock import RunLock  # the lock has its own module; the name stays importable here

STATE_DIR = ".flowkit"


def config_hash(config: Mapping[str, Any]) -> str:
    """Stable short hash of the output-defining config (sorted JSON)."""
    blob = json.dumps(config, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def safe_name(unit_id: str) -> str:
    """A flat file name for a unit id that may contain '/', spaces or non-ASCII characters."""
    digest = hashlib.sha1(unit_id.encode()).hexdigest()[:10]
    flat = "".join(c if c.isalnum() or c in "-_." else "_" for c in unit_id)[-80:]
    return f"{flat}-{digest}"


@dataclass
class Manifest:
    """Access to one output folder's job state."""

    out_dir: Path

    def __post_init__(self) -> None:
        self.out_dir = Path(self.out_dir)
        self.state_dir = self.out_dir / STATE_DIR

    # -- job record -------------------------------------------------------------------------------
    @property
    def job_path(self) -> Path:
        """Where the job record lives."""
        return self.state_dir / "job.json"

    def read_job(self) -> dict[str, Any] | None:
        """The job record, or None for a fresh folder."""
        try:
            return json.loads(self.job_path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        except json.JSONDecodeError as exc:
            raise ManifestError(f"{self.job_path}: corrupt job record ({exc})") from exc

    def open_job(self, command: str, config: Mapping[str, Any], overwrite: bool) -> str:
        """Create or check the job record; refuse a different config unless overwrite. Returns the hash."""
        digest = config_hash(config)
        old = self.read_job()
        if old is not None and not overwrite:
            if old.get("command") != command or old.get("config_hash") != digest:
                raise ManifestError(self._mismatch(old, command, config))
            return digest
        record = {
            "command": command,
            "config": dict(config),
            "config_hash": digest,
            "flowkit_version": flowkit.__version__,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        atomic_write_text(self.job_path, json.dumps(record, indent=2, sort_keys=True, default=str))
        return digest

    def _mismatch(self, old: Mapping[str, Any], command: str, config: Mapping[str, Any]) -> str:
        if old.get("command") != command:
            what = f"it holds a `{old.get('command')}` job, not `{command}`"
        else:
            diff = sorted(
                k
                for k in set(config) | set(old.get("config", {}))
                if old.get("config", {}).get(k) != config.get(k)
            )
            what = "the config differs in: " + ", ".join(
                f"{k} (was {old.get('config', {}).get(k)!r}, now {config.get(k)!r})" for k in diff
            )
        return f"{self.out_dir}: refusing to resume, {what}. Use --overwrite to start over."

    def write_units(self, unit_ids: list[str]) -> None:
        """Record the full sorted unit list (the same for every shard), so status can count what is left."""
        path = self.state_dir / "units.json"
        text = json.dumps({"units": unit_ids})
        if not path.exists() or path.read_text(encoding="utf-8") != text:
            atomic_write_text(path, text)

    def read_units(self) -> list[str]:
        """The unit list of the job, empty if no run has started yet."""
        try:
            return json.loads((self.state_dir / "units.json").read_text(encoding="utf-8"))["units"]
        except (FileNotFoundError, json.JSONDecodeError, KeyError):
            return []

    # -- done records (journal + per-shard index: see donestore.py) -----------------------------------
    @property
    def done_store(self) -> DoneStore:
        """The done records of this folder (one store per Manifest: it caches the compacted index)."""
        store = self.__dict__.get("_done_store")
        if store is None:
            store = self.__dict__["_done_store"] = DoneStore(self.state_dir, safe_name)
        return store

    def done_path(self, unit_id: str) -> Path:
        """Where a unit's done record is written (its journal file)."""
        return self.done_store.path(unit_id)

    def write_done(self, unit_id: str, record: Mapping[str, Any]) -> None:
        """Record a unit as done; call only after its output is renamed into place."""
        self.done_store.write(unit_id, record)

    def read_done(self, unit_id: str) -> dict[str, Any] | None:
        """The done record of a unit, or None (also for a corrupt record, which means not done)."""
        return self.done_store.read(unit_id)

    def clear_done(self, unit_id: str) -> None:
        """Forget that a unit was done (before redoing it)."""
        self.done_store.clear(unit_id)

    def all_done(self) -> list[dict[str, Any]]:
        """Every done record in the folder (all shards)."""
        return self.done_store.all()

    def compact_done(self, unit_ids: list[str], tag: str, run: int) -> int:
        """Fold a shard's finished records into its index (end of its run, under its lock)."""
        return self.done_store.compact(unit_ids, tag, run)

    # -- runs and events ---------------------------------------------------------------------------
    def new_run(self) -> int:
        """A fresh run number, larger than every earlier one (also of other shards and hosts)."""
        folder = self.state_dir / "runs"
        folder.mkdir(parents=True, exist_ok=True)
        while True:
            taken = [int(p.name) for p in folder.iterdir() if p.name.isdigit()]
            number = max(taken, default=0) + 1
            with contextlib.suppress(FileExistsError):
                (folder / f"{number:06d}").mkdir()  # atomic and exclusive, even on NFS
                return number

    def events(self) -> Iterator[dict[str, Any]]:
        """All events of all workers in the order they happened: by run number, then wall time.

        Each log keeps its own order (a clock that steps back inside one process cannot reorder it);
        a truncated last line is skipped. Logs written before run numbers existed count as run 0.
        """
        logs = [iter(read_json_lines(p)) for p in (self.state_dir / "events").glob("*.jsonl")]
        yield from heapq.merge(*logs, key=event_order)

    def last_events(self, visit: Callable[[dict[str, Any]], None] | None = None,
                    kinds: tuple[str, ...] = ()) -> dict[str, dict[str, Any]]:
        """The last event (of these kinds, default any) of every unit, as `events()` would end.

        A log's own order decides within the log, (run, time) across logs. `visit` sees every event
        once, in no particular order (for totals). Linear in the number of events: nothing is sorted.
        """
        last: dict[str, dict[str, Any]] = {}
        for path in (self.state_dir / "events").glob("*.jsonl"):
            mine: dict[str, dict[str, Any]] = {}
            for event in read_json_lines(path):
                if visit is not None:
                    visit(event)
                if "unit" in event and (not kinds or event.get("event") in kinds):
                    mine[event["unit"]] = event
            for uid, event in mine.items():
                if uid not in last or event_order(event) >= event_order(last[uid]):
                    last[uid] = event
        return last


def event_order(event: Mapping[str, Any]) -> tuple[int, float]:
    """Sort key of an event across logs: (run number, wall time)."""
    return int(event.get("run", 0)), float(event.get("time", 0.0))


class EventLog:
    """Append-only JSONL log owned by one process (thread) of one run; one write() per record."""

    def __init__(self, manifest: Manifest, tag: str, run: int = 0) -> None:
        folder = manifest.state_dir / "events"
        folder.mkdir(parents=True, exist_ok=True)
        name = f"{tag}-{socket.gethostname()}-{os.getpid()}.jsonl"
        self.run = run
        self._seq = itertools.count()
        self._fd = os.open(folder / name, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)

    def write(self, event: str, **fields: Any) -> None:
        """Append one event as a single write(), stamped with its run, wall time and sequence number."""
        record = {"event": event, "run": self.run, "time": time.time(), "seq": next(self._seq), **fields}
        os.write(self._fd, (json.dumps(record, default=str) + "\n").encode())

    def close(self) -> None:
        """Close the log file."""
        with contextlib.suppress(OSError):
            os.close(self._fd)


__all__ = ["STATE_DIR", "EventLog", "Manifest", "RunLock", "config_hash", "safe_name"]
