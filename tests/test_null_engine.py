"""The benchmark-only `null` engine: hidden from users, zero flow through the whole pipeline."""

from __future__ import annotations

import cv2
import numpy as np
from clirun import run

from flowkit.flow import create_engine, list_engines
from flowkit.inputs import VideoItem
from flowkit.pipelines.flow import FlowConfig, extract_video


def test_null_engine_is_hidden_and_returns_zero_flow():
    assert "null" not in list_engines() and "null" in list_engines(include_hidden=True)
    flow = create_engine("null", "cpu")(np.zeros((3, 8, 10), np.uint8), np.ones((3, 8, 10), np.uint8))
    assert flow.shape == (3, 2, 8, 10) and flow.dtype == np.float32 and not flow.any()
    assert run("extract-flow", "x.mp4", "-o", "out", "-a", "null").exit_code == 2  # not a CLI choice


def test_null_engine_runs_the_whole_pipeline(make_video, tmp_path):
    video = make_video(n=5)
    record = extract_video(VideoItem("v", video), tmp_path / "v", FlowConfig(algorithm="null"), "cpu")
    assert record["flow"] == 4 and record["rgb"] == 5
    level = cv2.imread(str(tmp_path / "v" / "flow_x_00001.jpg"), cv2.IMREAD_GRAYSCALE)
    assert level.shape == (64, 64) and np.all(level == 128)  # zero flow -> 128
