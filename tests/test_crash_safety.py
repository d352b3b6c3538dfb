"""SIGKILL running `python -m flowkit` jobs at several points, rerun, compare with a clean run.

Kill points come from polling the event logs (a run's first `start` or `done`), so they land while a
unit is being written or between units; the whole process group dies, as on a preempted node.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import pytest
from click.testing import CliRunner

from flowkit.cli import main
from flowkit.jobs.manifest import Manifest
from flowkit.outputs.hdf5 import load_index, read_video, verify_shard
from flowkit.pipelines.featureshards import ShardParts

TEMP_MARKERS = (".tmp", ".old-", ".prev")


def events(out: Path, kind: str) -> int:
    return sum(ev.get("event") == kind for ev in Manifest(out).events())


def kill_at(args: list[object], out: Path, kind: str, delay: float) -> bool:
    """Start flowkit, SIGKILL its process group `delay` s after the run's first `kind` event.

    Returns True if the run was killed, False if it finished first.
    """
    before = events(out, kind) if (out / ".flowkit").exists() else 0
    proc = subprocess.Popen(
        [sys.executable, "-m", "flowkit", *map(str, args), "--quiet"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.monotonic() + 60
    while proc.poll() is None and time.monotonic() < deadline:
        if (out / ".flowkit" / "events").is_dir() and events(out, kind) > before:
            time.sleep(delay)
            break
        time.sleep(0.02)
    killed = proc.poll() is None
    if killed:
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    return killed


def finish(args: list[object]) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "flowkit", *map(str, args), "--quiet"],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def leftovers(out: Path) -> list[str]:
    return [str(p) for p in out.rglob("*") if any(m in p.name for m in TEMP_MARKERS)]


def tree(out: Path) -> dict[str, bytes]:
    """Every output file (not the manifest) with its bytes."""
    return {
        str(p.relative_to(out)): p.read_bytes()
        for p in sorted(out.rglob("*"))
        if p.is_file() and ".flowkit" not in p.parts
    }


def interrupted_runs(args: list[object], out: Path) -> list[bool]:
    # Mid-unit (just after the first start), between units (just after a done), then mid-unit again.
    points = [("start", 0.3), ("done", 0.0), ("start", 0.1)]
    return [kill_at(args, out, kind, delay) for kind, delay in points]


@pytest.mark.slow
def test_extract_flow_survives_sigkill(make_video, tmp_path):
    for k in range(4):
        make_video(f"in/c{k % 2}/v{k}.mp4", n=10, height=64, width=64, seed=k)
    args = ["extract-flow", tmp_path / "in", "-a", "tvl1-opencv"]
    reference = tmp_path / "reference"
    assert CliRunner().invoke(main, [*map(str, args), "-o", str(reference), "-q"]).exit_code == 0
    out = tmp_path / "out"
    killed = interrupted_runs([*args, "-o", out], out)
    assert killed[0], "the first run finished before it could be killed"
    finish([*args, "-o", out])
    assert leftovers(out) == []
    assert tree(out) == tree(reference)  # same files, same bytes: nothing missing or extra
    lines = (out / "list_flow.txt").read_text().splitlines()
    assert sorted(lines) == lines and len(lines) == len(set(lines)) == 4
    assert len(Manifest(out).all_done()) == 4




@pytest.mark.slow
def test_features_survive_sigkill(make_video, tmp_path, weights):
    for k in range(4):
        make_video(f"in/v{k}.mp4", n=40, height=64, width=64, seed=k)
    args = [
        "features",
        tmp_path / "in",
        "--model",
        "c3d_test",
        "--weights",
        weights,
        "--stride",
        "8",
        "--batch-size",
        "2",
        "--videos-per-shard",
        "2",
    ]
    reference = tmp_path / "reference"
    assert CliRunner().invoke(main, [*map(str, args), "-o", str(reference), "-q"]).exit_code == 0
    out = tmp_path / "out"
    killed = interrupted_runs([*args, "-o", out], out)
    assert killed[0], "the first run finished before it could be killed"
    finish([*args, "-o", out])
    assert leftovers(out) == []
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in reference.iterdir())
    index = load_index(out)
    assert index == load_index(reference)
    for shard in sorted(out.glob("*.h5")):
        with h5py.File(shard) as fh:  # every file opens
            assert fh.attrs["complete"] == 1
        assert verify_shard(shard, expected=[v for v, s in index.items() if s == shard.name])
    for vid, shard in index.items():
        got, want = read_video(out / shard, vid), read_video(reference / shard, vid)
        assert got["datasets"].keys() == want["datasets"].keys()
        for name, array in want["datasets"].items():
            assert (got["datasets"][name] == array).all(), (vid, name)
    records = Manifest(out).all_done()  # units are videos, grouped into shards afterwards
    assert sorted(r["unit"] for r in records) == sorted(index)
    assert json.loads((out / ".flowkit" / "units.json").read_text())["units"] == sorted(index)
    parts = ShardParts(Manifest(out))
    assert all(parts.read_record(s)["failed"] == [] for s in set(index.values()))
    assert not list(parts.root.glob("parts/*"))  # every part went into its shard
