"""Disk full while writing: error reported, unit not done, no partial output, exit code 1."""

from __future__ import annotations

import errno
from pathlib import Path

import h5py
import numpy as np
import pytest
from clirun import run

from flowkit.jobs.manifest import Manifest
from flowkit.outputs import rawframes
from flowkit.outputs.hdf5 import list_videos, read_video, verify_shard
from flowkit.pipelines.featureshards import ShardParts

TEMP_MARKERS = (".tmp", ".old-", ".prev")


def enospc_after(limit: int, real):
    """Wrap `real`: every call after the first `limit` raises ENOSPC (the disk stays full)."""
    calls = {"n": 0}

    def wrapper(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] > limit:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(*args, **kwargs)

    return wrapper


def leftovers(out: Path) -> list[str]:
    return [str(p) for p in out.rglob("*") if any(m in p.name for m in TEMP_MARKERS)]


@pytest.fixture
def videos(make_video, tmp_path):
    for name in ("a/v1", "a/v2", "b/v3"):
        make_video(f"in/{name}.mp4", n=8, height=48, width=48)
    return tmp_path / "in"


@pytest.mark.parametrize("command", ["extract-flow", "sample-frames"])
def test_image_writer_enospc_fails_the_unit_and_leaves_nothing(
    videos, tmp_path, monkeypatch, command
):
    out = tmp_path / "out"
    extra = ["-a", "dis"] if command == "extract-flow" else []
    # v1 writes 8 RGB (+ 14 flow) files; the disk fills up in the middle of a/v1 for both commands.
    monkeypatch.setattr(rawframes, "_write_bytes", enospc_after(5, rawframes._write_bytes))
    result = run(command, videos, "-o", out, *extra)
    assert result.exit_code == 1, result.output
    failed = [line for line in result.output.splitlines() if line.startswith("FAILED ")]
    assert len(failed) == 3 and all("No space left on device" in line for line in failed)
    assert "done 0" in result.output
    manifest = Manifest(out)
    assert manifest.all_done() == []
    assert not any((out / vid).exists() for vid in ("a/v1", "a/v2", "b/v3"))
    assert leftovers(out) == []
    monkeypatch.undo()  # space freed: the same command finishes the job
    again = run(command, videos, "-o", out, *extra)
    assert again.exit_code == 0 and "done 3" in again.output, again.output
    assert len(manifest.all_done()) == 3 and leftovers(out) == []


def test_flow_h5_enospc_mid_video(videos, tmp_path, monkeypatch):
    from flowkit.outputs import flowfiles

    out = tmp_path / "out"
    monkeypatch.setattr(flowfiles.H5Sink, "add", enospc_after(0, flowfiles.H5Sink.add))
    result = run(
        "extract-flow", videos, "-o", out, "-a", "dis", "--format", "h5", "--batch-size", "2"
    )
    assert result.exit_code == 1 and result.output.count("No space left on device") == 3
    assert not list(out.rglob("flow.h5")) and leftovers(out) == []
    assert Manifest(out).all_done() == []


def test_features_enospc_drops_the_shard_and_keeps_the_previous_one(videos, tmp_path, monkeypatch):
    out = tmp_path / "out"
    args = [
        "features",
        videos,
        "-o",
        out,
        "--model",
        "c3d_test",
        "--random-weights",
        "--clip-len",
        "16",
    ]
    broken = videos / "b" / "v3.mp4"
    good = broken.read_bytes()
    broken.write_bytes(b"garbage" * 50)
    first = run(*args)  # one shard: v1 and v2 done, v3 failed
    assert first.exit_code == 1
    shard = out / "c3d_test-00000-of-00001.h5"
    before = read_video(shard, "a/v1")["datasets"]["features"]
    broken.write_bytes(good)
    # Disk full while the rerun writes v3's part: 2 of its 3 datasets, then ENOSPC.
    monkeypatch.setattr(h5py.Group, "create_dataset", enospc_after(2, h5py.Group.create_dataset))
    second = run(*args)
    assert second.exit_code == 1 and "No space left on device" in second.output
    assert leftovers(out) == []
    # The previous complete shard is back under its name with its record: readable, reusable.
    assert verify_shard(shard) == ["a/v1", "a/v2"]
    assert ShardParts(Manifest(out)).read_record(shard.name)["failed"] == ["b/v3"]
    monkeypatch.undo()
    third = run(*args)
    assert third.exit_code == 0, third.output
    assert list_videos(shard) == ["a/v1", "a/v2", "b/v3"]
    np.testing.assert_array_equal(read_video(shard, "a/v1")["datasets"]["features"], before)


