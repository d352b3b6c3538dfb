"""Done records that stay cheap at 300k units: a per-unit journal, compacted per shard after each run.

In OUT/.flowkit/:
  done/<unit>.json           a unit's record, or a {"cleared": true} tombstone, written atomically by the
                             worker that finished (or is redoing) it: always the newest word on the unit
  done-index/<shard>.jsonl   a shard's compacted records, one {"run": R, "record": {...}} per line,
                             rewritten atomically by that shard at the end of its run (under its lock);
                             then the journal files folded into it are deleted
A unit's record is its journal file if there is one, else the index entry with the highest run (a unit
redone under another sharding lands in another shard's index, with a later run). A kill at any point
leaves the journal file, the index entry, or both (equal): never neither. Reading every record costs one
file per shard instead of one per unit; a process caches the parsed indexes until they change.
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

from flowkit.atomic import atomic_write_text

Record = dict[str, Any]
_cache: dict[str, tuple[tuple[Any, ...], dict[str, Record]]] = {}


def _load(text: str) -> Record | None:
    try:
        record = json.loads(text)
    except ValueError:
        return None
    return record if isinstance(record, dict) and "unit" in record else None


class DoneStore:
    """The done records of one job folder (see the module docstring for the layout)."""

    def __init__(self, state_dir: Path, name_of: Any) -> None:
        self.journal = Path(state_dir) / "done"
        self.index_dir = Path(state_dir) / "done-index"
        self._name_of = name_of  # unit id -> flat file name (no extension)
        self._journal_dir = str(self.journal)
        self._seen: dict[str, Record] | None = None  # the index as this store first read it
        self._names: set[str] | None = None  # journal file names, inside bulk_reads() only

    def path(self, unit_id: str) -> Path:
        """A unit's journal file."""
        return Path(self._file(unit_id))

    def _leaf(self, unit_id: str) -> str:
        return f"{self._name_of(unit_id)}.json"

    def _file(self, unit_id: str) -> str:
        return os.path.join(self._journal_dir, self._leaf(unit_id))

    @contextlib.contextmanager
    def bulk_reads(self) -> Iterator[None]:
        """Within the block, reads look the journal up in one listing instead of one open per unit.

        For the resume check: it runs under the shard's lock before any of the shard's units is written.
        """
        try:
            self._names = {e.name for e in os.scandir(self.journal)}
        except (FileNotFoundError, NotADirectoryError):
            self._names = set()
        try:
            yield
        finally:
            self._names = None

    def write(self, unit_id: str, record: Mapping[str, Any]) -> None:
        """Record a unit as done (atomically); call only after its output is renamed into place."""
        atomic_write_text(self.path(unit_id), json.dumps({"unit": unit_id, **record}, default=str))

    def read(self, unit_id: str) -> Record | None:
        """A unit's record, or None: not done, cleared, or a corrupt journal file (which means not done)."""
        try:
            if self._names is not None and (not self._names or self._leaf(unit_id) not in self._names):
                raise FileNotFoundError(unit_id)  # bulk reads: not in the listing of the journal
            with open(self._file(unit_id), encoding="utf-8") as fh:
                record = _load(fh.read())
        except FileNotFoundError:
            record = self._index_once().get(unit_id)
        except OSError:
            return None
        return None if record is None or record.get("cleared") else record

    def clear(self, unit_id: str) -> None:
        """Forget a unit's record: delete its journal file, or hide its index entry behind a tombstone."""
        if unit_id in self._index_once():
            atomic_write_text(self.path(unit_id), json.dumps({"unit": unit_id, "cleared": True}))
        else:
            with contextlib.suppress(FileNotFoundError):
                self.path(unit_id).unlink()

    def all(self) -> list[Record]:
        """Every record (all shards), sorted by unit id."""
        merged = dict(self.index())
        merged.update({r["unit"]: r for r, _ in self._journal().values()})
        return [merged[u] for u in sorted(merged) if not merged[u].get("cleared")]

    def _journal(self) -> dict[str, tuple[Record, str]]:
        """Journal records by unit, each with its file's text (to delete only what was folded)."""
        out: dict[str, tuple[Record, str]] = {}
        try:
            entries = list(os.scandir(self.journal))
        except (FileNotFoundError, NotADirectoryError):
            return out
        for entry in entries:
            if entry.name.startswith(".") or not entry.name.endswith(".json"):
                continue  # temporaries of atomic writes
            with contextlib.suppress(OSError):
                with open(entry.path, encoding="utf-8") as fh:
                    text = fh.read()
                record = _load(text)
                if record is not None:
                    out[record["unit"]] = (record, text)
        return out

    def _index_once(self) -> dict[str, Record]:
        """The index as first read by this store: single-unit reads and clears are of units the
        caller's shard owns, and only that shard (at its run's end) compacts them."""
        if self._seen is None:
            self._seen = self.index()
        return self._seen

    def index(self) -> dict[str, Record]:
        """Every compacted record by unit (highest run wins); cached while the index files are unchanged."""
        try:
            files = sorted((e for e in os.scandir(self.index_dir) if e.name.endswith(".jsonl")),
                           key=lambda e: e.name)
        except (FileNotFoundError, NotADirectoryError):
            return {}
        signature = tuple((f.name, f.inode(), *_mtime_size(f)) for f in files)
        cached = _cache.get(str(self.index_dir))
        if cached is not None and cached[0] == signature:
            return cached[1]
        best: dict[str, tuple[int, Record]] = {}
        for f in files:
            for run, record in _read_index(Path(f.path)).values():
                if record["unit"] not in best or run >= best[record["unit"]][0]:
                    best[record["unit"]] = (run, record)
        merged = {uid: record for uid, (_, record) in best.items()}
        _cache[str(self.index_dir)] = (signature, merged)
        return merged

    def compact(self, unit_ids: Iterable[str], tag: str, run: int) -> int:
        """Fold the journal files of these units (one shard's, under its lock) into the shard's index.

        Returns how many records were folded. The index is replaced atomically before any journal file
        is deleted, and a journal file is deleted only if it still holds what was folded.
        """
        path = self.index_dir / f"{tag}.jsonl"
        for leftover in self.index_dir.glob(f".{glob.escape(path.name)}.*.tmp"):
            leftover.unlink(missing_ok=True)  # of a killed compaction of this shard (we hold its lock)
        mine = set(unit_ids)
        journal = {uid: entry for uid, entry in self._journal().items() if uid in mine}
        if not journal:
            return 0
        entries = _read_index(path)
        entries.update({uid: (run, record) for uid, (record, _) in journal.items()})
        lines = (json.dumps({"run": r, "record": rec}, default=str) for r, rec in entries.values())
        atomic_write_text(path, "".join(line + "\n" for line in lines))
        self._seen = None
        for uid, (_, text) in journal.items():
            with contextlib.suppress(OSError):
                if self.path(uid).read_text(encoding="utf-8") == text:
                    self.path(uid).unlink()
        return len(journal)


