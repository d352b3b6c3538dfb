"""Run locks: one live run per shard of an output folder, safe on a shared filesystem of many hosts.

A lock file is never seen empty: its owner record (host, pid, boot, start, heartbeat, lease) is written
to a temporary first and hard-linked to the lock name, which fails if the lock exists (O_EXCL semantics).
While held, a thread refreshes the heartbeat in place. A lock is stale when its process is gone (same
machine: dead or reused pid, or a reboot since) or, from another host, when its heartbeat is older than
its lease. Taking over a stale lock happens under a `.takeover` guard created the same exclusive way,
and only if the lock is still the very file judged stale, so two runs can never both win.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import math
import os
import re
import socket
import threading
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

from flowkit.atomic import pid_alive, temp_path
from flowkit.errors import ManifestError, OutputError

if TYPE_CHECKING:
    from flowkit.jobs.manifest import Manifest

log = logging.getLogger("flowkit")

LEASE_S = 120.0  # another host's lock whose heartbeat is older than this is stale
HEARTBEAT_S = 15.0  # how often a held lock's heartbeat is refreshed
GRACE_S = 10.0  # an empty lock (older flowkit, between create and write) or a guard this young is live
_RECORD_BYTES = 1024  # records are padded to one size, so an in-place heartbeat rewrites all of it
_HELD_TOKENS: set[str] = set()  # locks this process holds (a same-pid lock without one is a past life)


def _read(path: str) -> str:
    try:
        with open(path, encoding="utf-8") as fh:
            return fh.read().strip()
    except OSError:
        return ""


def _pid_start(pid: int) -> str:
    """The kernel's start time of a process (field 22 of /proc/PID/stat): tells a reused pid apart."""
    fields = _read(f"/proc/{pid}/stat").rsplit(")", 1)[-1].split()
    return fields[19] if len(fields) > 19 else ""


def _pid_namespace() -> str:
    with contextlib.suppress(OSError):
        return os.readlink("/proc/self/ns/pid")
    return ""


def _parse_tag(tag: str) -> tuple[int, int] | None:
    match = re.fullmatch(r"shard-(\d+)-of-(\d+)", tag)
    return (int(match[1]), int(match[2])) if match else None


Snapshot = tuple[dict[str, Any], os.stat_result]  # a lock file's record and stat, read through one fd


def _same_file(a: Snapshot, b: Snapshot) -> bool:
    """Whether two snapshots show the same lock file: the inode alone is not enough, a file created
    just after an unlink often gets the freed inode back; the record (a unique token) and mtime tell."""
    (owner_a, st_a), (owner_b, st_b) = a, b
    same_inode = (st_a.st_ino, st_a.st_dev, st_a.st_mtime_ns) == (st_b.st_ino, st_b.st_dev, st_b.st_mtime_ns)
    return same_inode and owner_a == owner_b


def _pause_for_tests() -> None:
    # Test hook: FLOWKIT_TEST_LOCK_PAUSE=SECONDS sleeps between judging a lock stale and taking it
    # over, to prove that two runs racing for one stale lock cannot both win (tests/test_locks.py).
    delay = float(os.environ.get("FLOWKIT_TEST_LOCK_PAUSE", "0") or 0)
    if delay > 0:
        time.sleep(delay)