def test_features_enospc_on_a_fresh_shard(videos, tmp_path, monkeypatch):
    out = tmp_path / "out"
    monkeypatch.setattr(h5py.Group, "create_dataset", enospc_after(1, h5py.Group.create_dataset))
    result = run(
        "features",
        videos,
        "-o",
        out,
        "--model",
        "c3d_test",
        "--random-weights",
        "--videos-per-shard",
        "2",
    )
    assert result.exit_code == 1
    assert [
        line.count("No space left on device")
        for line in result.output.splitlines()
        if line.startswith("FAILED")
    ] == [1, 1, 1]  # one line per video
    assert not list(out.glob("*.h5")) and leftovers(out) == []
    assert Manifest(out).all_done() == []


def one_error_line(text: str) -> str:
    assert "Traceback" not in text, text
    errors = [line for line in text.splitlines() if line.startswith("flowkit: error:")]
    assert len(errors) == 1, text
    return errors[0]


def test_a_read_only_output_is_one_line(videos, tmp_path):
    import os
    import subprocess
    import sys

    from test_bad_inputs import DROP_DAC

    out = tmp_path / "out"
    out.mkdir()
    out.chmod(0o555)
    prefix = DROP_DAC if os.geteuid() == 0 else []
    if prefix and subprocess.run([*prefix, "true"]).returncode != 0:
        pytest.skip("cannot drop root's file-permission override here")
    proc = subprocess.run([*prefix, sys.executable, "-m", "flowkit", "sample-frames", str(videos), "-o",
                           str(out), "-q"], capture_output=True, text=True, timeout=120)
    if proc.returncode == 0:
        pytest.skip("the output folder stayed writable (file permissions are not enforced here)")
    assert proc.returncode == 1
    line = one_error_line(proc.stderr)
    assert str(out / ".flowkit") in line and "Permission denied" in line


def test_a_full_disk_when_taking_the_lock_is_one_line(videos, tmp_path, monkeypatch):
    import os

    real_open = os.open

    def full(path, *args, **kwargs):
        if "locks" in str(path):
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(os, "open", full)
    out = tmp_path / "out"
    result = run("sample-frames", videos, "-o", out)
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit), result.output
    line = one_error_line(result.output)
    assert str(out / ".flowkit" / "locks") in line and "No space left on device" in line
    monkeypatch.undo()
    assert run("sample-frames", videos, "-o", out).exit_code == 0  # space freed: the run starts


def test_a_full_disk_while_writing_the_lists_still_prints_the_summary(videos, tmp_path, monkeypatch):
    from flowkit.outputs import lists

    def full(path, text):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(lists, "atomic_write_text", full)
    out = tmp_path / "out"
    result = run("sample-frames", videos, "-o", out)
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit), result.output
    assert "Traceback" not in result.output and "done 3" in result.output
    (line,) = [line for line in result.output.splitlines() if line.startswith("ERROR ")]
    assert str(out / "list_rgb.txt") in line and "No space left on device" in line
    assert not list((out / ".flowkit" / "locks").glob("*.lock"))
    monkeypatch.undo()
    again = run("sample-frames", videos, "-o", out)
    assert again.exit_code == 0 and (out / "list_rgb.txt").is_file(), again.output
