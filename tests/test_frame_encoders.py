"""Frame encoders (ResNet-50, CLIP ViT, DINOv2): reference key names load strictly and give the
library's own outputs; published preprocessing; full-size shapes; a clear error without the extra."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from flowkit.errors import CheckpointError, ConfigError
from flowkit.models import create_model, get_model_spec
from flowkit.models.weights import git_blob_sha1, load_checkpoint

open_clip = pytest.importorskip("open_clip")
timm = pytest.importorskip("timm")
tv_resnet = pytest.importorskip("torchvision.models.resnet")


def assert_rel_close(got: torch.Tensor, ref: torch.Tensor, rel: float = 1e-4) -> None:
    """max |got - ref| <= rel * max |ref| (the issue's acceptance bound)."""
    assert got.shape == ref.shape
    assert (got - ref).abs().max().item() <= rel * ref.abs().max().item()


def _seeded(model: torch.nn.Module, std: float = 0.05) -> torch.nn.Module:
    torch.manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name or name.startswith("ln") or ".ln_" in name or ".bn" in name:
                p.normal_(1.0 if name.endswith("weight") else 0.0, 0.1)
            else:
                p.normal_(0, std)
    return model.eval()


@torch.no_grad()
def test_resnet50_loads_torchvision_keys_and_equals_torchvision(tmp_path):
    ref = _seeded(tv_resnet.ResNet(tv_resnet.Bottleneck, [1, 1, 1, 1]))
    path = tmp_path / "resnet.pth"
    torch.save(ref.state_dict(), path)  # torchvision's own key names
    model = create_model("resnet50_test")
    info = load_checkpoint(model, path)
    assert info.scheme == "torchvision" and info.sha1 == git_blob_sha1(path) and info.num_classes == 1000
    x = torch.randn(2, 3, 56, 56)
    assert_rel_close(model.extract(x, "logits"), ref(x))
    trunk = torch.nn.Sequential(*list(ref.children())[:-2])
    fmap = model.extract_map(x)
    assert_rel_close(fmap, trunk(x))
    pooled = model.extract(x, "pool5")
    assert_rel_close(pooled, ref.avgpool(trunk(x)).flatten(1))
    torch.testing.assert_close(pooled, fmap.mean(dim=(2, 3)))  # pool5 is the map's mean by definition
    state = ref.state_dict()
    del state["layer1.0.conv2.weight"]
    torch.save(state, tmp_path / "bad.pth")
    with pytest.raises(CheckpointError, match="missing"):
        load_checkpoint(create_model("resnet50_test"), tmp_path / "bad.pth")


def _tiny_clip() -> torch.nn.Module:
    vision = {"layers": 2, "width": 64, "head_width": 32, "patch_size": 16, "image_size": 64}
    text = {"context_length": 8, "vocab_size": 50, "width": 32, "heads": 2, "layers": 1}
    return _seeded(open_clip.CLIP(embed_dim=32, vision_cfg=vision, text_cfg=text, quick_gelu=True))


@torch.no_grad()
def test_clip_loads_openai_keys_and_equals_open_clip(tmp_path):
    ref = _tiny_clip()
    state = dict(ref.state_dict())  # OpenAI / open_clip key names, text tower included
    state.update(input_resolution=torch.tensor(64), context_length=torch.tensor(8),
                 vocab_size=torch.tensor(50))
    path = tmp_path / "clip.pt"
    torch.save(state, path)
    model = create_model("clip_test")
    assert load_checkpoint(model, path).scheme == "openai"
    x = torch.randn(2, 3, 64, 64)
    embed, fmap = model.extract_with_map(x, "embed")
    assert_rel_close(embed, ref.encode_image(x))
    ref.visual.output_tokens = True
    _, tokens = ref.visual(x)
    assert fmap.shape == (2, 64, 4, 4)
    assert_rel_close(fmap.flatten(2).transpose(1, 2), tokens)  # row-major patch grid
    torch.testing.assert_close(model.extract(x, "mean"), fmap.mean(dim=(2, 3)))
    assert not torch.allclose(model.extract(x, "cls"), fmap.mean(dim=(2, 3)))  # CLS is no mean


@torch.no_grad()
def test_clip_loads_a_torchscript_archive(tmp_path):
    ref = _tiny_clip()

    class Image(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.visual = ref.visual

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.visual(x)

    x = torch.randn(1, 3, 64, 64)
    with pytest.warns(FutureWarning):  # torch.jit.trace is deprecated
        traced = torch.jit.trace(Image(), x)
    traced.save(str(tmp_path / "ViT.pt"))  # OpenAI ships TorchScript files
    model = create_model("clip_test")
    assert load_checkpoint(model, tmp_path / "ViT.pt").scheme == "open_clip"
    assert_rel_close(model.extract(x, "embed"), ref.encode_image(x))


@torch.no_grad()
def test_dinov2_loads_facebook_keys_and_equals_timm(tmp_path):
    cfg = {"embed_dim": 64, "depth": 2, "num_heads": 2, "num_classes": 0}
    # facebookresearch/dinov2 layout: pos_embed for a larger grid (518 px there) and a mask_token.
    source = _seeded(timm.create_model("vit_base_patch14_dinov2", img_size=70, **cfg))
    state = {**source.state_dict(), "mask_token": torch.zeros(1, 64)}
    torch.save(state, tmp_path / "dinov2.pth")
    model = create_model("dinov2_test")
    assert load_checkpoint(model, tmp_path / "dinov2.pth").scheme == "dinov2"
    ref = timm.create_model("vit_base_patch14_dinov2", img_size=56, **cfg).eval()
    from timm.models.vision_transformer import checkpoint_filter_fn

    ref.load_state_dict(checkpoint_filter_fn(dict(state), ref))
    x = torch.randn(2, 3, 56, 56)
    tokens = ref.forward_features(x)
    cls, fmap = model.extract_with_map(x, "cls")
    assert_rel_close(cls, tokens[:, 0])
    assert fmap.shape == (2, 64, 4, 4)
    assert_rel_close(fmap.flatten(2).transpose(1, 2), tokens[:, 1:])


@pytest.mark.parametrize("name", ["resnet50", "clip-vit-b16", "clip-vit-l14", "dinov2-vit-b14"])
def test_full_size_shapes(name):
    spec = get_model_spec(name)
    with torch.device("meta"):  # the real architecture, shapes only
        model = create_model(name)
        x = torch.empty(1, 3, spec.input_size, spec.input_size)
        for layer, dim in spec.layers.items():
            vector, fmap = model.extract_with_map(x, layer)
            assert vector.shape == (1, dim), layer
            assert fmap.shape == (1, *spec.map_shape)
    assert spec.kind == "frame" and spec.feature_dim == model.feature_dims[spec.default_layer]


def test_preprocessing_matches_torchvision_presets():
    tvf = pytest.importorskip("torchvision.transforms.functional")
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, (2, 90, 120, 3), dtype=np.uint8)
    spec = get_model_spec("resnet50")
    got = spec.preprocess["rgb"](frames)[:, 0]
    rgb = torch.from_numpy(frames[..., ::-1].copy()).permute(0, 3, 1, 2)
    ref = tvf.resize(rgb, 256, antialias=True)  # ResNet50_Weights.IMAGENET1K_V1.transforms()
    ref = tvf.center_crop(ref, 224).float() / 255
    ref = tvf.normalize(ref, [0.485, 0.456, 0.406], [0.229, 0.224, 0.225])
    assert got.shape == (2, 3, 224, 224)
    # uint8 rounding of the resize may differ by one level: 1/255/std
    assert (got - ref).abs().max() <= 1.01 / 255 / 0.224
    clip = get_model_spec("clip-vit-b16").preprocess["rgb"](frames, crops=10)
    assert clip.shape == (2, 10, 3, 224, 224)


def test_missing_extra_names_it(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "open_clip", None)  # import open_clip now raises ImportError
    with pytest.raises(ConfigError, match=r"flowkit\[clip\]"):
        create_model("clip_test")
