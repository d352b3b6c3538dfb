"""Every output says how it was made (model, checkpoint or random weights, preprocessing); C3D presets."""

from __future__ import annotations

import json

import cv2
import h5py
import numpy as np
import pytest
from clirun import run

from flowkit.errors import ConfigError
from flowkit.pipelines.features import FeaturesConfig, VideoFeatures


@pytest.fixture
def video(make_video, tmp_path):
    make_video("in/c/v.mp4", n=16, height=48, width=64)
    return tmp_path / "in"


def test_npy_sidecar_marks_random_weights_and_preprocessing(video, tmp_path):
    out = tmp_path / "npy"
    assert run("features", video, "-o", out, "--model", "c3d_test", "--random-weights", "--format", "npy",
               "--c3d-mode", "davidea").exit_code == 0
    meta = json.loads((out / "c" / "v.json").read_text())
    assert meta["random_weights"] == 1 and "RANDOM WEIGHTS" in meta["WARNING"]
    assert meta["model"] == "c3d_test" and meta["checkpoint_sha1_rgb"] == "none"
    assert meta["config"]["c3d_mode"] == "davidea" and meta["flowkit_version"]
    rgb = meta["preprocessing"]["rgb"]
    assert rgb["function"].endswith("preprocess_c3d")
    assert (rgb["rgb"], rgb["mean"], rgb["resize_hw"], rgb["crop"]) == (True, None, [112, 200], 112)
    assert meta["preprocessing"]["decode_resize"] == {"short_side": None, "size": [200, 112]}


def test_hdf5_records_checkpoint_and_preprocessing(video, tmp_path, weights):
    out = tmp_path / "h5"
    assert run("features", video, "-o", out, "--model", "c3d_test", "--weights", weights).exit_code == 0
    with h5py.File(out / "c3d_test-00000-of-00001.h5") as fh:
        assert fh.attrs["random_weights"] == 0 and len(fh.attrs["checkpoint_sha1_rgb"]) == 40
        rgb = json.loads(fh.attrs["preprocessing"])["rgb"]
    assert (rgb["rgb"], rgb["mean"], rgb["resize_hw"]) == (False, [90.25, 97.66, 101.41], [128, 171])


@pytest.mark.parametrize("fmt", ["h5", "npy"])
def test_lossless_flow_files_carry_their_engine_and_config(video, tmp_path, fmt):
    out = tmp_path / fmt
    assert run("extract-flow", video, "-o", out, "-a", "farneback", "--format", fmt).exit_code == 0
    if fmt == "h5":
        with h5py.File(out / "c" / "v" / "flow.h5") as fh:
            meta = {k: fh.attrs[k] for k in ("algorithm", "flowkit_version", "config", "engine_params")}
            meta["config"] = json.loads(meta["config"])
    else:
        meta = json.loads((out / "c" / "v" / "flow.json").read_text())
        assert meta["num_flows"] == 15
    assert meta["algorithm"] == "farneback" and meta["flowkit_version"]
    assert meta["config"]["bound"] == 20.0 and meta["config"]["format"] == fmt


def known_frame(height=48, width=64):
    """BGR frame: B rises along x, G along y, R is 200 everywhere."""
    ys, xs = np.mgrid[0:height, 0:width]
    return np.stack([xs * 255 // (width - 1), ys * 255 // (height - 1), np.full_like(xs, 200)], -1).astype(
        np.uint8
    )


def test_davidea_preset_preprocesses_like_its_predict_py():
    features = VideoFeatures(FeaturesConfig(model="c3d_test", c3d_mode="davidea", random_weights=True), None)
    frame = known_frame()
    decoded = features.geometry.apply(frame)  # what the decoder hands over
    clip = features.preprocess["rgb"](np.stack([decoded] * 16)).numpy()
    # predict.py: resize to 112x200, keep columns 44:156, RGB order, 0..255 without a mean.
    want = cv2.resize(frame, (200, 112), interpolation=cv2.INTER_LINEAR)[:, 44:156, ::-1]
    assert clip.shape == (3, 16, 112, 112)
    np.testing.assert_array_equal(clip[:, 0], want.transpose(2, 0, 1).astype(np.float32))
    assert (clip[0] == 200).all()  # channel 0 is R, no mean subtracted
    caffe = VideoFeatures(FeaturesConfig(model="c3d_test", random_weights=True), None)
    clip = caffe.preprocess["rgb"](np.stack([caffe.geometry.apply(frame)] * 16)).numpy()
    np.testing.assert_allclose(clip[2], 200 - 101.41, rtol=1e-6)  # BGR order, Sports-1M mean


def test_davidea_preset_refuses_a_mean_file(tmp_path):
    mean = tmp_path / "mean.npy"
    np.save(mean, np.zeros((1, 3, 16, 128, 171), np.float32))
    with pytest.raises(ConfigError, match="drop --mean-file"):
        FeaturesConfig(model="c3d_test", c3d_mode="davidea", random_weights=True, mean_file=str(mean))


def test_flow_options_need_the_flow_stream(tmp_path):
    with pytest.raises(ConfigError, match="--stream flow or both"):
        FeaturesConfig(model="i3d_test", random_weights=True, flow_dir=str(tmp_path))
    with pytest.raises(ConfigError, match="only with --flow-dir"):
        FeaturesConfig(model="i3d_test", random_weights=True, stream="flow", flow_rescale=True)
