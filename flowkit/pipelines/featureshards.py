"""Feature shards built from per-video parts, so `features` runs, resumes and reports per video.

A worker writes each finished video to its own one-video HDF5 part in ``OUT/.flowkit/features/parts/``
(``*.tmp`` renamed into place), then its done record; a video that fails leaves a failed marker instead.
A shard (consecutive videos, named by position) is assembled once every one of its videos was attempted,
by the worker that settled the last one (and, as a safety net, after the run):
its finished videos are copied from their parts (or from the shard file itself for videos assembled
before) into ``<shard>.tmp``, which is renamed into place; then the shard record is written and the
parts it consumed are deleted. One writer per shard file: assembly holds a per-shard lock.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from flowkit.atomic import atomic_write_text
from flowkit.errors import FlowkitError
from flowkit.jobs.manifest import Manifest, safe_name
from flowkit.outputs import hdf5

STATE = "features"


def plan_shards(name: str, video_ids: Sequence[str], per: int) -> list[tuple[str, list[str]]]:
    """(shard file name, its video ids): consecutive groups of `per` sorted videos, named by position."""
    count = max(1, math.ceil(len(video_ids) / per))
    groups = [list(video_ids[s * per : (s + 1) * per]) for s in range(count)]
    return [(hdf5.shard_filename(name, s, count), ids) for s, ids in enumerate(groups) if ids]


class ShardParts:
    """Per-video parts, failed markers and shard records of one features job."""

    def __init__(self, manifest: Manifest) -> None:
        self.manifest = manifest
        self.out_dir = manifest.out_dir
        self.root = manifest.state_dir / STATE

    def part_path(self, video_id: str) -> Path:
        """Where a finished video waits for its shard."""
        return self.root / "parts" / f"{safe_name(video_id)}.h5"

    def _failed_path(self, video_id: str) -> Path:
        return self.root / "failed" / f"{safe_name(video_id)}.json"

    def _record_path(self, shard: str) -> Path:
        return self.root / "shards" / f"{shard}.json"

    # -- one video, in a worker -------------------------------------------------------------------
    def write_part(
        self, video_id: str, datasets: Mapping[str, np.ndarray], attrs: Mapping[str, Any],
        file_attrs: Mapping[str, Any],
    ) -> None:
        """Write a video's datasets as a one-video shard (tmp + rename); clears an old failed marker."""
        with hdf5.ShardWriter(self.part_path(video_id), file_attrs) as writer:
            writer.add_video(video_id, datasets, attrs)
        self._failed_path(video_id).unlink(missing_ok=True)

    def mark_failed(self, video_id: str, cause: str) -> None:
        """Record that a video was attempted and failed, so its shard can be assembled without it."""
        self.part_path(video_id).unlink(missing_ok=True)
        atomic_write_text(self._failed_path(video_id), json.dumps({"video_id": video_id, "cause": cause}))

    def holds(self, video_id: str, shard: str) -> bool:
        """Whether a done video's features are in place: its part, or the shard that recorded it."""
        part = self.part_path(video_id)
        if part.is_file():
            return _verifies(part, [video_id])
        record = self.read_record(shard)
        if record is None or video_id not in record["videos"]:
            return False
        return _verifies(self.out_dir / shard, record["videos"])

    # -- shards, after the videos -----------------------------------------------------------------
    def read_record(self, shard: str) -> dict[str, Any] | None:
        """The record of an assembled shard: {"shard", "videos", "failed"}; None if never assembled."""
        try:
            return json.loads(self._record_path(shard).read_text(encoding="utf-8"))
        except (FileNotFoundError, json.JSONDecodeError):
            return None

    def sync(self, shard: str, members: Sequence[str]) -> list[tuple[str, str]]:
        """Assemble `shard` if all its videos were attempted and it is not up to date; returns failures.

        Called by the worker that finishes a shard's last video and, as a safety net, after the run.
        """
        # Cheap early exit without the lock: the last videos of a shard are usually the ones still to do.
        if not members or not all(self._tried(vid) for vid in reversed(members)):
            return []
        with self._shard_lock(shard):
            try:
                self._sync(shard, members)
            except (FlowkitError, OSError, ValueError) as exc:
                from flowkit.jobs.runner import one_line

                return [(str(self.out_dir / shard), one_line(exc))]
        return []

    def _tried(self, video_id: str) -> bool:
        # read_done, not the record's file: finished runs fold records into an index (donestore.py)
        return self.manifest.read_done(video_id) is not None or self._failed_path(video_id).is_file()

    def _sync(self, shard: str, members: Sequence[str]) -> None:
        record = self.read_record(shard)
        sources = self._attempted(shard, members, record)
        if sources is None:
            return
        found = {vid: src for vid, src in sources.items() if src is not None}  # in member order
        done = list(found)
        wanted = _record(shard, done, [vid for vid in members if vid not in found])
        final = self.out_dir / shard
        in_place = _verifies(final, done) if done else not final.exists()
        if record == wanted and in_place and all(src == final for src in found.values()):
            return
        if done:
            self._write_shard(final, found)
        else:
            final.unlink(missing_ok=True)
        atomic_write_text(self._record_path(shard), json.dumps(wanted))
        for vid in done:
            self.part_path(vid).unlink(missing_ok=True)

    def _attempted(
        self, shard: str, members: Sequence[str], record: Mapping[str, Any] | None
    ) -> dict[str, Path | None] | None:
        """Each video's source (its part, or the shard file; None if it failed), or None while a video
        is neither done nor failed (not attempted yet, or its data is gone)."""
        in_shard = set(record["videos"]) if record else set()
        final = self.out_dir / shard
        sources: dict[str, Path | None] = {}
        for vid in members:
            part = self.part_path(vid)
            source = part if part.is_file() else (final if vid in in_shard and final.is_file() else None)
            if self.manifest.read_done(vid) is not None and source is not None:
                sources[vid] = source
            elif self._failed_path(vid).is_file():
                sources[vid] = None
            else:
                self.manifest.clear_done(vid)  # a done record whose data is gone: redo the video
                return None
        return sources

    def _write_shard(self, final: Path, sources: Mapping[str, Path]) -> None:
        """Copy each video from its source into `final` (tmp + rename), with the first source's file attrs."""
        with h5py.File(next(iter(sources.values())), "r") as fh:
            attrs = {k: v for k, v in fh.attrs.items() if k != hdf5.COMPLETE_ATTR}
        with hdf5.ShardWriter(final, attrs) as writer:
            for vid, source in sources.items():
                writer.copy_video(source, vid)
        _verified.pop(str(final), None)

    @contextlib.contextmanager
    def _shard_lock(self, shard: str) -> Iterator[None]:
        """An exclusive lock on one shard file, so one process writes it; the OS drops it if the holder
        dies. A waiter then sees the state the holder left and finds the shard up to date."""
        import fcntl

        path = self.root / "locks" / f"{shard}.lock"
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_CREAT | os.O_RDWR, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def index(self, plans: Sequence[tuple[str, Sequence[str]]]) -> dict[str, str]:
        """video id -> shard file for every assembled video of the current shard plan."""
        mapping = {}
        for shard, members in plans:
            record = self.read_record(shard)
            if record is not None:
                mapping.update({vid: shard for vid in record["videos"] if vid in members})
        return mapping

    def failures(self, plans: Sequence[tuple[str, Sequence[str]]]) -> dict[str, str]:
        """video id -> recorded failure cause, for the videos of the plan that last failed."""
        out = {}
        for _, members in plans:
            for vid in members:
                with contextlib.suppress(FileNotFoundError, json.JSONDecodeError):
                    out[vid] = json.loads(self._failed_path(vid).read_text(encoding="utf-8"))["cause"]
        return out


