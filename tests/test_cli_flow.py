"""`flowkit extract-flow` end to end: layouts, quantization, known motion, formats, failures, devices."""

from __future__ import annotations

import json

import cv2
import h5py
import numpy as np
import pytest
from click.testing import CliRunner
from clirun import run

from flowkit.cli import main
from flowkit.flow import create_engine
from flowkit.flow.quantize import dequantize, quantize
from flowkit.synthetic import moving_frames, write_video
from flowkit.video import read_all, to_gray


def coded_video(path, n=6, dx=1.0, dy=0.5):
    """Moving texture whose top-left 8x8 block holds 10 + 30*k, so every file says which frame it is."""
    frames = moving_frames(n, 64, 64, dx, dy, seed=3)
    for k, frame in enumerate(frames):
        frame[:8, :8] = 10 + 30 * k
    return write_video(path, frames, fourcc="MJPG")


def frame_code(image_path) -> int:
    block = cv2.imread(str(image_path))[1:7, 1:7].astype(float).mean()
    return int(round((block - 10) / 30))


@pytest.mark.parametrize(
    ("layout", "first", "rgb_frames"),
    [("mmaction2", 1, list(range(6))), ("denseflow", 0, list(range(6))), ("tsn", 1, list(range(1, 6)))],
)
def test_layout_presets(tmp_path, layout, first, rgb_frames):
    coded_video(tmp_path / "in" / "v.avi")
    out = tmp_path / "out"
    result = run("extract-flow", tmp_path / "in", "-o", out, "--layout", layout, "-a", "dis")
    assert result.exit_code == 0, result.output
    folder = out / "v"
    rgb = sorted(folder.glob("img_*.jpg"))
    assert rgb[0].name == f"img_{first:05d}.jpg" and len(rgb) == len(rgb_frames)
    assert [frame_code(p) for p in rgb] == rgb_frames
    for axis in "xy":
        flows = sorted(folder.glob(f"flow_{axis}_*.jpg"))
        assert flows[0].name == f"flow_{axis}_{first:05d}.jpg" and len(flows) == 5
    assert (out / "list_rgb.txt").read_text() == f"v {len(rgb_frames)} 0\n"
    assert (out / "list_flow.txt").read_text() == "v 5 0\n"


def test_known_motion_and_quantization_round_trip(tmp_path):
    path = write_video(tmp_path / "in" / "m.avi", moving_frames(6, 64, 64, 1.5, -1.0, seed=5), fourcc="MJPG")
    out = tmp_path / "out"
    assert run("extract-flow", path, "-o", out, "--format", "jpg").exit_code == 0
    assert run("extract-flow", path, "-o", tmp_path / "h5", "--format", "h5").exit_code == 0
    jpg = np.stack(
        [
            dequantize(np.stack([cv2.imread(str(out / "m" / f"flow_{a}_{k:05d}.jpg"), 0) for a in "xy"]))
            for k in range(1, 6)
        ]
    )
    with h5py.File(tmp_path / "h5" / "m" / "flow.h5") as fh:
        lossless = fh["flow"][()].astype(np.float32)
        assert fh["timestamps"].shape == (5, 2)
    frames, _ = read_all(path)
    gray = np.stack([to_gray(f.image) for f in frames])
    exact = create_engine("tvl1", device="cpu")(gray[:-1], gray[1:])
    np.testing.assert_allclose(lossless, exact, atol=0.01)  # float16 storage of |v| < 4 px
    err = np.abs(jpg - np.clip(exact, -20, 20))
    # Half a level (20/255 = 0.078 px) from rounding, plus JPEG q95 error measured at <= 2 levels
    # (0.31 px) per pixel and well under half a level on average for smooth flow fields.
    assert err.mean() < 0.078 + 0.05 and err.max() < 0.078 + 0.32
    inner = jpg[:, :, 12:-12, 12:-12]
    assert abs(inner[:, 0].mean() - 1.5) < 0.1 and abs(inner[:, 1].mean() + 1.0) < 0.1


def test_png_format_is_lossless_8_bit(tmp_path):
    path = coded_video(tmp_path / "in" / "v.avi", n=4)
    out = tmp_path / "out"
    assert run("extract-flow", path, "-o", out, "--format", "png", "-a", "dis").exit_code == 0
    levels = cv2.imread(str(out / "v" / "flow_x_00001.png"), cv2.IMREAD_UNCHANGED)
    frames, _ = read_all(path)
    gray = np.stack([to_gray(f.image) for f in frames])
    expected = quantize(create_engine("dis", device="cpu")(gray[:1], gray[1:2])[0, 0])
    np.testing.assert_array_equal(levels, expected)  # PNG keeps the quantized levels exactly


