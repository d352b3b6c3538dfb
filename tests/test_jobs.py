"""The job layer: config refusal, locks, event logs, shards, failures returned as values, retry-failed."""

from __future__ import annotations

import json
import socket
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from flowkit.errors import ConfigError, ManifestError
from flowkit.inputs import VideoItem
from flowkit.jobs.manifest import EventLog, Manifest, RunLock
from flowkit.jobs.runner import RunOptions, Unit, UnitResult, run_pipeline
from flowkit.jobs.status import read_status


@dataclass
class FakePipeline:
    """Writes one text file per unit; fails on ids listed in `bad`."""

    out_dir: Path
    bad: set[str] = field(default_factory=set)
    setting: int = 1
    command: str = "fake"

    def output_config(self) -> dict:
        return {"setting": self.setting}

    def make_units(self, items):
        return [Unit(i.video_id, k, (i,)) for k, i in enumerate(items)]

    def is_done(self, unit, manifest):
        return manifest.read_done(unit.uid) is not None and (self.out_dir / f"{unit.uid}.txt").exists()

    def process(self, unit, manifest):
        if unit.uid in self.bad:
            raise ValueError(f"cannot process {unit.uid}")
        (self.out_dir / f"{unit.uid}.txt").write_text("ok")
        manifest.write_done(unit.uid, {"video_id": unit.uid})
        return UnitResult(unit.uid, "done", frames=10)

    def finalize(self, manifest):
        pass


def items(n: int) -> list[VideoItem]:
    return [VideoItem(f"v{k:02d}", Path(f"/data/v{k:02d}.mp4")) for k in range(n)]


def test_failures_are_values_and_the_run_goes_on(tmp_path):
    summary = run_pipeline(FakePipeline(tmp_path, bad={"v02"}), items(5), tmp_path, RunOptions(quiet=True))
    assert summary.done == 4 and summary.exit_code == 1
    assert summary.failed == [("v02", "/data/v02.mp4", "ValueError: cannot process v02")]
    again = run_pipeline(FakePipeline(tmp_path, bad={"v02"}), items(5), tmp_path, RunOptions(quiet=True))
    assert again.skipped == 4 and again.done == 0 and len(again.failed) == 1
    fixed = run_pipeline(FakePipeline(tmp_path), items(5), tmp_path, RunOptions(quiet=True))
    assert fixed.done == 1 and fixed.skipped == 4 and fixed.exit_code == 0


def test_different_config_is_refused_unless_overwrite(tmp_path):
    run_pipeline(FakePipeline(tmp_path), items(2), tmp_path, RunOptions(quiet=True))
    with pytest.raises(ManifestError, match=r"setting \(was 1, now 2\).*--overwrite"):
        run_pipeline(FakePipeline(tmp_path, setting=2), items(2), tmp_path, RunOptions(quiet=True))
    summary = run_pipeline(
        FakePipeline(tmp_path, setting=2), items(2), tmp_path, RunOptions(quiet=True, overwrite=True)
    )
    assert summary.done == 2


def test_shards_partition_units_by_position(tmp_path):
    done = []
    for i in range(3):
        s = run_pipeline(FakePipeline(tmp_path), items(8), tmp_path, RunOptions(quiet=True, shard=(i, 3)))
        done.append(s.done)
    assert done == [3, 3, 2]
    report = read_status(tmp_path)
    assert report.total == 8 and len(report.done) == 8
    assert report.shard_counts == {"shard-0-of-3": 3, "shard-1-of-3": 3, "shard-2-of-3": 2}
    with pytest.raises(ConfigError):
        RunOptions(shard=(3, 3))


def test_retry_failed_reruns_only_failed_units(tmp_path):
    run_pipeline(
        FakePipeline(tmp_path, bad={"v01"}), items(3), tmp_path, RunOptions(quiet=True, shard=(0, 1))
    )
    (tmp_path / "v02.txt").unlink()  # v02 now looks not done, but it did not fail
    s = run_pipeline(FakePipeline(tmp_path), items(3), tmp_path, RunOptions(quiet=True, retry_failed=True))
    assert s.done == 1 and s.pending == 1 and s.skipped == 1
    assert s.exit_code == 3  # v02 is left unfinished: --retry-failed did not complete the job


def test_parallel_loky_and_threading(tmp_path):
    for backend in ("loky", "threading"):
        out = tmp_path / backend
        s = run_pipeline(
            FakePipeline(out, bad={"v03"}),
            items(6),
            out,
            RunOptions(quiet=True, jobs=2, backend=backend, devices=("cpu", "cpu")),
        )
        assert s.done == 5 and len(s.failed) == 1


def test_lock_refuses_a_second_run_and_reclaims_a_dead_one(tmp_path):
    manifest = Manifest(tmp_path)
    first = RunLock(manifest, "shard-0-of-1")
    first.acquire()
    with pytest.raises(ManifestError, match="another flowkit run"):
        RunLock(manifest, "shard-0-of-1").acquire()
    first.release()
    first.path.write_text(json.dumps({"host": socket.gethostname(), "pid": 999999999}))
    RunLock(manifest, "shard-0-of-1").acquire()  # the owner is gone: stale, reclaimed


def test_event_log_tolerates_a_truncated_last_line(tmp_path):
    manifest = Manifest(tmp_path)
    log = EventLog(manifest, "t")
    log.write("start", unit="a")
    log.write("done", unit="a", frames=3)
    log.close()
    path = next((tmp_path / ".flowkit" / "events").glob("*.jsonl"))
    with open(path, "a") as fh:
        fh.write('{"event": "start", "unit": "b"')  # killed mid-write
    assert [e["event"] for e in manifest.events()] == ["start", "done"]
