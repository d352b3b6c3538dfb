"""VideoMAE through transformers from a local save_pretrained folder: strict loading, outputs equal to
transformers' own VideoMAEForVideoClassification, and a features run."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from clirun import run

from flowkit.errors import CheckpointError
from flowkit.models import create_model
from flowkit.models.weights import load_checkpoint
from flowkit.outputs.hdf5 import load_index, read_video

transformers = pytest.importorskip("transformers")


@pytest.fixture
def folder(tmp_path):
    cfg = transformers.VideoMAEConfig(image_size=32, patch_size=16, num_frames=4, tubelet_size=2,
                                      hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                      intermediate_size=64, num_labels=5, use_mean_pooling=True)
    torch.manual_seed(0)
    ref = transformers.VideoMAEForVideoClassification(cfg).eval()
    ref.save_pretrained(tmp_path / "videomae")
    return tmp_path / "videomae", ref


@torch.no_grad()
def test_videomae_equals_transformers(folder):
    path, ref = folder
    model = create_model("videomae_test")
    info = load_checkpoint(model, path)
    assert info.scheme == "transformers" and len(info.sha1) == 40
    x = torch.randn(2, 3, 4, 32, 32)
    pixel_values = x.transpose(1, 2)  # transformers takes (B, T, C, H, W)
    hidden = ref.videomae(pixel_values).last_hidden_state
    expected = ref.fc_norm(hidden.mean(1))
    pooled = model.extract(x)
    assert (pooled - expected).abs().max() <= 1e-4 * expected.abs().max()
    logits = ref(pixel_values).logits
    assert (model.extract(x, "logits") - logits).abs().max() <= 1e-4 * logits.abs().max()
    fmap = model.extract_map(x)
    assert fmap.shape == (2, 32, 2, 2)
    torch.testing.assert_close(fmap.mean(dim=(2, 3)), hidden.mean(1))


def test_videomae_refuses_incomplete_folders(folder, tmp_path):
    path, ref = folder
    state = {k: v for k, v in ref.state_dict().items() if "fc_norm" not in k}
    ref.save_pretrained(tmp_path / "broken", state_dict=state)
    with pytest.raises(CheckpointError, match="missing"):
        load_checkpoint(create_model("videomae_test"), tmp_path / "broken")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="config.json"):
        load_checkpoint(create_model("videomae_test"), tmp_path / "empty")


def test_features_with_a_videomae_folder(folder, make_video, tmp_path):
    path, _ = folder
    video = make_video("in/v.mp4", n=9, height=40, width=48)
    out = tmp_path / "out"
    result = run("features", video, "-o", out, "--model", "videomae_test", "--weights", path)
    assert result.exit_code == 0, result.output
    feats = read_video(out / load_index(out)["v"], "v")["datasets"]["features"]
    assert feats.shape == (2, 32) and np.isfinite(feats).all()


def test_fixed_clip_length_is_checked_up_front(make_video, tmp_path):
    video = make_video("in/v.mp4", n=9)
    result = run("features", video, "-o", tmp_path / "o", "--model", "videomae_test", "--random-weights",
                 "--clip-len", "8")
    assert result.exit_code != 0 and "exactly 4-frame clips" in result.output
