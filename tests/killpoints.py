"""Kill-point sweep driver: SIGKILL a flowkit run at its k-th file-system operation, resume, compare.

Run as a fresh process (`python tests/killpoints.py SPEC.json`): it imports flowkit once and never
computes, then forks one child per run, so each kill point costs a fork instead of an interpreter start
(forking a process whose thread pools are running is not safe, hence the fresh driver). In a child, the
file operations below are counted; with a kill point k the child SIGKILLs itself just before the k-th.

SPEC: {"base": folder holding the starting OUT (may be empty), "args": flowkit CLI args without -o,
"work": scratch folder, "every": test every n-th point (1 = all)}. Writes SPEC's "report" JSON:
reference op count and exit code, the points tried, and one line per problem found.
"""

from __future__ import annotations

import builtins
import io
import json
import os
import shutil
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

TEMP_MARKERS = (".tmp", ".old-", ".prev", ".partial")


class Counter:
    """Counts file operations of this process (all threads); kills it at operation `kill_at`."""

    def __init__(self, kill_at: int | None) -> None:
        self.kill_at, self.n = kill_at, 0
        self.lock = threading.Lock()

    def tick(self) -> None:
        with self.lock:
            self.n += 1
            if self.kill_at is not None and self.n >= self.kill_at:
                os.kill(os.getpid(), signal.SIGKILL)


def _wrap(owner: Any, name: str, counter: Counter, writes_only: Any = None) -> None:
    real = getattr(owner, name)

    def hooked(*args: Any, **kwargs: Any) -> Any:
        if writes_only is None or writes_only(*args, **kwargs):
            counter.tick()
        return real(*args, **kwargs)

    setattr(owner, name, hooked)


def _writes_mode(file: Any = None, mode: str = "r", *args: Any, **kwargs: Any) -> bool:
    return any(c in kwargs.get("mode", mode) for c in "wax+")


def _writes_flags(path: Any, flags: int, *args: Any, **kwargs: Any) -> bool:
    return bool(flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT))


def install(kill_at: int | None) -> Counter:
    """Count (and kill at) every replace/rename/link/unlink/mkdir/rmdir/fsync/write and open-for-write."""
    counter = Counter(kill_at)
    for name in ("replace", "rename", "link", "unlink", "remove", "mkdir", "rmdir", "fsync", "write",
                 "ftruncate", "truncate"):
        _wrap(os, name, counter)
    _wrap(os, "open", counter, _writes_flags)
    _wrap(builtins, "open", counter, _writes_mode)
    io.open = builtins.open
    import h5py

    real_init, real_close = h5py.File.__init__, h5py.File.close

    def init(self: Any, name: Any, mode: str = "r", *args: Any, **kwargs: Any) -> None:
        if mode != "r":
            counter.tick()
        real_init(self, name, mode, *args, **kwargs)

    def close(self: Any) -> None:
        if self.id.valid and self.mode != "r":
            counter.tick()
        real_close(self)

    h5py.File.__init__, h5py.File.close = init, close
    return counter


def child(args: list[str], out: Path, kill_at: int | None, count_file: Path | None) -> None:
    """Run `flowkit ARGS -o OUT -q -j 1 --backend sequential` in this (forked) process, then _exit."""
    from flowkit.cli import main

    counter = install(kill_at)
    code = 0
    try:
        main.main([*args, "-o", str(out), "-q", "-j", "1", "--backend", "sequential"], standalone_mode=True)
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    except BaseException:  # noqa: BLE001 - report, never hang
        code = 99
    if count_file is not None:
        count_file.write_text(str(counter.n))
    os._exit(code)


def fork_run(args: list[str], out: Path, kill_at: int | None = None,
             count_file: Path | None = None) -> int:
    """Exit code of a forked run (-9 when it was killed)."""
    pid = os.fork()
    if pid == 0:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 1)
        os.dup2(devnull, 2)
        child(args, out, kill_at, count_file)
    _, status = os.waitpid(pid, 0)
    return -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)


