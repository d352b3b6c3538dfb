"""`flowkit status` tells the truth: event order, running vs interrupted, frames done, exit codes."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from clirun import run
from test_jobs import FakePipeline, items

from flowkit.jobs import progress
from flowkit.jobs.manifest import EventLog, Manifest, RunLock, safe_name
from flowkit.jobs.runner import RunOptions, run_pipeline
from flowkit.jobs.status import read_status
from flowkit.outputs import rawframes


def on_host(monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    """The next run logs as if it ran on node `name` (log file names embed the host)."""
    monkeypatch.setattr(socket, "gethostname", lambda: name)


def test_a_fixed_and_rerun_failure_is_done_whatever_the_log_names(tmp_path, monkeypatch):
    on_host(monkeypatch, "node-b")  # the failing run's log sorts after the fixing run's
    first = run_pipeline(FakePipeline(tmp_path, bad={"v02"}), items(4), tmp_path, RunOptions(quiet=True))
    assert first.exit_code == 1 and read_status(tmp_path).exit_code == 1
    on_host(monkeypatch, "node-a")
    fixed = run_pipeline(FakePipeline(tmp_path), items(4), tmp_path, RunOptions(quiet=True))
    assert fixed.exit_code == 0 and fixed.done == 1
    report = read_status(tmp_path)
    assert report.failed == {} and len(report.done) == 4 and report.exit_code == 0
    assert "state: complete (exit 0)" in report.lines()


def test_a_later_failure_wins_over_an_earlier_done(tmp_path, monkeypatch):
    on_host(monkeypatch, "node-z")
    run_pipeline(FakePipeline(tmp_path), items(3), tmp_path, RunOptions(quiet=True))
    (tmp_path / "v01.txt").unlink()  # output lost: the next run redoes v01, which now fails
    Manifest(tmp_path).clear_done("v01")
    on_host(monkeypatch, "node-a")
    run_pipeline(FakePipeline(tmp_path, bad={"v01"}), items(3), tmp_path, RunOptions(quiet=True))
    report = read_status(tmp_path)
    assert list(report.failed) == ["v01"] and report.exit_code == 1


def test_events_merge_by_run_number_then_time(tmp_path):
    manifest = Manifest(tmp_path)
    runs = [manifest.new_run() for _ in range(3)]
    assert runs == [1, 2, 3]
    late = EventLog(manifest, "a-late", run=3)  # sorts first by name, happened last
    early = EventLog(manifest, "z-early", run=2)
    early.write("start", unit="u")
    early.write("failed", unit="u")
    late.write("start", unit="u")
    late.write("done", unit="u")
    late.close()
    early.close()
    assert [(e["run"], e["event"]) for e in manifest.events()] == [
        (2, "start"), (2, "failed"), (3, "start"), (3, "done")]


def test_disk_full_then_resume_shows_no_old_failure(make_video, tmp_path, monkeypatch):
    for name in ("a/v1", "b/v2"):
        make_video(f"in/{name}.mp4", n=6, height=32, width=32)
    out = tmp_path / "out"
    real = rawframes._write_bytes

    def full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    on_host(monkeypatch, "node-b")
    monkeypatch.setattr(rawframes, "_write_bytes", full)
    assert run("sample-frames", tmp_path / "in", "-o", out).exit_code == 1
    assert run("status", out).exit_code == 1
    monkeypatch.setattr(rawframes, "_write_bytes", real)
    on_host(monkeypatch, "node-a")
    assert run("sample-frames", tmp_path / "in", "-o", out).exit_code == 0
    status = run("status", out)
    assert status.exit_code == 0, status.output
    assert "FAILED" not in status.output and "2 done, 0 failed, 0 not done" in status.output


def write_heartbeat(out: Path, tag: str, unit: str, frames: int, total: int) -> None:
    path = progress.progress_dir(Manifest(out), tag) / f"{safe_name(unit)}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"unit": unit, "frames": frames, "total": total}))


def test_status_tells_running_from_interrupted_by_the_lock_holder(tmp_path):
    run_pipeline(FakePipeline(tmp_path), items(3), tmp_path, RunOptions(quiet=True))
    manifest = Manifest(tmp_path)
    manifest.clear_done("v01")
    log = EventLog(manifest, "shard-0-of-1-x", run=manifest.new_run())
    log.write("start", unit="v01", shard="shard-0-of-1")
    log.close()
    write_heartbeat(tmp_path, "shard-0-of-1", "v01", 40, 250)
    lock = RunLock(manifest, "shard-0-of-1")
    lock.path.parent.mkdir(parents=True, exist_ok=True)
    lock.path.write_text(json.dumps({"host": socket.gethostname(), "pid": 999999999}))  # died
    dead = run("status", tmp_path)
    assert dead.exit_code == 3, dead.output
    assert "1 not done (0 running, 1 interrupted)" in dead.output
    assert "interrupted v01: 40/250 frames when it stopped" in dead.output
    assert "shard-0-of-1: interrupted (host" in dead.output and "is gone" in dead.output
    lock.path.unlink()
    lock.acquire()  # a live holder (this process)
    try:
        alive = run("status", tmp_path)
        assert alive.exit_code == 4, alive.output
        assert "running v01: 40/250 frames" in alive.output
        assert f"shard-0-of-1: running (host {socket.gethostname()}, pid {os.getpid()})" in alive.output
    finally:
        lock.release()


@pytest.mark.parametrize(
    "command, args",
    [
        ("extract-flow", ["-a", "dis", "--batch-size", "2"]),
        ("sample-frames", ["--sampler", "uniform", "--num-frames", "3"]),
        ("features", ["--model", "c3d_test", "--clip-len", "16", "--pad-last"]),
    ],
)
def test_every_command_reports_frames_inside_a_video(make_video, tmp_path, monkeypatch, weights,
                                                     command, args):
    make_video("in/v.mp4", n=20, height=32, width=32)
    beats: list[tuple[int, int]] = []
    monkeypatch.setenv("FLOWKIT_HEARTBEAT_S", "0")
    monkeypatch.setattr(progress.UnitProgress, "write", lambda self: beats.append((self.done, self.total)))
    extra = ["--weights", weights] if command == "features" else []
    result = run(command, tmp_path / "in", "-o", tmp_path / "out", *args, *extra)
    assert result.exit_code == 0, result.output
    assert beats[-1] == (20, 20) and beats[0][0] < 5, beats  # counts every frame, from the start
    assert [d for d, _ in beats] == sorted(d for d, _ in beats)
    assert not list((tmp_path / "out" / ".flowkit" / "progress").rglob("*.json"))  # removed at the end


def test_bar_postfix_shows_frames_and_an_eta():
    beats = [{"frames": 50, "total": 200}, {"frames": 25, "total": 100}]
    text = progress.describe(beats, finished_frames=225, elapsed=10.0, failed=1)
    # 300 frames in 10 s -> 30 frames/s; 225 frames left on the running videos -> 7.5 s.
    assert text == "running 2: 75/300 frames, ETA 8s, 30.0 frames/s, failed 1"
    assert progress.format_seconds(125) == "2m05s" and progress.format_seconds(7300) == "2h01m"


@pytest.mark.slow
def test_status_of_a_live_then_killed_run(make_video, tmp_path):
    make_video("in/long.mp4", n=120, height=64, width=64)
    out = tmp_path / "out"
    env = {**os.environ, "FLOWKIT_HEARTBEAT_S": "0"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "flowkit", "extract-flow", str(tmp_path / "in"), "-o", str(out),
         "-a", "tvl1-opencv", "--batch-size", "2", "--quiet"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        beat = progress.progress_dir(Manifest(out), "shard-0-of-1") / f"{safe_name('long')}.json"
        deadline = time.monotonic() + 90
        while not beat.exists():
            assert proc.poll() is None and time.monotonic() < deadline, "no heartbeat appeared"
            time.sleep(0.05)
        live = run("status", out)
        assert live.exit_code == 4, live.output
        assert "running long: " in live.output and "/120 frames" in live.output
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    dead = run("status", out)
    assert dead.exit_code == 3, dead.output
    assert "interrupted long: " in dead.output and "when it stopped" in dead.output


def test_done_records_compact_per_shard_and_the_newest_word_wins(tmp_path):
    manifest = Manifest(tmp_path)
    for uid in ("a", "b"):
        manifest.write_done(uid, {"v": 1})
    assert manifest.compact_done(["a", "b"], "shard-0-of-1", run=1) == 2
    assert not list((tmp_path / ".flowkit" / "done").glob("*.json"))  # folded into the index
    assert manifest.read_done("a") == {"unit": "a", "v": 1}
    manifest.clear_done("a")  # an index entry is hidden by a tombstone
    assert manifest.read_done("a") is None and [r["unit"] for r in manifest.all_done()] == ["b"]
    manifest.write_done("a", {"v": 2})  # redone under another sharding, compacted by that shard
    assert manifest.compact_done(["a"], "shard-1-of-2", run=2) == 1
    manifest.write_done("b", {"v": 3})
    assert manifest.compact_done(["a", "b"], "shard-0-of-1", run=3) == 1  # a's old entry keeps run 1
    assert manifest.read_done("a") == {"unit": "a", "v": 2}
    assert manifest.all_done() == [{"unit": "a", "v": 2}, {"unit": "b", "v": 3}]
    manifest.done_path("b").write_text('{"unit": "b", "v"')  # a corrupt journal file: not done
    assert manifest.read_done("b") is None


def test_a_finished_run_leaves_one_index_file_not_one_file_per_unit(tmp_path):
    run_pipeline(FakePipeline(tmp_path), items(5), tmp_path, RunOptions(quiet=True))
    state = tmp_path / ".flowkit"
    assert not list((state / "done").glob("*.json"))
    assert [p.name for p in (state / "done-index").iterdir()] == ["shard-0-of-1.jsonl"]
    again = run_pipeline(FakePipeline(tmp_path), items(5), tmp_path, RunOptions(quiet=True))
    assert again.skipped == 5 and read_status(tmp_path).exit_code == 0


def test_compaction_removes_its_own_killed_temporary(tmp_path):
    manifest = Manifest(tmp_path)
    manifest.write_done("a", {"v": 1})
    folder = tmp_path / ".flowkit" / "done-index"
    folder.mkdir(parents=True)
    (folder / ".shard-0-of-1.jsonl.4242.tmp").write_text('{"run": 1, "rec')  # killed mid-write
    manifest.compact_done(["a"], "shard-0-of-1", run=2)
    assert [p.name for p in folder.iterdir()] == ["shard-0-of-1.jsonl"]