def _mtime_size(entry: os.DirEntry[str]) -> tuple[int, int]:
    try:
        st = entry.stat()
    except OSError:
        return (0, 0)
    return st.st_mtime_ns, st.st_size


def _read_index(path: Path) -> dict[str, tuple[int, Record]]:
    """One index file: unit -> (run, record); a missing file is empty."""
    out: dict[str, tuple[int, Record]] = {}
    try:
        entries = read_json_lines(path)
    except FileNotFoundError:
        return out
    for entry in entries:
        with contextlib.suppress(KeyError, TypeError, ValueError):
            record = entry["record"]
            out[record["unit"]] = (int(entry["run"]), record)
    return out


def read_json_lines(path: Path) -> list[dict[str, Any]]:
    """The JSON objects of a JSONL file in order; a damaged line (a kill mid-write) is skipped.

    Parsed as one JSON array when every line is whole (one C call: several times faster at 300k lines).
    """
    with open(path, encoding="utf-8") as fh:
        text = fh.read()
    try:
        parsed = json.loads("[" + text.strip().replace("\n", ",") + "]")
    except ValueError:  # a damaged or empty line somewhere: line by line
        parsed = []
        for line in text.split("\n"):
            with contextlib.suppress(ValueError):
                parsed.append(json.loads(line))
    return [item for item in parsed if isinstance(item, dict)]
