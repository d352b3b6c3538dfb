"""I3D ResNet-50 (own port of Tushar-N/pytorch-resnet3d I3Res50): the released checkpoint's key names
and shapes, a golden bottleneck from its math, the pooled feature, strict loading, a features run."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from clirun import run

from flowkit.errors import CheckpointError
from flowkit.models import create_model
from flowkit.models.weights import load_checkpoint
from flowkit.outputs.hdf5 import load_index, read_video

# I3Res50 / i3d_r50_kinetics.pth shapes: 3x1x1 bottleneck conv1 where temp_conv is 1.
PUBLISHED = {
    "conv1.weight": (64, 3, 5, 7, 7),
    "layer1.0.conv1.weight": (64, 64, 3, 1, 1),
    "layer1.0.downsample.0.weight": (256, 64, 1, 1, 1),
    "layer2.0.conv1.weight": (128, 256, 3, 1, 1),
    "layer2.1.conv1.weight": (128, 512, 1, 1, 1),
    "layer3.4.conv1.weight": (256, 1024, 3, 1, 1),
    "layer4.0.conv1.weight": (512, 1024, 1, 1, 1),
    "layer4.1.conv1.weight": (512, 2048, 3, 1, 1),
    "layer4.2.bn3.running_var": (2048,),
    "fc.weight": (400, 2048),
}


def test_full_model_has_the_released_keys():
    with torch.device("meta"):
        model = create_model("i3d_r50")
        state = model.state_dict()
        x = torch.empty(1, 3, 32, 224, 224)
        assert model.forward_features(x).shape == (1, 2048, 4, 7, 7)
        assert model.extract(x).shape == (1, 2048)
    for key, shape in PUBLISHED.items():
        assert tuple(state[key].shape) == shape, key
    assert len([k for k in state if not k.endswith("num_batches_tracked")]) == 267


def _randomise(model: torch.nn.Module) -> torch.nn.Module:
    torch.manual_seed(0)
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            if name.endswith("running_var"):
                tensor.uniform_(0.5, 1.5)
            elif tensor.is_floating_point():
                tensor.normal_(0, 0.1)
    return model.eval()


@torch.no_grad()
def test_bottleneck_and_pool_equal_their_math(tmp_path):
    model = _randomise(create_model("i3d_r50_test"))
    block = model.layer2[0]

    def bn(x, m):
        return F.batch_norm(x, m.running_mean, m.running_var, m.weight, m.bias, eps=1e-5)

    x = torch.randn(1, 32, 4, 8, 8)
    y = F.relu(bn(F.conv3d(x, block.conv1.weight, padding=(1, 0, 0)), block.bn1))
    y = F.relu(bn(F.conv3d(y, block.conv2.weight, stride=(1, 2, 2), padding=(0, 1, 1)), block.bn2))
    y = bn(F.conv3d(y, block.conv3.weight), block.bn3)
    shortcut = bn(F.conv3d(x, block.downsample[0].weight, stride=(1, 2, 2)), block.downsample[1])
    torch.testing.assert_close(block(x), F.relu(y + shortcut))
    clip = torch.randn(2, 3, 8, 64, 64)
    torch.testing.assert_close(model.extract(clip), model.forward_features(clip).mean(dim=(2, 3, 4)))
    torch.save(model.state_dict(), tmp_path / "i3d_r50_kinetics.pth")
    loaded = create_model("i3d_r50_test")
    assert load_checkpoint(loaded, tmp_path / "i3d_r50_kinetics.pth").scheme == "resnet3d"
    torch.testing.assert_close(loaded.extract(clip, "logits"), model.extract(clip, "logits"))
    state = model.state_dict()
    state["layer3.0.conv1.weight"] = state["layer3.0.conv1.weight"][:, :, :1]
    torch.save(state, tmp_path / "bad.pth")
    with pytest.raises(CheckpointError, match="shape mismatch"):
        load_checkpoint(create_model("i3d_r50_test"), tmp_path / "bad.pth")


def test_features_ten_crops_with_i3d_r50(make_video, tmp_path):
    video = make_video("in/v.mp4", n=8, height=64, width=80)
    result = run("features", video, "-o", tmp_path / "o", "--model", "i3d_r50_test", "--random-weights",
                 "--clip-len", "8", "--crops", "10")
    assert result.exit_code == 0, result.output
    data = read_video(tmp_path / "o" / load_index(tmp_path / "o")["v"], "v")["datasets"]
    assert data["features"].shape == (1, 10, 256)  # [clips, crops, D], the anomaly-feature layout


@torch.no_grad()
def test_non_local_block_keys_and_math():
    with torch.device("meta"):
        state = create_model("i3d_r50_nl").state_dict()
    nl = sorted({k.rsplit(".nl.", 1)[0] for k in state if ".nl." in k})
    assert nl == ["layer2.1", "layer2.3", "layer3.1", "layer3.3", "layer3.5"]
    assert tuple(state["layer3.1.nl.theta.weight"].shape) == (512, 1024, 1, 1, 1)
    assert tuple(state["layer2.3.nl.out.weight"].shape) == (512, 256, 1, 1, 1)
    block = _randomise(create_model("i3d_r50_test", non_local=True)).layer2[1].nl
    x = torch.randn(1, 64, 2, 4, 4)
    pooled = F.max_pool3d(x, (1, 2, 2))
    assert block.dim_inner == 32  # half of the 64 block channels
    theta = F.conv3d(x, block.theta.weight, block.theta.bias).flatten(2)  # (1, 32, 32 positions)
    phi = F.conv3d(pooled, block.phi.weight, block.phi.bias).flatten(2)  # (1, 32, 8 positions)
    g = F.conv3d(pooled, block.g.weight, block.g.bias).flatten(2)
    weights = torch.softmax(theta.transpose(1, 2) @ phi / 32 ** 0.5, dim=-1)
    t = (g @ weights.transpose(1, 2)).reshape(1, 32, 2, 4, 4)
    out = F.conv3d(t, block.out.weight, block.out.bias)
    out = F.batch_norm(out, block.bn.running_mean, block.bn.running_var, block.bn.weight, block.bn.bias,
                       eps=1e-5)
    torch.testing.assert_close(block(x), out + x)
