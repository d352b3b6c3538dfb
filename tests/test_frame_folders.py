"""Frame-folder input (--input-frames): each folder of images is a video, natural name order, --frames-fps."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
from clirun import run

from flowkit.errors import ConfigError
from flowkit.framefolder import discover_frame_folders, natural_key
from flowkit.outputs.hdf5 import load_index
from flowkit.synthetic import moving_frames


@pytest.fixture
def frames_root(tmp_path):
    root = tmp_path / "frames"
    (root / "walk" / "v1").mkdir(parents=True)
    for k, image in enumerate(moving_frames(16, 64, 64, 1.0, 0.0)):
        image[:16, :16] = 10 * k  # a marker: frame order is checkable after JPEG
        cv2.imwrite(str(root / "walk" / "v1" / f"f_{k + 1}.png"), image)
    (root / "run" / "v2").mkdir(parents=True)
    for k, image in enumerate(moving_frames(5, 48, 64, 0.0, 1.0)):
        cv2.imwrite(str(root / "run" / "v2" / f"img_{k:05d}.jpg"), image)
    (root / "run" / "v2" / "notes.txt").write_text("not a frame")
    return root


def test_natural_order_and_discovery(frames_root):
    assert sorted(["f_10.png", "f_2.png", "f_1.png"], key=natural_key) == ["f_1.png", "f_2.png", "f_10.png"]
    items = discover_frame_folders(frames_root)
    assert [(i.video_id, i.path.name) for i in items] == [("run/v2", "v2"), ("walk/v1", "v1")]
    assert [i.video_id for i in discover_frame_folders(frames_root / "run" / "v2")] == ["v2"]
    with pytest.raises(ConfigError, match="needs a folder of frame folders"):
        discover_frame_folders(frames_root / "walk" / "v1" / "f_1.png")


def test_sample_frames_reads_frame_folders(frames_root, tmp_path):
    out = tmp_path / "out"
    result = run("sample-frames", frames_root, "-o", out, "--input-frames", "--frames-fps", "10",
                 "--layout", "denseflow")
    assert result.exit_code == 0, result.output
    meta = json.loads((out / "walk" / "v1" / "sampling.json").read_text())
    assert meta["num_frames"] == 16 and meta["indices"] == list(range(16))
    np.testing.assert_allclose(meta["timestamps"], np.arange(16) / 10)
    marks = [int(cv2.imread(str(out / "walk" / "v1" / f"img_{k:05d}.jpg"))[8, 8, 0]) for k in range(16)]
    assert all(abs(m - 10 * k) <= 3 for k, m in enumerate(marks)), marks  # f_2 before f_10
    assert (out / "list_rgb.txt").read_text().splitlines() == ["run/v2 5 0", "walk/v1 16 1"]
    job = json.loads((out / ".flowkit" / "job.json").read_text())
    assert job["config"]["decode"] == {"decoder": "pyav", "input_frames": True, "frames_fps": 10.0}


def test_extract_flow_and_features_read_frame_folders(frames_root, tmp_path, weights):
    out = tmp_path / "flow"
    result = run("extract-flow", frames_root, "-o", out, "--input-frames", "-a", "dis")
    assert result.exit_code == 0, result.output
    assert len(list((out / "walk" / "v1").glob("flow_x_*.jpg"))) == 15
    assert cv2.imread(str(out / "run" / "v2" / "flow_y_00001.jpg"), 0).shape == (48, 64)
    feats = tmp_path / "feats"
    result = run("features", frames_root, "-o", feats, "--input-frames", "--model", "c3d_test",
                 "--weights", weights)
    assert result.exit_code == 0, result.output
    assert sorted(load_index(feats)) == ["run/v2", "walk/v1"]


def test_input_frames_needs_image_folders(tmp_path, make_video):
    make_video("in/a.mp4")
    result = run("sample-frames", tmp_path / "in", "-o", tmp_path / "out", "--input-frames")
    assert result.exit_code == 2 and "no folder of images found" in result.output
