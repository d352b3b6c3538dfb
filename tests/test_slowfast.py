"""SlowFast R50 (own port of PySlowFast): the published checkpoint's key names and shapes, the
pathway packing, golden tests of the fuse / residual block / head from their math, strict loading."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from flowkit.errors import CheckpointError
from flowkit.models import create_model
from flowkit.models.slowfast import _Fuse, _ResBlock, pack_pathways
from flowkit.models.weights import load_checkpoint

# Shapes of SLOWFAST_8x8_R50's state dict (PySlowFast names; from its ResStage / FuseFastToSlow sizes).
PUBLISHED = {
    "s1.pathway0_stem.conv.weight": (64, 3, 1, 7, 7),
    "s1.pathway1_stem.conv.weight": (8, 3, 5, 7, 7),
    "s1_fuse.conv_f2s.weight": (16, 8, 7, 1, 1),
    "s2.pathway0_res0.branch1.weight": (256, 80, 1, 1, 1),
    "s2.pathway1_res0.branch2.a.weight": (8, 8, 3, 1, 1),
    "s3_fuse.conv_f2s.weight": (128, 64, 7, 1, 1),
    "s4.pathway0_res0.branch2.a.weight": (256, 640, 3, 1, 1),
    "s5.pathway0_res2.branch2.c_bn.running_var": (2048,),
    "s5.pathway1_res2.branch2.c.weight": (256, 64, 1, 1, 1),
    "head.projection.weight": (400, 2304),
}


def test_full_model_has_the_published_keys_and_size():
    with torch.device("meta"):
        model = create_model("slowfast_r50")
        state = model.state_dict()
        x = torch.empty(1, 3, 32, 224, 224)
        assert model.extract(x).shape == (1, 2304)  # slow 2048 + fast 256
        assert model.extract_map(x).shape == (1, 2048, 7, 7)
    for key, shape in PUBLISHED.items():
        assert tuple(state[key].shape) == shape, key
    params = sum(v.numel() for k, v in state.items() if not k.endswith(("running_mean", "running_var",
                                                                        "num_batches_tracked")))
    assert params == 34_566_488  # SlowFast 8x8 R50: 34.57 M parameters


def test_pack_pathways_takes_every_fourth_by_linspace():
    frames = torch.arange(32.0).view(1, 1, 32, 1, 1)
    slow, fast = pack_pathways(frames, alpha=4)
    # torch.linspace(0, 31, 8) = 0, 4.43, 8.86, 13.29, 17.71, 22.14, 26.57, 31 -> truncated
    assert slow.flatten().tolist() == [0, 4, 8, 13, 17, 22, 26, 31]
    assert torch.equal(fast, frames)


def _randomise(module: torch.nn.Module) -> torch.nn.Module:
    torch.manual_seed(0)
    with torch.no_grad():
        for name, tensor in module.state_dict().items():
            if name.endswith("running_var"):
                tensor.uniform_(0.5, 1.5)
            elif tensor.is_floating_point():
                tensor.normal_(0, 0.2)
    return module.eval()


def _bn(x, module):
    return F.batch_norm(x, module.running_mean, module.running_var, module.weight, module.bias, eps=1e-5)


@torch.no_grad()
def test_fuse_and_block_equal_their_math():
    fuse = _randomise(_Fuse(4, 2, 7, 4))
    slow, fast = torch.randn(1, 6, 2, 5, 5), torch.randn(1, 4, 8, 5, 5)
    lateral = F.relu(_bn(F.conv3d(fast, fuse.conv_f2s.weight, stride=(4, 1, 1), padding=(3, 0, 0)), fuse.bn))
    out = fuse([slow, fast])
    torch.testing.assert_close(out[0], torch.cat([slow, lateral], 1))
    block = _randomise(_ResBlock(6, 8, 3, 2, 4))
    x = torch.randn(1, 6, 4, 9, 9)
    b = block.branch2
    y = F.relu(_bn(F.conv3d(x, b.a.weight, padding=(1, 0, 0)), b.a_bn))
    y = F.relu(_bn(F.conv3d(y, b.b.weight, stride=(1, 2, 2), padding=(0, 1, 1)), b.b_bn))
    y = _bn(F.conv3d(y, b.c.weight), b.c_bn)
    shortcut = _bn(F.conv3d(x, block.branch1.weight, stride=(1, 2, 2)), block.branch1_bn)
    torch.testing.assert_close(block(x), F.relu(shortcut + y))


@torch.no_grad()
def test_pooled_feature_is_the_concatenated_pathway_means_and_loads_strictly(tmp_path):
    model = _randomise(create_model("slowfast_test"))
    torch.save({"model_state": model.state_dict(), "epoch": 196}, tmp_path / "SLOWFAST.pyth")
    loaded = create_model("slowfast_test")
    info = load_checkpoint(loaded, tmp_path / "SLOWFAST.pyth")
    assert info.scheme == "pyslowfast"
    x = torch.randn(1, 3, 8, 64, 64)
    slow_map, fast_map = loaded.forward_features(x)
    assert slow_map.shape[1:3] == (512, 2) and fast_map.shape[1:3] == (64, 8)
    expected = torch.cat([slow_map.mean(dim=(2, 3, 4)), fast_map.mean(dim=(2, 3, 4))], 1)
    torch.testing.assert_close(loaded.extract(x), expected)  # the 2x2 pool covers the whole map here
    torch.testing.assert_close(loaded.extract(x), model.extract(x))
    state = model.state_dict()
    del state["s3_fuse.bn.running_mean"]
    torch.save({"model_state": state}, tmp_path / "bad.pyth")
    with pytest.raises(CheckpointError, match="missing"):
        load_checkpoint(create_model("slowfast_test"), tmp_path / "bad.pyth")


def test_features_cli_runs_slowfast(make_video, tmp_path):
    from clirun import run

    from flowkit.outputs.hdf5 import load_index, read_video

    video = make_video("in/v.mp4", n=16, height=64, width=80)
    result = run("features", video, "-o", tmp_path / "o", "--model", "slowfast_test", "--random-weights")
    assert result.exit_code == 0, result.output
    data = read_video(tmp_path / "o" / load_index(tmp_path / "o")["v"], "v")["datasets"]
    assert data["features"].shape == (2, 576)


def _to_pytorchvideo(key: str) -> str:
    """PySlowFast key -> pytorchvideo slowfast_r50 key, written from pytorchvideo's module names."""
    stage, _, rest = key.partition(".")
    if key.startswith("head.projection."):
        return "blocks.6.proj." + key.rsplit(".", 1)[1]
    if stage == "s1":
        pathway, layer, param = rest.split(".")
        return f"blocks.0.multipathway_blocks.{pathway[7]}.{'conv' if layer == 'conv' else 'norm'}.{param}"
    if stage.endswith("_fuse"):
        layer, param = rest.split(".")
        n = int(stage[1]) - 1
        name = "conv_fast_to_slow" if layer == "conv_f2s" else "norm"
        return f"blocks.{n}.multipathway_fusion.{name}.{param}"
    block, *layer, param = rest.split(".")
    names = {"branch1": "branch1_conv", "branch1_bn": "branch1_norm", "branch2.a": "branch2.conv_a",
             "branch2.a_bn": "branch2.norm_a", "branch2.b": "branch2.conv_b",
             "branch2.b_bn": "branch2.norm_b", "branch2.c": "branch2.conv_c",
             "branch2.c_bn": "branch2.norm_c"}
    pathway, res = block.split("_")
    return (f"blocks.{int(stage[1]) - 1}.multipathway_blocks.{pathway[7]}.res_blocks.{res[3:]}."
            f"{names['.'.join(layer)]}.{param}")


@torch.no_grad()
def test_pytorchvideo_key_names_load(tmp_path):
    model = _randomise(create_model("slowfast_test"))
    state = {_to_pytorchvideo(k): v for k, v in model.state_dict().items()}
    assert "blocks.1.multipathway_blocks.0.res_blocks.0.branch2.conv_a.weight" in state
    torch.save(state, tmp_path / "SLOWFAST_8x8_R50.pyth")
    loaded = create_model("slowfast_test")
    assert load_checkpoint(loaded, tmp_path / "SLOWFAST_8x8_R50.pyth").scheme == "pytorchvideo"
    x = torch.randn(1, 3, 8, 64, 64)
    torch.testing.assert_close(loaded.extract(x), model.extract(x))
