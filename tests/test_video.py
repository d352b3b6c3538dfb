"""Decoding: counts by decoding, stream timestamps, resizing, and one clear VideoError per bad file."""

from __future__ import annotations

import os
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest

from flowkit.errors import ConfigError, VideoError
from flowkit.video import Resize, VideoReader, parse_size, probe, read_all, scan_timestamps, to_gray


def test_counts_and_timestamps_by_decoding(make_video):
    path = make_video(n=10, fps=25.0)
    frames, reader = read_all(path)
    assert reader.num_frames == 10 == len(frames)
    assert [f.index for f in frames] == list(range(10))
    np.testing.assert_allclose([f.timestamp for f in frames], np.arange(10) * 0.04, atol=1e-6)
    assert frames[0].image.dtype == np.uint8 and frames[0].image.shape == (64, 64, 3)
    stamps, info = scan_timestamps(path)
    np.testing.assert_allclose(stamps, np.arange(10) * 0.04, atol=1e-6)
    assert info.fps == pytest.approx(25.0)


def test_variable_frame_rate_timestamps_come_from_the_stream(tmp_path):
    av = pytest.importorskip("av")
    path = tmp_path / "vfr.mp4"
    pts = [0, 1, 2, 5, 6, 12]  # in 1/30 s: gaps make the rate variable
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=30)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        stream.time_base = Fraction(1, 30)
        for k, p in enumerate(pts):
            frame = av.VideoFrame.from_ndarray(np.full((48, 64, 3), 30 * k, np.uint8), format="rgb24")
            frame.pts = p
            frame.time_base = Fraction(1, 30)
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    stamps, _ = scan_timestamps(path)
    np.testing.assert_allclose(stamps, np.asarray(pts) / 30.0, atol=2e-3)


def test_resize_short_side_and_exact_size():
    image = np.zeros((120, 160, 3), np.uint8)
    assert Resize(short_side=60).apply(image).shape == (60, 80, 3)
    assert Resize(short_side=60).target(90, 160) == (60, 107)
    assert Resize(size=(34, 25)).apply(image).shape == (25, 34, 3)
    assert Resize().apply(image) is image
    assert parse_size("340x256") == (340, 256)
    with pytest.raises(ConfigError):
        parse_size("340")
    with pytest.raises(ConfigError):
        Resize(short_side=10, size=(3, 3))


def test_reader_resizes_and_gray(make_video):
    frames, _ = read_all(make_video(n=3, height=64, width=96), Resize(short_side=32))
    assert frames[0].image.shape == (32, 48, 3)
    assert to_gray(frames[0].image).shape == (32, 48)


@pytest.mark.parametrize(
    ("setup", "cause"),
    [
        (lambda p: None, "file not found"),
        (lambda p: p.write_bytes(b""), "empty file"),
        (lambda p: p.write_text("this is not a video\n" * 50), "not a video"),
        (lambda p: p.mkdir(), "is a directory"),
    ],
)
def test_bad_inputs_raise_one_clear_error(tmp_path, setup, cause):
    path = tmp_path / "bad.mp4"
    setup(path)
    with pytest.raises(VideoError) as err:
        list(VideoReader(path))
    assert cause in str(err.value) and str(path) in str(err.value)
    assert "\n" not in str(err.value)


def test_truncated_video_is_an_error(make_video):
    path = make_video(n=12)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(VideoError, match="bad.mp4|clip.mp4"):
        list(VideoReader(path))


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files without permission")
def test_unreadable_file(make_video):
    path: Path = make_video()
    path.chmod(0)
    with pytest.raises(VideoError, match="permission denied"):
        probe(path)
