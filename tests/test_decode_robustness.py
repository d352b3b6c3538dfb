"""Decoding robustness: corrupt videos fail unless --allow-truncated, size cap before decoding, audio-only
files, no FFmpeg/OpenCV log lines on stderr, streamed npz with bounded memory."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path
from types import SimpleNamespace

import av
import numpy as np
import pytest
from clirun import run

from flowkit.decoders import DecodeOptions
from flowkit.errors import VideoError
from flowkit.inputs import VideoItem
from flowkit.jobs.manifest import Manifest
from flowkit.pipelines.frames import FramesConfig, FramesPipeline
from flowkit.pipelines.stages import prefetch
from flowkit.synthetic import iter_moving_frames, moving_video, write_video_av
from flowkit.video import VideoReader, decode_shortfall, read_all, scan_timestamps


def corrupt_h264(path: Path, n: int = 100, share: float = 0.3) -> Path:
    """An H.264 mp4 of n frames whose middle `share` of bytes is overwritten with seeded noise."""
    write_video_av(path, iter_moving_frames(n, 64, 64, 1.0, 0.5))
    data = bytearray(path.read_bytes())
    a, b = int(len(data) * (0.5 - share / 2)), int(len(data) * (0.5 + share / 2))
    data[a:b] = np.random.default_rng(0).integers(0, 256, b - a, dtype=np.uint8).tobytes()
    path.write_bytes(bytes(data))
    return path


def claims_huge_frames(path: Path, side: int = 12288) -> Path:
    """A 66 KB mkv whose header claims side x side frames (rawvideo: the size comes from the header only)."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream("rawvideo", rate=25)
        stream.width, stream.height, stream.pix_fmt = 256, 256, "gray"
        black = av.VideoFrame.from_ndarray(np.zeros((256, 256), np.uint8), format="gray")
        container.mux(stream.encode(black))
        container.mux(stream.encode())
    data = bytearray(path.read_bytes())
    for element in (b"\xb0\x82\x01\x00", b"\xba\x82\x01\x00"):  # Matroska PixelWidth / PixelHeight = 256
        at = data.index(element)
        data[at + 2 : at + 4] = side.to_bytes(2, "big")
    path.write_bytes(bytes(data))
    return path


def test_shortfall_threshold():
    assert decode_shortfall(250, 250, 0) is None
    assert decode_shortfall(249, 250, 0) is None  # headers are estimates: a frame or two off is fine
    assert decode_shortfall(226, 250, 0) is None  # >= 90 %
    assert "decoded 88 of 250" in decode_shortfall(88, 250, 0)
    assert decode_shortfall(7, 10, 0) is not None and decode_shortfall(8, 10, 0) is None
    assert "2 decode error(s)" in decode_shortfall(250, 250, 2)
    assert decode_shortfall(40, 0, 0) is None  # no header count: nothing to compare


def test_corrupt_video_fails_by_default_and_decoding_goes_on_past_errors(tmp_path):
    path = corrupt_h264(tmp_path / "bad.mp4")
    with pytest.raises(VideoError, match=r"truncated or corrupt video: decoded \d+ of 100 frames") as err:
        read_all(path)
    assert "--allow-truncated" in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(VideoError, match="truncated or corrupt"):
        scan_timestamps(path)
    counts = {}
    for decoder in ("pyav", "opencv"):
        frames, reader = read_all(path, options=DecodeOptions(decoder=decoder, allow_truncated=True))
        counts[decoder] = reader.num_frames
        assert reader.truncated and len(frames) == reader.num_frames
    # PyAV skips corrupt packets like the ffmpeg tool (56 of 100 here); OpenCV stops at the first (24).
    assert counts["pyav"] >= 50 and counts["pyav"] > 2 * counts["opencv"]


def test_allow_truncated_through_the_cli_is_recorded(tmp_path):
    videos = tmp_path / "in"
    corrupt_h264(videos / "bad.mp4")
    moving_video(videos / "good.mp4", n=5)
    out = tmp_path / "out"
    result = run("extract-flow", videos, "-o", out, "-a", "dis")
    assert result.exit_code == 1
    failed = [line for line in result.output.splitlines() if line.startswith("FAILED")]
    assert len(failed) == 1 and "bad.mp4: truncated or corrupt video" in failed[0]
    assert not (out / "bad").exists() and len(list((out / "good").glob("flow_x_*"))) == 4
    again = run("extract-flow", videos, "-o", out, "-a", "dis", "--allow-truncated")
    assert again.exit_code == 0, again.output
    assert "bad.mp4: truncated or corrupt video: decoded" in again.output  # a NOTE in the summary
    record = Manifest(out).read_done("bad")
    assert record["truncated"].startswith("truncated or corrupt video: decoded")
    assert len(list((out / "bad").glob("img_*"))) == record["num_frames"] >= 50


