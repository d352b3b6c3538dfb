"""Atomic file writes and the naming rule of every temporary flowkit leaves beside an output.

A temporary is a hidden sibling named after its final file plus the writer that owns it:
``.NAME.PID@HOST.tmp`` (files), ``.NAME.tmp-PID@HOST`` / ``.NAME.old-PID@HOST`` (folders). Older versions
wrote ``.NAME.PID.tmp`` and ``.NAME.tmp-PID`` (no host: taken as this host). From the name alone a rerun
can tell whose a temporary is and remove those whose writer is dead (`remove_dead_temporaries`).
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import socket
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

# A temporary of another host whose folder and files are untouched this long has no live writer:
# its small files are written in milliseconds, a per-video folder gains a file every few frames.
FOREIGN_TEMP_AGE_S = 3600.0

_FILE_TEMP = re.compile(r"^\.(?P<base>.+)\.(?P<pid>\d+)(?:@(?P<host>[^@/]+))?\.tmp$")
_DIR_TEMP = re.compile(r"^\.(?P<base>.+)\.(?P<kind>tmp|old)-(?P<pid>\d+)(?:@(?P<host>[^@/]+))?$")


def host_tag(host: str | None = None) -> str:
    """This machine's name as it appears in temporary names (safe characters only, no '@' or '/')."""
    name = socket.gethostname() if host is None else host
    return re.sub(r"[^A-Za-z0-9._-]", "_", name)[:64] or "host"


def writer_tag() -> str:
    """`PID@HOST` of the calling process (computed per call: forked workers have their own pid)."""
    return f"{os.getpid()}@{host_tag()}"


def temp_path(path: Path, kind: str = "tmp") -> Path:
    """The calling process's temporary for `path`: a file (kind 'tmp') or a folder ('tmp-', 'old-')."""
    path = Path(path)
    if kind == "tmp":
        return path.with_name(f".{path.name}.{writer_tag()}.tmp")
    return path.with_name(f".{path.name}.{kind}-{writer_tag()}")


@dataclass(frozen=True)
class Temporary:
    """A parsed temporary name: the final name it belongs to and its writer (host None: legacy name)."""

    base: str
    pid: int
    host: str | None


def parse_temporary(name: str) -> Temporary | None:
    """Parse a temporary's file or folder name; None if it is not one."""
    match = _FILE_TEMP.match(name) or _DIR_TEMP.match(name)
    if match is None:
        return None
    return Temporary(match["base"], int(match["pid"]), match["host"])


def pid_alive(pid: int) -> bool:
    """Whether a process with this pid exists on this machine (a zombie counts as dead)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # an unreaped child still answers kill(0); its state in /proc says it is gone
        with open(f"/proc/{pid}/stat", "rb") as fh:
            return fh.read().rsplit(b")", 1)[1].split()[0] != b"Z"
    except (OSError, IndexError):
        return True


def writer_dead(path: Path, temp: Temporary, now: float | None = None) -> bool:
    """Whether the writer of a temporary is gone: a dead pid here, or (another host) long idle."""
    if temp.host is None or temp.host == host_tag():
        return temp.pid != os.getpid() and not pid_alive(temp.pid)
    return (time.time() if now is None else now) - _last_change(path) > FOREIGN_TEMP_AGE_S


def _last_change(path: Path) -> float:
    try:
        newest = path.lstat().st_mtime
        if path.is_dir() and not path.is_symlink():
            with os.scandir(path) as entries:
                for entry in entries:
                    with contextlib.suppress(OSError):
                        newest = max(newest, entry.stat(follow_symlinks=False).st_mtime)
    except OSError:
        return time.time()  # vanished or unreadable: not ours to judge now
    return newest


def remove_path(path: Path) -> None:
    """Delete a file or a folder tree; a missing one is fine."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def remove_dead_temporaries(folders: Iterable[Path]) -> list[Path]:
    """Remove the temporaries in these folders (not below) whose writer is dead; returns them."""
    removed = []
    now = time.time()
    for folder in folders:
        try:
            with os.scandir(folder) as entries:
                names = [e.name for e in entries if e.name.startswith(".")]
        except (FileNotFoundError, NotADirectoryError):
            continue
        for name in names:
            temp = parse_temporary(name)
            if temp is not None and writer_dead(Path(folder) / name, temp, now):
                remove_path(Path(folder) / name)
                removed.append(Path(folder) / name)
    return removed


def remove_temporaries_of(final: Path) -> None:
    """Remove every temporary of one output, whatever its writer (for the unit's owner, under its lock)."""
    final = Path(final)
    try:
        with os.scandir(final.parent) as entries:
            names = [e.name for e in entries if e.name.startswith(f".{final.name}.")]
    except (FileNotFoundError, NotADirectoryError):
        return
    for name in names:
        temp = parse_temporary(name)
        if temp is not None and temp.base == final.name:
            remove_path(final.parent / name)


def atomic_write(path: Path, write: Callable[[BinaryIO], Any]) -> None:
    """Write through `write(fh)` into a hidden temporary beside `path`, fsync, rename it over `path`.

    The temporary is removed if anything fails (disk full included), so no partial file is left.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path(path)
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
