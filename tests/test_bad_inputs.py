"""Bad and odd inputs: one clear line per bad video, the others complete, exit code 1."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import pytest
from click.testing import CliRunner

from flowkit.cli import main
from flowkit.jobs.status import read_status
from flowkit.synthetic import moving_video

# Root ignores file modes; dropping CAP_DAC_OVERRIDE/READ_SEARCH for the child makes mode 000 bite.
DROP_DAC = [
    "setpriv",
    "--inh-caps=-dac_override,-dac_read_search",
    "--bounding-set=-dac_override,-dac_read_search",
]
UNICODE = "with space é ü 日本"

# video id -> expected cause (substring) for the inputs that must fail whatever the command.
BAD = {
    "empty": "empty file (0 bytes)",
    "text": "not a video or unreadable container",
    "truncated": "not a video or unreadable container",
    "loop": "symlink loop",
    "folder": "is a directory, not a video file",
}
GOOD = ["good", "odd", "wide", "one_frame", UNICODE]


def prefix_for_unreadable(path: Path) -> list[str] | None:
    """How to run a child that cannot read `path` (mode 000), or None if this machine cannot."""
    if os.geteuid() != 0:
        return []
    if shutil.which("setpriv") is None:
        return None
    probe = subprocess.run(
        [*DROP_DAC, sys.executable, "-c", f"open({str(path)!r}, 'rb')"], capture_output=True
    )
    return DROP_DAC if probe.returncode != 0 and b"PermissionError" in probe.stderr else None


@pytest.fixture
def corpus(tmp_path):
    root = tmp_path / "corpus"
    moving_video(root / "good.mp4", n=6)
    (root / "empty.mp4").write_bytes(b"")
    (root / "text.mp4").write_text("this is not a video\n" * 10)
    whole = moving_video(tmp_path / "whole.mp4", n=20).read_bytes()
    (root / "truncated.mp4").write_bytes(whole[: len(whole) // 2])
    moving_video(root / "one_frame.mp4", n=1)
    moving_video(root / "tiny.mp4", n=4, height=2, width=2)
    # OpenCV's writer drops an odd last row/column (332x170); true odd frames: --size, below.
    moving_video(root / "odd.mp4", n=4, height=171, width=333)
    moving_video(root / "wide.mp4", n=4, height=32, width=640)
    moving_video(root / f"{UNICODE}.mp4", n=4)
    os.symlink("loop.mp4", root / "loop.mp4")
    (root / "folder.mp4").mkdir()
    moving_video(root / "noread.mp4", n=4).chmod(0)
    return root


def run_child(prefix: list[str], *args: object) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*prefix, sys.executable, "-m", "flowkit", *map(str, args), "--quiet"],
        capture_output=True,
        text=True,
        timeout=120,
    )


def failures(stdout: str) -> dict[str, str]:
    found = {}
    for line in stdout.splitlines():
        if line.startswith("FAILED "):
            path, cause = line[len("FAILED ") :].split(": ", 1)
            found[Path(path).stem] = cause
    return found


def check_corpus_run(
    corpus: Path, out: Path, proc: subprocess.CompletedProcess, bad: dict[str, str]
):
    assert proc.returncode == 1, proc.stdout + proc.stderr
    got = failures(proc.stdout)
    assert got.keys() == bad.keys(), proc.stdout
    for vid, cause in bad.items():
        assert cause in got[vid] and "\n" not in got[vid]
        assert (
            str(corpus) not in got[vid]
        )  # the path is on the line once, not repeated in the cause
    status = read_status(out)
    assert {Path(fs[0][0]).stem: fs[0][1] for fs in status.failed.values()} == got
    assert sorted(status.done) == sorted(set(status_units(out)) - set(bad))
    assert not [p for p in out.rglob("*") if ".tmp" in p.name or ".old-" in p.name]


def status_units(out: Path) -> list[str]:
    from flowkit.jobs.manifest import Manifest

    return Manifest(out).read_units()


def expected_bad(corpus: Path, prefix: list[str] | None) -> dict[str, str]:
    bad = dict(BAD)
    if prefix is None:
        (corpus / "noread.mp4").chmod(0o644)  # cannot be made unreadable here: an ordinary video
    else:
        bad["noread"] = "permission denied"
    return bad


def test_corpus_through_extract_flow(corpus, tmp_path):
    prefix = prefix_for_unreadable(corpus / "noread.mp4")
    bad = expected_bad(corpus, prefix)
    # DIS refuses frames under 12 px: a clear failure for the 2x2 video (other engines: below).
    bad["tiny"] = "the dis flow engine failed on 2x2 frames"
    out = tmp_path / "out"
    proc = run_child(prefix or [], "extract-flow", corpus, "-o", out, "-a", "dis")
    check_corpus_run(corpus, out, proc, bad)
    assert (
        "one_frame.mp4: only 1 frame(s): RGB written, no flow pairs" in proc.stdout
    )  # a NOTE line
    assert cv2.imread(str(out / "odd" / "flow_x_00001.jpg"), 0).shape == (170, 332)
    assert cv2.imread(str(out / "wide" / "img_00004.jpg")).shape == (32, 640, 3)
    assert len(list((out / UNICODE).glob("flow_y_*.jpg"))) == 3
    assert sorted(p.name for p in (out / "one_frame").iterdir()) == ["img_00001.jpg"]
    assert f"{UNICODE} 4 0" in (out / "list_rgb.txt").read_text(encoding="utf-8").splitlines()


def test_corpus_through_sample_frames(corpus, tmp_path):
    prefix = prefix_for_unreadable(corpus / "noread.mp4")
    bad = expected_bad(corpus, prefix)
    out = tmp_path / "out"
    proc = run_child(
        prefix or [],
        "sample-frames",
        corpus,
        "-o",
        out,
        "--sampler",
        "uniform",
        "--num-frames",
        "3",
    )
    check_corpus_run(corpus, out, proc, bad)
    assert cv2.imread(str(out / "tiny" / "img_00001.jpg")).shape == (2, 2, 3)
    assert len(list((out / "one_frame").glob("img_*.jpg"))) == 1


# flowkit's own tvl1 is the slow one on CPU (JIT warm-up and full pyramid even for 2x2 frames).
@pytest.mark.parametrize(
    "algorithm", [pytest.param("tvl1", marks=pytest.mark.slow), "tvl1-opencv", "farneback", "dis"]
)
def test_tiny_frames_never_crash_a_worker(tmp_path, algorithm):
    video = moving_video(tmp_path / "in" / "tiny.mp4", n=3, height=2, width=2)
    out = tmp_path / "out"
    result = CliRunner().invoke(
        main, ["extract-flow", str(video), "-o", str(out), "-a", algorithm, "-q"]
    )
    lines = [line for line in result.output.splitlines() if line.startswith("FAILED")]
    if algorithm == "dis":
        assert result.exit_code == 1 and lines == [
            f"FAILED {video}: the dis flow engine failed on 2x2 frames: "
            "The input image must have either width or height >= 12"
        ]
        assert not (out / "tiny").exists()
    else:
        assert result.exit_code == 0 and not lines, result.output
        flows = sorted((out / "tiny").glob("flow_x_*.jpg"))
        assert len(flows) == 2 and cv2.imread(str(flows[0]), 0).shape == (2, 2)


@pytest.mark.parametrize("algorithm", ["dis", "farneback"])
def test_odd_and_very_wide_frame_sizes(tmp_path, algorithm):
    video = moving_video(tmp_path / "in" / "v.mp4", n=3, height=64, width=64)
    for size, shape in (("333x171", (171, 333)), ("640x32", (32, 640)), ("13x517", (517, 13))):
        out = tmp_path / size
        result = CliRunner().invoke(
            main,
            ["extract-flow", str(video), "-o", str(out), "-a", algorithm, "--size", size, "-q"],
        )
        assert result.exit_code == 0, result.output
        for name in ("img_00003.jpg", "flow_x_00002.jpg", "flow_y_00001.jpg"):
            assert cv2.imread(str(out / "v" / name)).shape[:2] == shape