def test_frames_above_max_pixels_are_refused_from_the_header(tmp_path):
    path = claims_huge_frames(tmp_path / "bomb.mkv")
    assert path.stat().st_size < 100_000
    with pytest.raises(VideoError, match=r"frame size 12288x12288 exceeds --max-pixels 35389440"):
        list(VideoReader(path))
    with pytest.raises(VideoError, match="exceeds --max-pixels"):
        scan_timestamps(path)
    out = tmp_path / "out"
    result = run("sample-frames", path, "-o", out, "--max-pixels", "100000")
    assert result.exit_code == 1
    assert f"FAILED {path}: frame size 12288x12288 exceeds --max-pixels 100000" in result.output


def test_audio_only_file_says_no_video_stream(tmp_path):
    path = tmp_path / "song.m4a"
    with av.open(str(path), "w") as container:
        stream = container.add_stream("aac", rate=16000)
        samples = np.zeros((1, 1024), np.float32)
        for _ in range(20):
            frame = av.AudioFrame.from_ndarray(samples, format="fltp", layout="mono")
            frame.sample_rate = 16000
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    with pytest.raises(VideoError, match=r"song.m4a: no video stream \(audio only\)"):
        list(VideoReader(path))


def test_no_ffmpeg_or_opencv_lines_on_stderr(tmp_path):
    bad = corrupt_h264(tmp_path / "bad.mp4")
    whole = moving_video(tmp_path / "whole.mp4", n=10).read_bytes()
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(whole[: len(whole) // 2])  # "moov atom not found"
    script = (
        "import sys\n"
        "from flowkit.decoders import DecodeOptions\n"
        "from flowkit.errors import VideoError\n"
        "from flowkit.video import read_all\n"
        "for decoder in ('opencv', 'pyav'):\n"
        "    for path in sys.argv[1:]:\n"
        "        try:\n"
        "            read_all(path, options=DecodeOptions(decoder=decoder))\n"
        "        except VideoError as exc:\n"
        "            print(exc)\n"
    )
    proc = subprocess.run([sys.executable, "-c", script, str(bad), str(cut)], capture_output=True,
                          text=True, timeout=120, env={**os.environ, "FLOWKIT_DEBUG": ""})
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr  # FFmpeg/OpenCV write to fd 2
    assert len(proc.stdout.splitlines()) == 4, proc.stdout


def test_npz_is_streamed_with_bounded_memory(tmp_path):
    """Frames go to disk as they are decoded: traced memory stays far below the frames' total size."""
    n, side = 60, 192
    video = moving_video(tmp_path / "long.avi", n=n, height=side, width=side, fourcc="MJPG")
    pipeline = FramesPipeline(FramesConfig(format="npz"), tmp_path / "out")
    total = n * side * side * 3
    tracemalloc.start()
    count, _ = pipeline._write(VideoItem("long", video), None)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert count == n and peak < total / 3, (peak, total)
    data = np.load(tmp_path / "out" / "long.npz")
    assert data["frames"].shape == (n, side, side, 3) and data["indices"].tolist() == list(range(n))
    expected, _ = read_all(video)
    np.testing.assert_array_equal(data["frames"][7], expected[7].image[:, :, ::-1])
    assert json.loads(str(data["groups"])) == {}
    assert not [p for p in (tmp_path / "out").iterdir() if p.name.startswith(".")]


def test_prefetch_bounds_the_bytes_it_buffers():
    """The decode thread stops when the queued images reach max_bytes, whatever the item depth."""
    produced: list[int] = []

    def source():
        for k in range(12):
            produced.append(k)
            yield SimpleNamespace(image=np.zeros(1 << 20, np.uint8))

    ahead = []
    for k, _ in enumerate(prefetch(source(), depth=16, max_bytes=3 << 20)):
        if k == 0:
            time.sleep(0.3)  # give the decode thread every chance to run ahead
        ahead.append(len(produced) - k)
    assert len(ahead) == 12 and max(ahead) <= 5, ahead  # 1 consumed + 3 queued + 1 waiting for room


@pytest.mark.parametrize("degrees", [90, 180, 270])
def test_pyav_turns_rotated_videos_upright_like_opencv(tmp_path, degrees):
    path = tmp_path / f"rot{degrees}.mp4"
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=25)
        stream.width, stream.height, stream.pix_fmt = 96, 64, "yuv420p"
        stream.set_display_rotation(degrees)  # a phone video's display matrix
        for image in iter_moving_frames(3, 64, 96, 1.0, 0.0):
            container.mux(stream.encode(av.VideoFrame.from_ndarray(image, format="bgr24")))
        container.mux(stream.encode())
    ours, _ = read_all(path, options=DecodeOptions(decoder="pyav"))
    theirs, _ = read_all(path, options=DecodeOptions(decoder="opencv"))
    assert ours[0].image.shape == theirs[0].image.shape == ((64, 96, 3) if degrees == 180 else (96, 64, 3))
    for a, b in zip(ours, theirs, strict=True):
        np.testing.assert_array_equal(a.image, b.image)
