"""`flowkit visualize`: a per-frame robust colour scale, and the bound read from the job record."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from click.testing import CliRunner
from clirun import run

from flowkit.cli import main
from flowkit.errors import ConfigError
from flowkit.flow.visualize import frame_scale, job_bound


def visualize(*args):
    return CliRunner().invoke(main, ["visualize", *map(str, args)])


def test_a_scene_cut_does_not_wash_out_the_other_frames(tmp_path):
    folder = tmp_path / "v"
    folder.mkdir()
    flows = np.zeros((20, 2, 16, 16), np.float16)
    flows[:, 0] = 1.4  # typical motion
    flows[10, 0] = 19.7  # one scene cut
    np.save(folder / "flow.npy", flows)
    assert visualize(folder, "-o", tmp_path / "viz").exit_code == 0
    first = cv2.imread(str(tmp_path / "viz" / "flow_00001.png"))
    assert first.min() < 40  # full colour, not near white
    fixed = visualize(folder, "-o", tmp_path / "fixed", "--max-flow", "19.7")
    assert fixed.exit_code == 0 and cv2.imread(str(tmp_path / "fixed" / "flow_00001.png")).min() > 200
    assert frame_scale(np.zeros((2, 4, 4))) == 1.0  # still frames stay pale: no noise stretched to colour


def test_bound_comes_from_the_job_record(make_video, tmp_path):
    make_video("in/c/v.mp4", n=4, height=32, width=32)
    out = tmp_path / "out"
    assert run("extract-flow", tmp_path / "in", "-o", out, "-a", "dis", "--bound", "5").exit_code == 0
    assert job_bound(out / "c" / "v") == 5.0
    with pytest.raises(ConfigError, match="quantized with --bound 5"):
        job_bound(out / "c" / "v", 20.0)
    assert job_bound(tmp_path) == 20.0  # no record: the default
    assert visualize(out / "c" / "v", "-o", tmp_path / "viz").exit_code == 0
    refused = visualize(out / "c" / "v", "-o", tmp_path / "viz2", "--bound", "20")
    assert refused.exit_code == 2 and "drop --bound" in refused.output
