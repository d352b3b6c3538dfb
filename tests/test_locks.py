"""Run locks on a shared filesystem: never empty, heartbeats and leases, atomic takeover, SIGTERM,
and temporaries of dead writers removed by a rerun."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from clirun import run

from flowkit.errors import ManifestError
from flowkit.jobs import lock as lockmod
from flowkit.jobs.manifest import Manifest, RunLock
from flowkit.synthetic import moving_video

TAG = "shard-0-of-1"


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def write_lock(out: Path, record: dict | None, age: float = 0.0) -> Path:
    path = out / ".flowkit" / "locks" / f"{TAG}.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("" if record is None else json.dumps(record))
    stamp = time.time() - age
    os.utime(path, (stamp, stamp))
    return path


def child(script: str, **env: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(script)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, **env},
    )


def test_a_run_killed_while_taking_the_lock_never_leaves_an_empty_lock(tmp_path):
    # kill -9 at the first write of the lock: the old lock was created empty, then written.
    proc = child(
        f"""
        import os, signal
        from flowkit.jobs.manifest import Manifest, RunLock
        real = os.write
        def die(fd, data):
            os.kill(os.getpid(), signal.SIGKILL)
        os.write = die
        RunLock(Manifest({str(tmp_path)!r}), {TAG!r}).acquire()
        """
    )
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    lock_path = tmp_path / ".flowkit" / "locks" / f"{TAG}.lock"
    assert not lock_path.exists() or json.loads(lock_path.read_text())["pid"]
    lock = RunLock(Manifest(tmp_path), TAG)
    lock.acquire()  # the next run starts
    lock.release()


def test_an_empty_lock_of_an_older_version_is_stale_after_a_grace(tmp_path):
    write_lock(tmp_path, None, age=0)
    with pytest.raises(ManifestError, match="still being written"):
        RunLock(Manifest(tmp_path), TAG).acquire()
    write_lock(tmp_path, None, age=lockmod.GRACE_S + 5)
    lock = RunLock(Manifest(tmp_path), TAG)
    lock.acquire()
    assert json.loads(lock.path.read_text())["pid"] == os.getpid()
    lock.release()
    assert not lock.path.exists()


def test_another_hosts_lock_expires_with_its_lease(tmp_path):
    record = {"host": "node-that-died", "pid": 4242, "lease": 120.0}
    write_lock(tmp_path, {**record, "heartbeat": time.time() - 5})
    with pytest.raises(ManifestError, match=r"host node-that-died, pid 4242\).*heartbeat 5 s ago"):
        RunLock(Manifest(tmp_path), TAG).acquire()
    write_lock(tmp_path, {**record, "heartbeat": time.time() - 121}, age=121)
    lock = RunLock(Manifest(tmp_path), TAG)
    lock.acquire()
    lock.release()
    write_lock(tmp_path, {"host": "old-flowkit-node", "pid": 4242}, age=10_000)
    with pytest.raises(ManifestError):  # no lease recorded (older flowkit): only a person can tell
        RunLock(Manifest(tmp_path), TAG).acquire()


def test_same_host_locks_of_dead_reused_or_rebooted_pids_are_reclaimed(tmp_path):
    host = socket.gethostname()
    live = os.getppid()
    for record in (
        {"host": host, "pid": dead_pid()},
        {"host": host, "pid": live, "pid_start": "1"},  # the pid now belongs to another process
        {"host": host, "pid": live, "boot_id": "another-boot"},
    ):
        write_lock(tmp_path, record)
        lock = RunLock(Manifest(tmp_path), TAG)
        lock.acquire()
        lock.release()
    write_lock(tmp_path, {"host": host, "pid": live})
    with pytest.raises(ManifestError, match=f"pid {live}\\)"):
        RunLock(Manifest(tmp_path), TAG).acquire()


def test_the_heartbeat_is_refreshed_while_the_lock_is_held(tmp_path, monkeypatch):
    monkeypatch.setattr(lockmod, "HEARTBEAT_S", 0.05)
    lock = RunLock(Manifest(tmp_path), TAG)
    lock.acquire()
    first = json.loads(lock.path.read_text())
    time.sleep(0.3)
    later = json.loads(lock.path.read_text())
    assert later["heartbeat"] > first["heartbeat"] and later["started"] == first["started"]
    assert {"host", "pid", "lease", "token"} <= later.keys()
    lock.release()
    assert not lock.path.exists()


def test_two_runs_racing_for_a_stale_lock_cannot_both_win(tmp_path):
    write_lock(tmp_path, {"host": socket.gethostname(), "pid": dead_pid()})
    go, end = tmp_path / "go", tmp_path / "end"
    script = f"""
        import os, time
        from flowkit.errors import ManifestError
        from flowkit.jobs.manifest import Manifest, RunLock
        def wait_for(path):
            while not os.path.exists(path):
                time.sleep(0.01)
        print("ready", flush=True)
        wait_for({str(go)!r})
        lock = RunLock(Manifest({str(tmp_path)!r}), {TAG!r})
        try:
            lock.acquire()
        except ManifestError:
            print("refused", flush=True)
        else:
            print("won", flush=True)
            wait_for({str(end)!r})  # hold the lock until both have answered
            lock.release()
        """
    # Both judge the lock stale, then pause before taking it over.
    procs = [child(script, FLOWKIT_TEST_LOCK_PAUSE="1.5") for _ in range(2)]
    for proc in procs:
        assert proc.stdout.readline().strip() == "ready"
    go.touch()
    results = sorted(proc.stdout.readline().strip() for proc in procs)
    end.touch()
    for proc in procs:
        proc.communicate(timeout=60)
    assert results == ["refused", "won"]


def test_sigterm_stops_the_run_like_ctrl_c(tmp_path):
    for k in range(3):
        moving_video(tmp_path / "in" / f"v{k}.mp4", n=60, height=64, width=64, seed=k)
    out = tmp_path / "out"
    args = [sys.executable, "-m", "flowkit", "sample-frames", tmp_path / "in", "-o", out, "-j", "2", "-q"]
    proc = subprocess.Popen(list(map(str, args)), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)
    lock = out / ".flowkit" / "locks" / f"{TAG}.lock"
    deadline = time.monotonic() + 60
    while not lock.exists() and time.monotonic() < deadline:
        time.sleep(0.02)
    time.sleep(0.2)  # the workers are starting (they take seconds to import): the run is under way
    assert proc.poll() is None, "the run ended before it could be terminated"
    os.killpg(proc.pid, signal.SIGTERM)  # as Slurm does on preemption: every process of the job
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143, err
    assert "terminated (SIGTERM); rerun the same command to resume" in err and "Traceback" not in err
    assert not lock.exists()
    again = run("sample-frames", tmp_path / "in", "-o", out)
    assert again.exit_code == 0 and "failed 0" in again.output, again.output
    assert len((out / "list_rgb.txt").read_text().splitlines()) == 3


def test_a_rerun_removes_the_temporaries_of_dead_writers(tmp_path):
    moving_video(tmp_path / "in" / "c" / "v.mp4", n=3, height=32, width=32)
    out = tmp_path / "out"
    assert run("sample-frames", tmp_path / "in", "-o", out).exit_code == 0
    gone, me = dead_pid(), os.getpid()
    state = out / ".flowkit"
    dead = [
        state / f".job.json.{gone}.tmp",
        state / f".units.json.{gone}.tmp",
        state / "done" / f".c_v-0123456789.json.{gone}.tmp",
        out / f".list_rgb.txt.{gone}.tmp",
        out / f".classes.txt.{gone}@{socket.gethostname()}.tmp",
        out / f".index.json.{gone}.tmp",
        out / "c" / f".v.tmp-{gone}",
        out / "c" / f".w.old-{gone}",
        out / f".list_rgb.txt.{me}@node-long-gone.tmp",
    ]
    alive = [out / f".list_rgb.txt.{me}.tmp", out / f".classes.txt.{gone}@node-busy.tmp",
             out / "c" / f".v.tmp-{me}"]
    for path in dead + alive:
        if ".tmp-" in path.name or ".old-" in path.name:
            path.mkdir()
            (path / "img_00001.jpg").write_bytes(b"x")
        else:
            path.write_text("partial")
    hours_ago = time.time() - 3 * 3600
    for path in (dead[-1],):
        os.utime(path, (hours_ago, hours_ago))
    result = run("sample-frames", tmp_path / "in", "-o", out)
    assert result.exit_code == 0 and "skipped 1" in result.output, result.output
    assert [p for p in dead if p.exists()] == []
    assert [p for p in alive if not p.exists()] == []


def test_without_hard_links_the_lock_is_still_exclusive_and_never_empty(tmp_path, monkeypatch):
    import errno

    def no_links(*_args):
        raise OSError(errno.EPERM, "Operation not permitted")

    monkeypatch.setattr(os, "link", no_links)
    lock = RunLock(Manifest(tmp_path), TAG)
    lock.acquire()
    assert json.loads(lock.path.read_text())["pid"] == os.getpid()
    with pytest.raises(ManifestError, match="another flowkit run"):
        RunLock(Manifest(tmp_path), TAG).acquire()
    lock.release()
    assert not lock.path.exists() and os.listdir(lock.path.parent) == []
