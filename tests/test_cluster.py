"""Scale-out: --shard i/N and auto (Slurm), status/merge across shards, dask, the run lock."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
from clirun import run

from flowkit.jobs.manifest import Manifest, RunLock
from flowkit.outputs.hdf5 import list_videos, load_index, read_video

IDS = ["a/v0", "a/v1", "b/v2", "b/v3", "c/v4"]


@pytest.fixture
def videos(make_video, tmp_path):
    for k, vid in enumerate(IDS):
        make_video(f"in/{vid}.mp4", n=6 + k, height=32, width=48, seed=k)
    return tmp_path / "in"




COMMANDS = {
    "extract-flow": ["-a", "dis"],
    "sample-frames": ["--sampler", "uniform", "--num-frames", "3"],
    "features": [
        "--model",
        "c3d_test",
        "--clip-len",
        "16",
        "--pad-last",
        "--videos-per-shard",
        "1",
    ],
}


def done_units(out: Path) -> list[str]:
    return sorted(r["unit"] for r in Manifest(out).all_done())


def unit_ids(command: str) -> list[str]:
    return IDS  # every command's units are videos (features group them into shards afterwards)


@pytest.mark.parametrize("command", list(COMMANDS))
def test_shards_are_disjoint_and_status_merge_combine_them(videos, weights, tmp_path, command):
    args = [*COMMANDS[command], *(["--weights", weights] if command == "features" else [])]
    whole = tmp_path / "whole"
    assert run(command, videos, "-o", whole, *args).exit_code == 0
    out = tmp_path / "sharded"
    units = unit_ids(command)
    for i in (2, 0, 1):  # any order
        result = run(command, videos, "-o", out, *args, "--shard", f"{i}/3")
        assert result.exit_code == 0, result.output
        assert f"done {len(units[i::3])}," in result.output
    # Each shard did exactly its units (k mod 3), and wrote them under its own tag.
    by_shard: dict[str, set[str]] = {}
    for ev in Manifest(out).events():
        if ev["event"] == "done":
            by_shard.setdefault(ev["shard"], set()).add(ev["unit"])
    assert by_shard == {f"shard-{i}-of-3": set(units[i::3]) for i in range(3)}
    assert done_units(out) == sorted(units)
    status = run("status", out)
    assert (
        status.exit_code == 0
        and f"units: {len(units)} total, {len(units)} done, 0 failed" in status.output
    )
    assert [line for line in status.output.splitlines() if line.startswith("shard-")] == [
        f"shard-{i}-of-3: {len(units[i::3])} units finished" for i in range(3)
    ]
    assert "frames/s" in status.output
    assert run("merge", out).exit_code == 0
    if command == "features":
        merged = out / "merged.h5"
        assert list_videos(merged) == IDS
        for vid in IDS:
            got = read_video(merged, vid)["datasets"]["features"]
            want = read_video(whole / load_index(whole)[vid], vid)["datasets"]["features"]
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    else:
        for name in ("list_rgb.txt", "classes.txt"):
            assert (out / name).read_text() == (whole / name).read_text()
        for vid in IDS:
            assert sorted(p.name for p in (out / vid).iterdir()) == sorted(
                p.name for p in (whole / vid).iterdir()
            )


def test_merge_rebuilds_an_index_left_stale_by_racing_shards(videos, weights, tmp_path):
    out = tmp_path / "out"
    args = [*COMMANDS["features"], "--weights", weights]
    for i in range(2):
        assert run("features", videos, "-o", out, *args, "--shard", f"{i}/2").exit_code == 0
    # Shards finishing together: the one that read the done records first writes index.json last.
    (out / "index.json").write_text(json.dumps({"a/v0": "c3d_test-00000-of-00005.h5"}))
    assert run("merge", out, "--virtual").exit_code == 0
    assert list_videos(out / "merged.h5") == IDS
    assert sorted(load_index(out)) == IDS


def test_status_shows_failures_with_reasons_per_shard(videos, tmp_path):
    (videos / "b" / "v2.mp4").write_bytes(b"not a video" * 40)
    out = tmp_path / "out"
    first = run("extract-flow", videos, "-o", out, "-a", "dis", "--shard", "0/2")
    second = run("extract-flow", videos, "-o", out, "-a", "dis", "--shard", "1/2")
    assert (first.exit_code, second.exit_code) == (1, 0)  # b/v2 is unit 2: shard 0
    status = run("status", out)
    assert status.exit_code == 1
    assert "units: 5 total, 4 done, 1 failed, 0 not done" in status.output
    assert "shard-0-of-2: 3 units finished" in status.output
    assert f"FAILED {videos / 'b' / 'v2.mp4'}: not a video" in status.output


def test_shard_auto_reads_the_slurm_array(videos, tmp_path):
    out = tmp_path / "out"
    # sbatch --array=1-2: ids start at 1, so task 2 is the second shard (1/2).
    env = {"SLURM_ARRAY_TASK_ID": "2", "SLURM_ARRAY_TASK_COUNT": "2", "SLURM_ARRAY_TASK_MIN": "1"}
    result = run("sample-frames", videos, "-o", out, "--shard", "auto", env=env)
    assert result.exit_code == 0, result.output
    assert done_units(out) == ["a/v1", "b/v3"]
    assert (out / ".flowkit" / "locks").is_dir()
    assert {ev["shard"] for ev in Manifest(out).events() if "shard" in ev} == {"shard-1-of-2"}
    missing = run(
        "sample-frames",
        videos,
        "-o",
        tmp_path / "x",
        "--shard",
        "auto",
        env={"SLURM_ARRAY_TASK_ID": None, "SLURM_ARRAY_TASK_COUNT": None},
    )
    assert missing.exit_code == 2 and "SLURM_ARRAY_TASK_ID" in missing.output
    for bad in ("2/2", "1-2", "-1/2"):
        assert run("sample-frames", videos, "-o", tmp_path / "y", "--shard", bad).exit_code == 2


@pytest.mark.slow
def test_dask_local_cluster_gives_the_same_outputs(videos, tmp_path):
    pytest.importorskip("dask.distributed")
    plain, dask = tmp_path / "plain", tmp_path / "dask"
    assert run("extract-flow", videos, "-o", plain, "-a", "dis").exit_code == 0
    (videos / "c" / "v4.mp4").write_bytes(b"")
    result = run("extract-flow", videos, "-o", dask, "-a", "dis", "--backend", "dask", "-j", "2")
    assert result.exit_code == 1 and "done 4," in result.output and "empty file" in result.output
    for vid in IDS[:4]:
        for path in sorted((plain / vid).iterdir()):
            assert (dask / vid / path.name).read_bytes() == path.read_bytes()
    # Two worker processes, each with its own event log.
    assert len(list((dask / ".flowkit" / "events").glob("*.jsonl"))) == 2


@pytest.mark.slow
def test_dask_scheduler_address(videos, weights, tmp_path):
    distributed = pytest.importorskip("dask.distributed")
    out = tmp_path / "out"
    with distributed.LocalCluster(
        n_workers=2, processes=False, threads_per_worker=1, dashboard_address=None
    ) as cluster:
        result = run(
            "features",
            videos,
            "-o",
            out,
            *COMMANDS["features"],
            "--weights",
            weights,
            "--backend",
            "dask",
            "--scheduler",
            cluster.scheduler_address,
        )
    assert result.exit_code == 0, result.output
    assert sorted(load_index(out)) == IDS
    with h5py.File(out / "c3d_test-00000-of-00005.h5") as fh:
        assert fh.attrs["complete"] == 1


@pytest.mark.parametrize("command", list(COMMANDS))
def test_retry_failed_reruns_only_the_failed_units(videos, weights, tmp_path, command):
    args = [*COMMANDS[command], *(["--weights", weights] if command == "features" else [])]
    bad = videos / "b" / "v2.mp4"
    good = bad.read_bytes()
    bad.write_bytes(b"garbage" * 30)
    out = tmp_path / "out"
    assert run(command, videos, "-o", out, *args).exit_code == 1
    bad.write_bytes(good)
    Manifest(out).clear_done(unit_ids(command)[0])  # looks not done, but it did not fail last time
    again = run(command, videos, "-o", out, *args, "--retry-failed")
    assert again.exit_code == 3, again.output  # a unit is left unfinished: not a success
    assert "done 1, skipped 3 (already done), failed 0, not attempted 1" in again.output
    status = run("status", out)
    assert status.exit_code == 3 and "state: incomplete" in status.output, status.output
    assert unit_ids(command)[2] in done_units(out) and unit_ids(command)[0] not in done_units(out)


# -- two real processes on one output folder ------------------------------------------------------
def flowkit_process(*args: object) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "flowkit", *map(str, args), "--quiet"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )


def wait_for(path: Path, proc: subprocess.Popen, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert proc.poll() is None, proc.communicate()[0]
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.05)


def test_concurrent_runs_never_share_units(make_video, tmp_path):
    # Even units are long (tvl1-opencv, ~30 s each), odd units tiny: shard 0/2 stays busy
    # while the others start, and shard 1/2 finishes quickly beside it.
    for k in range(6):
        make_video(f"in/v{k}.mp4", n=200 if k % 2 == 0 else 2, height=64, width=64, seed=k)
    out = tmp_path / "out"
    common = ["extract-flow", tmp_path / "in", "-o", out, "-a", "tvl1-opencv"]
    first = flowkit_process(*common, "--shard", "0/2")
    try:
        wait_for(out / ".flowkit" / "locks" / "shard-0-of-2.lock", first)
        same = flowkit_process(*common, "--shard", "0/2")
        overlapping = flowkit_process(*common)  # 0/1 shares every unit of 0/2
        disjoint = flowkit_process(*common, "--shard", "1/2")
        outputs = [p.communicate(timeout=120)[0] for p in (same, overlapping, disjoint)]
        assert first.poll() is None, "the first run ended too early to prove anything"
        assert [p.returncode for p in (same, overlapping, disjoint)] == [2, 2, 0], outputs
        for text in outputs[:2]:
            assert "another flowkit run (host " in text and f"pid {first.pid})" in text
        assert "overlaps shard-0-of-1" in outputs[1] or "overlaps" in outputs[1]
        assert done_units(out) == ["v1", "v3", "v5"]
    finally:
        os.killpg(first.pid, signal.SIGKILL)
        first.wait()
    # The killed run's lock is stale now: a new run (even one that overlaps it) takes over.
    lock = RunLock(Manifest(out), "shard-0-of-1")
    lock.acquire()
    lock.release()
