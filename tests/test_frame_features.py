"""`flowkit features` with frame encoders: fps sampling by timestamps, the slow-fast token layout,
per-frame vectors equal to a direct model run, npy output, and the reader example."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from clirun import run

from flowkit.models import create_model, get_model_spec
from flowkit.outputs.hdf5 import load_index, read_video

pytest.importorskip("open_clip")
EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "read_frame_tokens.py"


def _reader():
    spec = importlib.util.spec_from_file_location("read_frame_tokens", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def long_video(make_video):
    # 300 frames at 6 fps: frame k at k/6 s; 3 fps picks the even frames (150 > the 129 cap).
    return make_video("in/long.mp4", n=300, fps=6.0, dx=1.0)


def test_slowfast_layout_3fps_129_frames_one_in_four_slow(long_video, tmp_path):
    out = tmp_path / "out"
    result = run("features", long_video, "-o", out, "--model", "clip_test", "--random-weights",
                 "--sampler", "fps", "--fps", "3", "--max-frames", "129", "--slowfast", "4")
    assert result.exit_code == 0, result.output
    data = read_video(out / load_index(out)["long"], "long")
    d, attrs = data["datasets"], data["attrs"]
    # 150 grid frames (0, 2, ..., 298) cut to 129 evenly spread over the whole list.
    expected = 2 * np.rint(np.linspace(0, 149, 129)).astype(np.int64)
    np.testing.assert_array_equal(d["frame_indices"], expected)
    np.testing.assert_allclose(d["timestamps"], expected / 6.0, atol=2e-3)
    slow = np.flatnonzero(d["is_slow"])
    np.testing.assert_array_equal(slow, np.arange(0, 129, 4))  # the first frame is slow, then every 4th
    assert len(slow) == 33 and attrs["slowfast"] == 4
    np.testing.assert_array_equal(d["features_spatial_window_indices"], slow)
    assert d["features_spatial"].shape == (33, 64, 4, 4)
    assert d["features"].shape == (129, 64) and d["features_embed"].shape == (129, 32)
    # the pooled (fast) vector of a frame is the spatial mean of its map
    np.testing.assert_allclose(d["features"][slow], d["features_spatial"].mean(axis=(2, 3)), rtol=1e-6,
                               atol=1e-6)
    assert not np.allclose(d["features"][0], d["features"][-1])  # frames differ
    with h5py.File(out / load_index(out)["long"]) as fh:
        tokens, owner = _reader().token_sequence(fh["long"])
    assert tokens.shape == (33 * 16 + 96, 64)
    assert np.all(np.diff(d["timestamps"][owner]) >= 0)  # time order restored
    np.testing.assert_array_equal(tokens[:16], d["features_spatial"][0].reshape(64, 16).T)
    np.testing.assert_array_equal(tokens[16], d["features"][1])


def _seeded_clip_weights(path: Path) -> torch.nn.Module:
    model = create_model("clip_test")
    torch.manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.05)
    torch.save(model.state_dict(), path)
    return model


def test_frame_vectors_equal_a_direct_model_run(make_video, tmp_path):
    video = make_video("in/clip.mp4", n=12, fps=6.0, height=72, width=96)
    model = _seeded_clip_weights(tmp_path / "w.pt")
    out = tmp_path / "out"
    result = run("features", video, "-o", out, "--model", "clip_test", "--weights", tmp_path / "w.pt",
                 "--fps", "2", "--crops", "3", "--batch-size", "3")
    assert result.exit_code == 0, result.output
    d = read_video(out / load_index(out)["clip"], "clip")["datasets"]
    np.testing.assert_array_equal(d["frame_indices"], [0, 3, 6, 9])
    from flowkit.video import read_all

    frames, _ = read_all(video)
    x = get_model_spec("clip_test").preprocess["rgb"](np.stack([frames[i].image for i in (0, 3, 6, 9)]),
                                                      crops=3)
    with torch.no_grad():
        expected = model.extract(x.flatten(0, 1), "embed").reshape(4, 3, 32).numpy()
    assert d["features"].shape == (4, 3, 32)  # [N, crops, D]
    np.testing.assert_allclose(d["features"], expected, rtol=1e-4, atol=1e-5)


def test_npy_output_and_option_checks(make_video, tmp_path):
    video = make_video("in/v.mp4", n=10, fps=5.0)
    out = tmp_path / "npy"
    result = run("features", video, "-o", out, "--model", "clip_test", "--random-weights",
                 "--format", "npy", "--slowfast", "2")
    assert result.exit_code == 0, result.output
    assert np.load(out / "v.npy").shape == (10, 64)
    assert np.load(out / "v_spatial.npy").shape == (5, 64, 4, 4)
    assert np.load(out / "v_embed.npy").shape == (10, 32)
    meta = json.loads((out / "v.json").read_text())
    assert meta["slow_positions"] == [0, 2, 4, 6, 8] and meta["frame_indices"] == list(range(10))
    bad = run("features", video, "-o", tmp_path / "x", "--model", "clip_test", "--random-weights",
              "--clip-len", "8")
    assert bad.exit_code != 0 and "single frames" in bad.output
    bad = run("features", video, "-o", tmp_path / "y", "--model", "c3d_test", "--random-weights",
              "--max-frames", "8")
    assert bad.exit_code != 0 and "frame encoders" in bad.output


def test_a_bad_video_fails_alone(make_video, tmp_path):
    make_video("in/good.mp4", n=6, fps=5.0)
    (tmp_path / "in" / "bad.mp4").write_bytes(b"not a video at all")
    out = tmp_path / "out"
    result = run("features", tmp_path / "in", "-o", out, "--model", "clip_test", "--random-weights",
                 "--slowfast", "2")
    assert result.exit_code != 0
    assert "bad.mp4" in result.output
    assert read_video(out / load_index(out)["good"], "good")["datasets"]["features"].shape == (6, 64)