def shard_members(manifest: Manifest, per: int, index: int) -> list[str]:
    """The video ids of feature shard `index`: positions index*per .. of the job's sorted units."""
    path = manifest.state_dir / "units.json"
    try:
        key = (str(path), path.stat().st_mtime_ns)
    except FileNotFoundError:
        return []  # no unit list (not started by the runner): finalize assembles instead
    if _units_cache.get("key") != key:
        _units_cache.update(key=key, units=manifest.read_units())
    return list(_units_cache["units"][index * per : (index + 1) * per])


_units_cache: dict[str, Any] = {}


def _record(shard: str, done: Sequence[str], failed: Sequence[str]) -> dict[str, Any]:
    return {"shard": shard, "videos": list(done), "failed": list(failed)}


# Verified shards by (path) -> (mtime_ns, size, ids): is_done asks once per video, so a shard of 100
# videos is verified once per process, not 100 times.
_verified: dict[str, tuple[int, int, list[str]]] = {}


def _verifies(path: Path, expected: Sequence[str]) -> bool:
    try:
        stat = path.stat()
    except OSError:
        return False
    key = (stat.st_mtime_ns, stat.st_size)
    cached = _verified.get(str(path))
    if cached is None or cached[:2] != key:
        try:
            ids = hdf5.verify_shard(path)
        except (FlowkitError, OSError):
            return False
        _verified[str(path)] = (*key, ids)
        cached = _verified[str(path)]
    return set(cached[2]) == set(expected)
