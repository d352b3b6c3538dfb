"""Test-time crops: boxes and order against hand-computed boxes, flipped flow negates x, and
the centre crop of a 10-crop run equals a 1-crop run."""

from __future__ import annotations

import types

import numpy as np
import pytest
import torch
from clirun import run

from flowkit.models import get_model_spec
from flowkit.models.crops import CropBox, apply_crops, crop_boxes
from flowkit.outputs.hdf5 import load_index, read_video
from flowkit.pipelines.model_options import cropped_preprocessor


def test_ten_crop_boxes_and_order_of_the_anomaly_features():
    # 340x256 frames, 224 crops (Finspire13 / I3D 10-crop lineage): TL, TR, C, BL, BR, then flipped.
    boxes = crop_boxes(256, 340, 224, 10)
    five = [(0, 0), (0, 116), (16, 58), (32, 0), (32, 116)]
    assert boxes == [CropBox(t, left, 224, flip) for flip in (False, True) for t, left in five]
    data = np.arange(256 * 340, dtype=np.float32).reshape(1, 256, 340)
    flip = data[:, :, ::-1]
    reference = [data[:, :224, :224], data[:, :224, -224:], data[:, 16:240, 58:282],
                 data[:, -224:, :224], data[:, -224:, -224:], flip[:, :224, :224],
                 flip[:, :224, -224:], flip[:, 16:240, 58:282], flip[:, -224:, :224],
                 flip[:, -224:, -224:]]
    got = apply_crops(torch.from_numpy(data), boxes, channel_axis=0).numpy()
    np.testing.assert_array_equal(got, np.stack(reference))


def test_three_crops_along_the_long_side_and_centre_rounding():
    assert [(b.top, b.left) for b in crop_boxes(256, 340, 256, 3)] == [(0, 0), (0, 42), (0, 84)]
    assert [(b.top, b.left) for b in crop_boxes(340, 256, 224, 3)] == [(0, 16), (58, 16), (116, 16)]
    assert crop_boxes(128, 171, 112, 1) == [CropBox(8, 30, 112)]  # torchvision: round(29.5) = 30
    with pytest.raises(ValueError, match="crops must be"):
        crop_boxes(64, 64, 32, 5)


def test_flipped_flow_crop_negates_x():
    flow = torch.zeros(2, 3, 8, 10)
    flow[0] = torch.linspace(-1, 1, 10)  # x varies along the width
    flow[1] = 0.5
    crops = apply_crops(flow, crop_boxes(8, 10, 6, 10), channel_axis=0, flow=True)
    for k in range(5):
        torch.testing.assert_close(crops[5 + k, 0], -flow[0].flip(-1)[(..., *crops_box(k))])
        torch.testing.assert_close(crops[5 + k, 1], flow[1].flip(-1)[(..., *crops_box(k))])
        torch.testing.assert_close(crops[k, 0], flow[0][(..., *crops_box(k))])
    # the I3D flow preprocessing with --crops 10 flips x the same way
    spec = get_model_spec("i3d_test")
    cfg = types.SimpleNamespace(crops=10, bound=20.0, i3d_compat="tf", flow_algorithm="tvl1", flow_dir=None)
    pixels = np.zeros((2, 2, 128, 160), np.float32)
    pixels[:, 0] = 4.0  # moving right
    out = cropped_preprocessor(spec, "flow", cfg)(pixels)
    assert out.shape == (10, 2, 2, 112, 112)
    assert torch.all(out[:5, 0] == 0.2) and torch.all(out[5:, 0] == -0.2) and torch.all(out[:, 1] == 0)


def crops_box(k: int) -> tuple[slice, slice]:
    box = crop_boxes(8, 10, 6, 10)[k]
    return slice(box.top, box.top + 6), slice(box.left, box.left + 6)


def test_centre_of_ten_crops_equals_one_crop_run(make_video, tmp_path):
    video = make_video("in/v.mp4", n=18, height=64, width=80)
    outs = {}
    for crops in ("1", "10"):
        out = tmp_path / f"c{crops}"
        result = run("features", video, "-o", out, "--model", "i3d_test", "--random-weights",
                     "--clip-len", "9", "--crops", crops)
        assert result.exit_code == 0, result.output
        outs[crops] = read_video(out / load_index(out)["v"], "v")["datasets"]["features"]
    assert outs["1"].shape == (2, 64) and outs["10"].shape == (2, 10, 64)
    np.testing.assert_allclose(outs["10"][:, 2], outs["1"], rtol=1e-4, atol=1e-5)
    assert not np.allclose(outs["10"][:, 0], outs["10"][:, 2])
