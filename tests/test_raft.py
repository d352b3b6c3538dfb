"""RAFT flow engine: torchvision's RAFT with local weights, video_features' padding, batching, and
its use by extract-flow and by the I3D flow stream of `flowkit features`."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from clirun import run

from flowkit.errors import ConfigError
from flowkit.flow import create_engine, list_engines
from flowkit.flow.raft import pad_to_multiple
from flowkit.outputs.hdf5 import load_index, read_video
from flowkit.pipelines.model_options import flow_input

optical_flow = pytest.importorskip("torchvision.models.optical_flow")


@pytest.fixture
def raft_weights(tmp_path):
    torch.manual_seed(0)
    net = optical_flow.raft_small(weights=None)
    path = tmp_path / "raft_small.pth"
    torch.save(net.state_dict(), path)  # torchvision's own key names
    return path, net.eval()


def _frames(n: int = 3, h: int = 122, w: int = 130) -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (n, h, w, 3), dtype=np.uint8)


@torch.no_grad()
def test_raft_equals_torchvision_with_sintel_padding(raft_weights):
    path, net = raft_weights
    assert "raft" in list_engines()
    engine = create_engine("raft", "cpu", weights=str(path), model="small", iterations=2)
    frames = _frames()
    flow = engine(frames[:-1], frames[1:])  # a batch of 2 pairs
    assert flow.shape == (2, 2, 122, 130) and flow.dtype == np.float32

    def prep(x):  # BGR uint8 -> RGB [-1, 1], replicate-padded 122x130 -> 128x136 (3+3 rows and cols)
        t = torch.from_numpy(x[..., ::-1].copy()).permute(0, 3, 1, 2).float() / 255 * 2 - 1
        return F.pad(t, (3, 3, 3, 3), mode="replicate")

    ref = net(prep(frames[:-1]), prep(frames[1:]), num_flow_updates=2)[-1]
    np.testing.assert_allclose(flow, ref[..., 3:125, 3:133].numpy(), rtol=1e-4, atol=1e-4)
    padded = create_engine("raft", "cpu", weights=str(path), model="small", iterations=2, keep_padding=True)
    np.testing.assert_allclose(padded(frames[:-1], frames[1:]), ref.numpy(), rtol=1e-4, atol=1e-4)


def test_padding_splits_evenly():
    x = torch.arange(5 * 9, dtype=torch.float32).reshape(1, 1, 5, 9)
    padded, pads = pad_to_multiple(x)
    assert padded.shape[-2:] == (8, 16) and pads == (3, 4, 1, 2)


def test_raft_needs_weights_and_matching_keys(raft_weights, tmp_path):
    with pytest.raises(ConfigError, match="raft-weights"):
        create_engine("raft", "cpu")
    path, _ = raft_weights
    with pytest.raises(ConfigError, match="not torchvision raft_large"):
        create_engine("raft", "cpu", weights=str(path), model="large")


def test_video_features_flow_quantisation():
    cfg = type("C", (), {"i3d_compat": "video_features", "flow_algorithm": "raft", "flow_dir": None,
                         "bound": 20.0})()
    flow = np.array([0.0, 20.0, 25.0, -20.0, 1.0], np.float32)
    values, kwargs = flow_input(flow, cfg)
    assert kwargs == {"bound": 1.0, "clip": False}
    unit = values
    # video_features: round(128 + 255/40 * clamp(flow)) then 2q/255 - 1; zero -> +1/255, +20 -> 256
    np.testing.assert_allclose(unit, [2 * 128 / 255 - 1, 2 * 256 / 255 - 1, 2 * 256 / 255 - 1,
                                      2 * 0 / 255 - 1, 2 * 134 / 255 - 1], rtol=1e-6, atol=1e-6)


@pytest.mark.slow
def test_extract_flow_and_features_with_raft(raft_weights, make_video, tmp_path):
    path, _ = raft_weights
    video = make_video("in/v.mp4", n=10, height=40, width=48, dx=1.0)
    out = tmp_path / "flow"
    result = run("extract-flow", video, "-o", out, "--algorithm", "raft", "--raft-weights", path,
                 "--raft-model", "small", "--raft-iterations", "1", "--format", "npy", "--short-side", "128")
    assert result.exit_code == 0, result.output
    feats = tmp_path / "feats"
    result = run("features", video, "-o", feats, "--model", "i3d_test", "--random-weights", "--stream",
                 "flow", "--flow-algorithm", "raft", "--raft-weights", path, "--raft-model", "small",
                 "--raft-iterations", "1", "--i3d-compat", "video_features", "--clip-len", "10")
    assert result.exit_code == 0, result.output
    assert read_video(feats / load_index(feats)["v"], "v")["datasets"]["features"].shape == (1, 64)
    bad = run("features", video, "-o", tmp_path / "x", "--model", "i3d_test", "--random-weights",
              "--stream", "flow", "--flow-algorithm", "raft")
    assert bad.exit_code != 0 and "--raft-weights" in bad.output


def _to_original(key: str) -> list[str]:
    """torchvision RAFT-large key -> its princeton-vl/RAFT name(s) (core/extractor.py, core/update.py)."""
    parts = key.split(".")
    if parts[0] in ("feature_encoder", "context_encoder"):
        enc = "fnet" if parts[0] == "feature_encoder" else "cnet"
        if parts[1] == "convnormrelu":
            return [f"{enc}.{'conv1' if parts[2] == '0' else 'norm1'}.{parts[3]}"]
        if parts[1] == "conv":
            return [f"{enc}.conv2.{parts[2]}"]
        layer, block, sub, idx, param = parts[1:]
        if sub == "downsample":
            names = [f"{enc}.{layer}.{block}.downsample.{idx}.{param}"]
            return names + ([f"{enc}.{layer}.{block}.norm3.{param}"] if idx == "1" else [])
        conv = {"convnormrelu1": ("conv1", "norm1"), "convnormrelu2": ("conv2", "norm2")}[sub]
        return [f"{enc}.{layer}.{block}.{conv[int(idx)]}.{param}"]
    if parts[0] == "mask_predictor":
        return [f"update_block.mask.{'0' if parts[1] == 'convrelu' else '2'}.{parts[-1]}"]
    names = {"convcorr1": "convc1", "convcorr2": "convc2", "convflow1": "convf1", "convflow2": "convf2",
             "conv": "conv"}
    if parts[1] == "motion_encoder":
        return [f"update_block.encoder.{names[parts[2]]}.{parts[-1]}"]
    if parts[1] == "recurrent_block":
        return [f"update_block.gru.{parts[3]}{parts[2][-1]}.{parts[-1]}"]
    return [key]


@torch.no_grad()
def test_original_raft_sintel_names_load(tmp_path):
    torch.manual_seed(0)
    net = optical_flow.raft_large(weights=None)
    original = {f"module.{name}": value for key, value in net.state_dict().items()
                for name in _to_original(key)}  # DataParallel prefix, as raft-sintel.pth
    assert "module.update_block.gru.convq2.weight" in original
    assert "module.cnet.layer2.0.norm3.bias" in original
    torch.save(original, tmp_path / "raft-sintel.pth")
    from flowkit.flow.raft import load_raft

    loaded, _, _ = load_raft("large", tmp_path / "raft-sintel.pth")
    for key, value in net.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
