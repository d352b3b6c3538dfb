"""`flowkit sample-frames` end to end through Click's runner, on generated videos."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner
from clirun import run

from flowkit.cli import main


@pytest.fixture
def videos(make_video, tmp_path):
    make_video("in/walk/a.mp4", n=20)
    make_video("in/run/a.mp4", n=12, dx=2.0)  # same basename, another folder
    return tmp_path / "in"


def test_every_frame_layout_lists_and_resume(videos, tmp_path):
    out = tmp_path / "out"
    result = run("sample-frames", videos, "-o", out)
    assert result.exit_code == 0, result.output
    assert "done 2, skipped 0" in result.output
    files = sorted(p.name for p in (out / "walk" / "a").glob("img_*.jpg"))
    assert files[0] == "img_00001.jpg" and len(files) == 20
    meta = json.loads((out / "walk" / "a" / "sampling.json").read_text())
    assert meta["indices"] == list(range(20)) and meta["num_frames"] == 20
    assert (out / "list_rgb.txt").read_text() == "run/a 12 0\nwalk/a 20 1\n"
    again = run("sample-frames", videos, "-o", out)
    assert again.exit_code == 0 and "done 0, skipped 2" in again.output


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        (["--sampler", "fps", "--fps", "5"], [0, 5, 10, 15]),
        (["--sampler", "fps", "--fps", "25", "--max-frames", "4"], None),
        (["--sampler", "uniform", "--num-frames", "4"], None),
        (["--sampler", "tsn", "--segments", "4"], None),
        (["--sampler", "dense", "--clip-len", "8", "--stride", "8"], list(range(16))),
        (["--sampler", "slowfast", "--alpha", "2", "--tau", "4", "--num-slow", "4"], None),
        (["--sampler", "all", "--step", "3"], [0, 3, 6, 9, 12, 15, 18]),
    ],
)
def test_samplers(videos, tmp_path, options, expected):
    out = tmp_path / "out"
    result = run("sample-frames", videos / "walk" / "a.mp4", "-o", out, *options, "--layout", "denseflow")
    assert result.exit_code == 0, result.output
    meta = json.loads((out / "a" / "sampling.json").read_text())
    names = sorted(p.name for p in (out / "a").glob("img_*.jpg"))
    assert names[0] == "img_00000.jpg" and len(names) == len(meta["indices"])
    assert meta["indices"] == sorted(set(meta["indices"])) and all(0 <= i < 20 for i in meta["indices"])
    if expected is not None:
        assert meta["indices"] == expected
    if "--max-frames" in options:
        assert len(meta["indices"]) == 4


def test_npz_format_holds_frames_indices_timestamps(videos, tmp_path):
    out = tmp_path / "out"
    result = run("sample-frames", videos, "-o", out, "--format", "npz", "--sampler", "uniform",
                 "--num-frames", "5", "--short-side", "32")
    assert result.exit_code == 0, result.output
    data = np.load(out / "walk" / "a.npz")
    assert data["frames"].shape == (5, 32, 32, 3) and data["frames"].dtype == np.uint8
    np.testing.assert_allclose(data["timestamps"], data["indices"] * 0.04, atol=1e-6)


def test_bad_videos_fail_alone_and_exit_1(videos, tmp_path, make_video):
    (videos / "walk" / "broken.mp4").write_bytes(b"\x00\x01garbage" * 100)
    (videos / "walk" / "empty.mp4").write_bytes(b"")
    good = make_video("in/run/trunc.mp4", n=12)
    good.write_bytes(good.read_bytes()[:300])
    out = tmp_path / "out"
    result = run("sample-frames", videos, "-o", out, "--jobs", "2")
    assert result.exit_code == 1
    assert "done 2, skipped 0 (already done), failed 3" in result.output
    assert "empty.mp4: empty file (0 bytes)" in result.output
    assert sum(line.startswith("FAILED ") for line in result.output.splitlines()) == 3
    assert len(list((out / "walk" / "a").glob("img_*.jpg"))) == 20
    assert not list(out.rglob("*.tmp-*"))
    status = CliRunner().invoke(main, ["status", str(out)])
    assert status.exit_code == 1 and "3 failed" in status.output


def test_cli_help_and_version():
    commands = ["extract-flow", "sample-frames", "features", "visualize", "status", "doctor", "merge"]
    commands.append("inspect")
    for command in ([], *([c] for c in commands)):
        result = CliRunner().invoke(main, [*command, "--help"])
        assert result.exit_code == 0 and "Example" in result.output
    assert "0.1.0" in CliRunner().invoke(main, ["--version"]).output