def snapshot(out: Path) -> dict[str, Any]:
    """Every output file by content (HDF5 by datasets and attributes), not the manifest."""
    import h5py
    import numpy as np

    files: dict[str, Any] = {}
    for path in sorted(out.rglob("*")):
        if not path.is_file() or ".flowkit" in path.relative_to(out).parts or is_temporary(path):
            continue  # temporaries are reported on their own
        rel = str(path.relative_to(out))
        if path.suffix == ".h5":
            content: dict[str, Any] = {}
            with h5py.File(path, "r") as fh:
                fh.visititems(lambda name, obj, c=content: c.__setitem__(
                    name, np.asarray(obj).tobytes() if isinstance(obj, h5py.Dataset) else None))
                fh.visititems(lambda name, obj, c=content: c.__setitem__(
                    name + "@", sorted((k, str(v)) for k, v in obj.attrs.items())))
                content["@"] = sorted((k, str(v)) for k, v in fh.attrs.items())
            files[rel] = content
        else:
            files[rel] = path.read_bytes()
    return files


def status_lines(out: Path) -> list[str]:
    """What `flowkit status` says, less the wall-clock figures."""
    from flowkit.jobs.status import read_status

    return [line for line in read_status(out).lines() if not line.startswith("throughput:")]


def is_temporary(path: Path) -> bool:
    return any(m in path.name for m in TEMP_MARKERS)


def temporaries(out: Path) -> list[str]:
    return [str(p.relative_to(out)) for p in out.rglob("*") if is_temporary(p)]


def sweep(spec: dict[str, Any]) -> dict[str, Any]:
    start = time.perf_counter()
    base, work, args = Path(spec["base"]), Path(spec["work"]), spec["args"]
    ref = work / "ref"
    shutil.copytree(base, ref)
    count = work / "count"
    ref_code = fork_run(args, ref, None, count)
    total = int(count.read_text())
    want = (snapshot(ref), status_lines(ref), ref_code)
    problems: list[str] = []
    points = list(range(1, total + 1, spec.get("every", 1)))
    for k in points:
        out = work / f"k{k}"
        shutil.copytree(base, out)
        killed = fork_run(args, out, k)
        code = fork_run(args, out)
        if code != ref_code:
            problems.append(f"k={k}: resume exited {code} (uninterrupted: {ref_code}; kill run {killed})")
            continue
        left = temporaries(out)
        if left:
            problems.append(f"k={k}: temporaries left {left}")
        got = (snapshot(out), status_lines(out))
        if got[0] != want[0]:
            diff = sorted(set(got[0]) ^ set(want[0])) or [f for f in want[0] if got[0].get(f) != want[0][f]]
            problems.append(f"k={k}: outputs differ: {diff[:5]}")
        if got[1] != want[1]:
            problems.append(f"k={k}: status differs: {got[1]} != {want[1]}")
        shutil.rmtree(out, ignore_errors=True)
    return {"total": total, "ref_code": ref_code, "points": points, "problems": problems,
            "seconds": time.perf_counter() - start}


if __name__ == "__main__":
    specs = json.loads(Path(sys.argv[1]).read_text())  # a list of SPECs, swept one after the other
    # Import once here, before any fork, what the commands load lazily (torch, OpenCV, h5py, pipelines):
    # otherwise every child pays the imports. Importing starts no thread, so forking stays safe.
    import importlib

    for name in ("flowkit.cli", "torch", "cv2", "h5py", "flowkit.pipelines.flow",
                 "flowkit.pipelines.features", "flowkit.pipelines.frames", "flowkit.jobs.runner",
                 "flowkit.jobs.status", "flowkit.models"):
        importlib.import_module(name)

    for spec in specs:
        Path(spec["report"]).write_text(json.dumps(sweep(spec)))