def test_npy_format_streams_a_valid_file(tmp_path):
    path = coded_video(tmp_path / "in" / "v.avi", n=5)
    out = tmp_path / "out"
    assert (
        run("extract-flow", path, "-o", out, "--format", "npy", "-a", "dis", "--batch-size", "3").exit_code
        == 0
    )
    flow = np.load(out / "v" / "flow.npy")
    assert flow.shape == (4, 2, 64, 64) and flow.dtype == np.float16
    np.testing.assert_allclose(np.load(out / "v" / "timestamps.npy")[:, 1], np.arange(1, 5) * 0.04, atol=1e-6)


def test_one_frame_video_gives_rgb_and_a_note(tmp_path):
    path = coded_video(tmp_path / "in" / "single.avi", n=1)
    out = tmp_path / "out"
    result = run("extract-flow", path, "-o", out, "-a", "dis")
    assert result.exit_code == 0, result.output
    assert "NOTE" in result.output and "only 1 frame" in result.output
    assert len(list((out / "single").glob("img_*.jpg"))) == 1
    assert not list((out / "single").glob("flow_*"))


def test_bad_video_fails_alone_rerun_does_no_work(tmp_path):
    coded_video(tmp_path / "in" / "a" / "v.avi")
    coded_video(tmp_path / "in" / "b" / "v.avi")
    (tmp_path / "in" / "b" / "bad.mp4").write_bytes(b"not a video at all" * 64)
    out = tmp_path / "out"
    result = run("extract-flow", tmp_path / "in", "-o", out, "-a", "dis", "--jobs", "2")
    assert result.exit_code == 1
    assert "done 2, skipped 0 (already done), failed 1" in result.output
    assert "bad.mp4: not a video" in result.output
    assert len(list((out / "b" / "v").glob("flow_x_*.jpg"))) == 5
    again = run("extract-flow", tmp_path / "in", "-o", out, "-a", "dis")
    assert "done 0, skipped 2 (already done), failed 1" in again.output


def test_two_cpu_workers_stand_in_for_two_devices(tmp_path):
    for k in range(4):
        coded_video(tmp_path / "in" / f"v{k}.avi", n=4, dx=0.5 * k)
    out = tmp_path / "out"
    result = run("extract-flow", tmp_path / "in", "-o", out, "-a", "dis", "--device", "cpu,cpu")
    assert result.exit_code == 0, result.output
    events = [json.loads(line) for p in (out / ".flowkit" / "events").glob("*.jsonl") for line in p.open()]
    starts = [e for e in events if e["event"] == "start"]
    assert len(starts) == 4 and {e["device"] for e in starts} == {"cpu"}
    assert (out / "list_flow.txt").read_text().count("\n") == 4


def test_visualize_png_and_video(tmp_path):
    path = coded_video(tmp_path / "in" / "v.avi")
    out = tmp_path / "out"
    assert run("extract-flow", path, "-o", out, "-a", "dis").exit_code == 0
    result = CliRunner().invoke(main, ["visualize", str(out / "v"), "-o", str(tmp_path / "viz")])
    assert result.exit_code == 0, result.output
    pngs = sorted((tmp_path / "viz").glob("*.png"))
    assert len(pngs) == 5 and cv2.imread(str(pngs[0])).shape == (64, 128, 3)
    result = CliRunner().invoke(main, ["visualize", str(out / "v"), "-o", str(tmp_path / "viz.mp4")])
    assert result.exit_code == 0 and (tmp_path / "viz.mp4").stat().st_size > 0


def test_option_errors_stop_before_any_work(tmp_path):
    path = coded_video(tmp_path / "in" / "v.avi", n=3)
    out = tmp_path / "out"
    result = CliRunner().invoke(
        main, ["extract-flow", str(path), "-o", str(out), "-a", "dis", "--tau", "0.3"]
    )
    assert result.exit_code == 2 and "do not apply to --algorithm dis" in result.output
    result = CliRunner().invoke(main, ["extract-flow", str(path), "-o", str(out), "--device", "cpu,gpu7"])
    assert result.exit_code == 2 and "unknown device 'gpu7'" in result.output  # a config error
    assert not out.exists()
