"""torchvision video classifiers: torchvision's state dicts load strictly; the pre-classifier feature
equals torchvision's own forward with the classifier removed; preprocessing equals the presets."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from clirun import run

from flowkit.errors import CheckpointError
from flowkit.models import create_model, get_model_spec
from flowkit.models.video_backbones import TorchvisionVideo
from flowkit.models.weights import load_checkpoint
from flowkit.outputs.hdf5 import load_index, read_video

video = pytest.importorskip("torchvision.models.video")


def _seeded(model: torch.nn.Module) -> torch.nn.Module:
    torch.manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim == 1 and ("norm" in name or "bn" in name or ".1.weight" in name):
                continue  # keep unit norm scales
            p.normal_(0, 0.05)
    return model.eval()


def _tiny_mvit() -> torch.nn.Module:
    blocks = [video.mvit.MSBlockConfig(1, 16, 16, [3, 3, 3], [3, 3, 3], [1, 1, 1], [1, 2, 2]),
              video.mvit.MSBlockConfig(1, 16, 32, [3, 3, 3], [3, 3, 3], [1, 2, 2], [1, 1, 1])]
    return video.MViT(spatial_size=(32, 32), temporal_size=4, block_setting=blocks, residual_pool=True,
                      residual_with_cls_embed=False, rel_pos_embed=True, proj_after_attn=True)


def _reference(arch: str) -> torch.nn.Module:
    if arch == "mvit_v2_s":
        return _seeded(_tiny_mvit())
    return _seeded(getattr(video, arch)())


def _without_head(ref: torch.nn.Module, arch: str) -> torch.nn.Module:
    trunk = copy.deepcopy(ref)
    if arch in ("r2plus1d_18", "r3d_18", "mc3_18"):
        trunk.fc = torch.nn.Identity()
    elif arch == "s3d":
        trunk.classifier = torch.nn.Identity()  # forward then means avgpool(features) over T, H, W
    else:
        trunk.head = torch.nn.Identity()
    return trunk


@pytest.mark.slow
@torch.no_grad()
# r3d_18 and mc3_18 run the same VideoResNet code path as r2plus1d_18 (their loading is tested below).
@pytest.mark.parametrize("arch", ["r2plus1d_18", "s3d", "mvit_v2_s", "swin3d_t"])
def test_pooled_feature_equals_torchvision(arch, tmp_path):
    ref = _reference(arch)
    if arch == "s3d":  # its (2, 7, 7) pool needs 224 px; a (2, 2, 2) pool lets a 64 px clip through
        ref.avgpool = torch.nn.AvgPool3d((2, 2, 2), stride=1)
    torch.save(ref.state_dict(), tmp_path / "tv.pth")  # torchvision's own key names
    model = create_model(arch, net=_tiny_mvit()) if arch == "mvit_v2_s" else create_model(arch)
    if arch == "s3d":
        model.net.avgpool = torch.nn.AvgPool3d((2, 2, 2), stride=1)
    info = load_checkpoint(model, tmp_path / "tv.pth", stream="rgb")
    assert info.scheme == "torchvision" and info.num_classes == 400
    x = torch.randn(1, 3, 16, 64, 64) if arch == "s3d" else torch.randn(1, 3, 4, 32, 32)
    pooled = model.extract(x)
    spec = get_model_spec(arch)
    assert pooled.shape == (1, model.num_features) and model.default_layer == spec.default_layer
    ref_pooled = _without_head(ref, arch)(x)
    assert (pooled - ref_pooled).abs().max() <= 1e-4 * ref_pooled.abs().max()
    assert model.extract_map(x).shape[:2] == (1, model.num_features)


def test_strict_loading_and_head_removal(tmp_path):
    state = video.r3d_18().state_dict()
    torch.save(state, tmp_path / "ok.pth")
    model = create_model("r3d_18")
    load_checkpoint(model, tmp_path / "ok.pth", drop_head=True)
    assert model.num_classes == 0 and isinstance(model.net.fc, torch.nn.Identity)
    state = dict(state)
    state["layer2.0.extra.weight"] = torch.zeros(1)
    torch.save(state, tmp_path / "bad.pth")
    with pytest.raises(CheckpointError, match="unexpected"):
        load_checkpoint(create_model("r3d_18"), tmp_path / "bad.pth")


@pytest.mark.parametrize("arch,shape", [("s3d", (1024, 7, 7)), ("mvit_v2_s", (768, 7, 7)),
                                        ("swin3d_t", (768, 7, 7)), ("r2plus1d_18", (512, 7, 7))])
def test_full_size_shapes(arch, shape):
    spec = get_model_spec(arch)
    with torch.device("meta"):
        model = create_model(arch)
        x = torch.empty(1, 3, spec.clip_len, spec.input_size, spec.input_size)
        assert model.extract(x).shape == (1, spec.feature_dim)
        assert model.extract_map(x).shape == (1, *shape) == (1, *spec.map_shape)


def test_preprocessing_equals_torchvision_video_preset():
    presets = pytest.importorskip("torchvision.transforms._presets")
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, (3, 90, 120, 3), dtype=np.uint8)
    rgb = torch.from_numpy(frames[..., ::-1].copy()).permute(0, 3, 1, 2)  # (T, C, H, W) uint8
    for arch, kwargs in [("r2plus1d_18", {"crop_size": (112, 112), "resize_size": (128, 171)}),
                         ("mvit_v2_s", {"crop_size": (224, 224), "resize_size": (256,),
                                        "mean": (0.45,) * 3, "std": (0.225,) * 3})]:
        ref = presets.VideoClassification(**kwargs)(rgb)
        got = get_model_spec(arch).preprocess["rgb"](frames)
        assert got.shape == ref.shape
        assert (got - ref).abs().max() <= 1.01 / 255 / 0.2  # one uint8 level of the resize at most
    assert isinstance(create_model("mc3_18"), TorchvisionVideo)


@pytest.mark.slow
def test_features_cli_runs_a_torchvision_model(make_video, tmp_path):
    video_path = make_video("in/v.mp4", n=6, height=48, width=64)
    out = tmp_path / "out"
    result = run("features", video_path, "-o", out, "--model", "mc3_18", "--random-weights",
                 "--clip-len", "2", "--crops", "3")
    assert result.exit_code == 0, result.output
    data = read_video(out / load_index(out)["v"], "v")
    assert data["datasets"]["features"].shape == (3, 3, 512)  # [windows, crops, D]
    assert data["attrs"]["layer"] == "avgpool"