class RunLock:
    """An exclusive lock on one shard of an output folder, so two runs never write the same units."""

    def __init__(self, manifest: Manifest, tag: str) -> None:
        self._manifest = manifest
        self.path = manifest.state_dir / "locks" / f"{tag}.lock"
        self.guard = self.path.with_name(self.path.name + ".takeover")
        self._fd: int | None = None
        self._token = uuid.uuid4().hex
        self._started = time.time()
        self._stop = threading.Event()
        self._beat: threading.Thread | None = None

    # -- taking and giving back ---------------------------------------------------------------------
    def acquire(self) -> None:
        """Take the lock or raise ManifestError naming the live holder; reclaim a stale holder's lock."""
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = self._take()
        except OSError as exc:
            raise OutputError(f"{self.path}: cannot take the run lock ({exc.strerror or exc})") from exc
        if fd is None:
            raise ManifestError(self._held_message())
        self._fd = fd
        _HELD_TOKENS.add(self._token)
        self._stop.clear()
        self._beat = threading.Thread(target=self._heartbeat, name="flowkit-lock", daemon=True)
        self._beat.start()
        self._refuse_overlapping()

    def _take(self) -> int | None:
        for _ in range(3):
            fd = self._create(self.path)
            if fd is not None:
                return fd
            snapshot = self._snapshot(self.path)
            if snapshot is None:
                continue  # released meanwhile
            if not self._gone(*snapshot):
                return None
            _pause_for_tests()
            fd = self._take_over(snapshot)
            if fd is not None:
                return fd
        return None

    def release(self) -> None:
        """Give the lock back (only if the lock file is still this run's own)."""
        self._stop.set()
        if self._beat is not None and self._beat is not threading.current_thread():
            self._beat.join(timeout=5)
        self._beat = None
        _HELD_TOKENS.discard(self._token)
        if self._fd is None:
            return
        with contextlib.suppress(OSError):
            if self._is_mine():
                self.path.unlink()
        with contextlib.suppress(OSError):
            os.close(self._fd)
        self._fd = None

    def _is_mine(self) -> bool:
        assert self._fd is not None
        mine, now = os.fstat(self._fd), os.stat(self.path)
        return (mine.st_ino, mine.st_dev) == (now.st_ino, now.st_dev)

    # -- exclusive creation with the owner inside ---------------------------------------------------
    def _record(self) -> bytes:
        now = time.time()
        record = {
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "started": self._started,
            "heartbeat": now,
            "lease": LEASE_S,
            "token": self._token,
            "boot_id": _read("/proc/sys/kernel/random/boot_id"),
            "pidns": _pid_namespace(),
            "pid_start": _pid_start(os.getpid()),
        }
        return json.dumps(record).encode().ljust(_RECORD_BYTES)

    def _create(self, path: Path) -> int | None:
        """Create `path` holding our record, or None if it exists. Returns an fd open on it."""
        tmp = temp_path(path)
        fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            os.write(fd, self._record())
            os.fsync(fd)
            linked = self._link(tmp, path, fd)
        except BaseException:
            os.close(fd)
            raise
        finally:
            tmp.unlink(missing_ok=True)
        if linked is True:
            return fd
        os.close(fd)
        return self._create_without_links(path) if linked is None else None

    @staticmethod
    def _link(tmp: Path, path: Path, fd: int) -> bool | None:
        """Hard-link tmp to path: True if linked, False if path exists, None if links are unsupported."""
        try:
            os.link(tmp, path)
        except FileExistsError:
            # NFS may report EEXIST for a link whose reply was lost: two names mean it is ours.
            return os.fstat(fd).st_nlink == 2
        except OSError as exc:
            if exc.errno in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV):
                return None
            raise
        return True

    def _create_without_links(self, path: Path) -> int | None:
        """For filesystems without hard links: O_EXCL, then the record (empty for microseconds; readers
        give an empty lock GRACE_S before calling it stale)."""
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            return None
        try:
            os.write(fd, self._record())
            os.fsync(fd)
        except BaseException:
            os.close(fd)
            path.unlink(missing_ok=True)  # ours, created a moment ago: never leave it empty
            raise
        return fd

    # -- staleness and takeover ---------------------------------------------------------------------
    @staticmethod
    def _snapshot(path: Path) -> Snapshot | None:
        """The record and stat of one lock file (read through one descriptor), or None if absent."""
        try:
            fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError:
            return None
        try:
            st = os.fstat(fd)
            raw = os.read(fd, 1 << 16)
        finally:
            os.close(fd)
        try:
            owner = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError):
            owner = {}
        return (owner if isinstance(owner, dict) else {}), st

    def _gone(self, owner: dict[str, Any], st: os.stat_result) -> bool:
        """Whether the holder of a lock with this record and stat can no longer be running."""
        if not owner.get("pid"):  # empty or corrupt: an older flowkit killed between create and write
            return time.time() - st.st_mtime > GRACE_S
        if owner.get("host") == socket.gethostname():
            if owner.get("boot_id") not in (None, "", _read("/proc/sys/kernel/random/boot_id")):
                return True  # the machine rebooted since
            if owner.get("pidns") in (None, "", _pid_namespace()):
                return self._process_gone(owner)
        lease = owner.get("lease")
        if lease is None:
            return False  # an older flowkit on another host keeps no heartbeat: only a person can tell
        beat = max(float(owner.get("heartbeat", 0)), st.st_mtime)
        return time.time() - beat > float(lease)

    @staticmethod
    def _process_gone(owner: dict[str, Any]) -> bool:
        try:
            pid = int(owner["pid"])
        except (TypeError, ValueError):
            return True
        if pid == os.getpid():
            return owner.get("token") not in _HELD_TOKENS
        if not pid_alive(pid):
            return True
        recorded = owner.get("pid_start")
        return bool(recorded) and _pid_start(pid) not in ("", recorded)

    def _take_over(self, stale: Snapshot) -> int | None:
        """Replace the stale lock, if it is still the file judged stale, under the takeover guard."""
        guard_fd = self._create(self.guard)
        if guard_fd is None:
            self._clear_dead_guard()
            return None
        try:
            now = self._snapshot(self.path)
            if now is not None:
                if not _same_file(now, stale):
                    return None  # replaced meanwhile: judge the new one
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(self.path)
            return self._create(self.path)
        finally:
            os.close(guard_fd)
            with contextlib.suppress(OSError):
                self.guard.unlink()

    def _clear_dead_guard(self) -> None:
        """A takeover guard left by a killed run is removed (atomically: set aside, then checked)."""
        judged = self._snapshot(self.guard)
        if judged is None or not self._gone(*judged):
            return
        aside = temp_path(self.guard, "old")
        try:
            os.rename(self.guard, aside)
        except FileNotFoundError:
            return
        moved = self._snapshot(aside)
        if moved is not None and not _same_file(moved, judged):
            with contextlib.suppress(FileExistsError):
                os.link(aside, self.guard)  # not the one judged dead: put it back
        aside.unlink(missing_ok=True)

    # -- heartbeat ----------------------------------------------------------------------------------
    def _heartbeat(self) -> None:
        while not self._stop.wait(HEARTBEAT_S):
            fd = self._fd
            if fd is None:
                return
            try:
                os.pwrite(fd, self._record(), 0)
                os.fsync(fd)  # NFS clients keep writes until a flush: other hosts must see the beat
                if not self._is_mine():
                    log.warning("%s: this run's lock was taken over by another run", self.path)
                    return
            except OSError:
                continue  # a full disk or a network hiccup: try again at the next beat

    # -- shards and messages ------------------------------------------------------------------------
    def _refuse_overlapping(self) -> None:
        """Shards i/N and j/M share units when i = j mod gcd(N, M): a live lock blocks the other."""
        mine = _parse_tag(self.path.stem)
        for other in sorted(self.path.parent.glob("*.lock")):
            theirs = _parse_tag(other.stem)
            if other == self.path or mine is None or theirs is None:
                continue
            if (mine[0] - theirs[0]) % math.gcd(mine[1], theirs[1]) == 0:
                lock = RunLock(self._manifest, other.stem)
                if not lock._stale():
                    self.release()
                    raise ManifestError(
                        f"{lock._held_message()} (its {other.stem} overlaps {self.path.stem})"
                    )

    def _owner(self) -> dict[str, Any]:
        snapshot = self._snapshot(self.path)
        return snapshot[0] if snapshot else {}

    def _stale(self) -> bool:
        """Whether this lock file's holder is gone (a missing lock counts as stale)."""
        snapshot = self._snapshot(self.path)
        return snapshot is None or self._gone(*snapshot)

    def holder(self) -> dict[str, Any] | None:
        """The record of the run holding this lock now (host, pid, started, heartbeat), or None."""
        snapshot = self._snapshot(self.path)
        return snapshot[0] if snapshot is not None and not self._gone(*snapshot) else None

    def _held_message(self) -> str:
        owner = self._owner()
        beat = owner.get("heartbeat")
        since = f" (last heartbeat {time.time() - float(beat):.0f} s ago)" if beat else ""
        if not owner:
            since = " (its lock is still being written)"
        return (
            f"another flowkit run (host {owner.get('host', '?')}, pid {owner.get('pid', '?')}) is "
            f"writing this output{since}; wait for it, or delete {self.path} if it is gone"
        )
