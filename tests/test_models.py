"""C3D/I3D networks: registry, feature shapes, Caffe pool5, TF SAME padding and time steps."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from flowkit.errors import ConfigError
from flowkit.models import create_model, get_model_spec, list_models
from flowkit.models.c3d import C3D
from flowkit.models.i3d import I3D, MaxPool3dSame, Unit3D, same_padding


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def test_registry_lists_models_and_rejects_unknown():
    assert {"c3d", "i3d", "c3d_test", "i3d_test"} <= set(list_models(include_test=True))
    assert {"c3d", "i3d"} <= set(list_models()) and not {"c3d_test", "i3d_test"} & set(list_models())
    with pytest.raises(ConfigError, match="unknown model"):
        get_model_spec("resnet")
    with pytest.raises(ConfigError, match="no 'flow' stream"):
        create_model("c3d_test", stream="flow")


@pytest.mark.parametrize("name", ["c3d", "c3d_test", "i3d", "i3d_test"])
def test_spec_matches_built_model(name):
    spec = get_model_spec(name)
    with torch.device("meta"):  # full-size models: shapes only, no memory
        model = create_model(name)
    assert not model.training
    assert isinstance(model, spec.model_cls)
    assert dict(model.feature_dims) == dict(spec.layers)
    assert model.num_features == spec.feature_dim
    assert model.default_layer == spec.default_layer and model.map_layer == spec.map_layer
    assert model.min_clip_len == spec.min_clip_len
    assert spec.clip_len >= spec.min_clip_len


def test_default_clip_lengths():
    assert get_model_spec("c3d").clip_len == 16
    assert get_model_spec("i3d").clip_len == 64
    assert get_model_spec("i3d").min_clip_len == 9
    assert get_model_spec("i3d").streams == ("rgb", "flow")


@torch.no_grad()
def test_c3d_test_feature_shapes():
    spec = get_model_spec("c3d_test")
    model = create_model("c3d_test")
    x = torch.randn(2, 3, 16, 112, 112)
    pool5 = model.forward_features(x)
    assert pool5.shape == (2, 32, 1, 4, 4)
    for layer, dim in spec.layers.items():
        assert model.extract(x, layer).shape == (2, dim)
    assert model.extract_map(x).shape == (2, *spec.map_shape)
    assert torch.equal(model.extract(x, "pool5"), pool5.flatten(1))
    assert torch.equal(model.forward_head(pool5, pre_logits=True), model.extract(x, "fc6"))
    assert model(x).shape == (2, 487)
    assert (model.extract(x, "fc6") >= 0).all()  # read after ReLU, like Caffe's fc6-1


@torch.no_grad()
def test_c3d_rejects_other_clip_sizes_and_layers():
    model = create_model("c3d_test")
    with pytest.raises(ValueError, match="16, 112, 112"):
        model.extract(torch.randn(1, 3, 8, 112, 112))
    with pytest.raises(ValueError, match="unknown C3D layer"):
        model.extract(torch.randn(1, 3, 16, 112, 112), "fc8")


@torch.no_grad()
@pytest.mark.parametrize("stream,chans", [("rgb", 3), ("flow", 2)])
def test_i3d_test_feature_shapes(stream, chans):
    spec = get_model_spec("i3d_test")
    model = create_model("i3d_test", stream=stream)
    x = torch.randn(2, chans, 9, 112, 112)
    assert model.forward_features(x).shape == (2, 64, 2, 4, 4)
    for layer, dim in spec.layers.items():
        assert model.extract(x, layer).shape == (2, dim)
    assert model.extract_map(x).shape == (2, *spec.map_shape)
    assert torch.equal(model.extract(x, "mixed_5c"), model.extract_map(x).flatten(1))


@torch.no_grad()
def test_i3d_avgpool_is_mean_of_avg_pool_over_time():
    model = create_model("i3d_test")
    x = torch.randn(1, 3, 24, 112, 112)
    mixed = model.forward_features(x)
    expected = F.avg_pool3d(mixed, (2, 4, 4), stride=1).mean(dim=(2, 3, 4))
    torch.testing.assert_close(model.extract(x), expected)


@torch.no_grad()
@pytest.mark.parametrize("frames", [9, 16, 17, 24, 64])
def test_i3d_time_steps_are_ceil_t_over_8_minus_1(frames):
    model = I3D(width_div=32, pool_size=(2, 1, 1)).eval()  # 32px input: Mixed_5c is 1x1
    pooled = model.avg_pool(model.forward_features(torch.randn(1, 3, frames, 32, 32)))
    assert pooled.shape[2] == math.ceil(frames / 8) - 1 == model.time_steps(frames)


@torch.no_grad()
@pytest.mark.parametrize("compat,minimum", [("tf", 9), ("video_features", 10)])
def test_i3d_minimum_clip_length(compat, minimum):
    model = I3D(width_div=32, pool_size=(2, 1, 1), compat=compat).eval()
    assert model.min_clip_len == minimum
    assert model.extract(torch.randn(1, 3, minimum, 32, 32)).shape == (1, 32)
    with pytest.raises(ValueError, match=f"at least {minimum} frames"):
        model.extract(torch.randn(1, 3, minimum - 1, 32, 32))


@torch.no_grad()
@pytest.mark.parametrize("frames", [10, 11, 16, 19, 24, 33])
def test_i3d_time_steps_formula_matches_forward_in_both_modes(frames):
    for compat in ("tf", "video_features"):
        model = I3D(width_div=32, pool_size=(2, 1, 1), compat=compat).eval()
        pooled = model.avg_pool(model.forward_features(torch.randn(1, 3, frames, 32, 32)))
        assert pooled.shape[2] == model.time_steps(frames), compat


def test_i3d_compat_batchnorm_eps():
    assert I3D(width_div=32).Conv3d_1a_7x7.bn.eps == 1e-3
    assert I3D(width_div=32, compat="video_features").Mixed_5c.b0.bn.eps == 1e-5
    with pytest.raises(ValueError, match="compat"):
        I3D(compat="keras")


def _caffe_max_pool_hw(x: torch.Tensor, windows: list[list[int]]) -> torch.Tensor:
    """Max over explicit (time pair, row window, col window) triples, as Caffe's pool3d loop."""
    out = torch.empty(x.shape[0], x.shape[1], 1, len(windows), len(windows))
    for i, rows in enumerate(windows):
        for j, cols in enumerate(windows):
            out[:, :, 0, i, j] = x[:, :, 0:2][:, :, :, rows][:, :, :, :, cols].amax(dim=(2, 3, 4))
    return out


def test_c3d_caffe_pool5_uses_truncated_windows():
    x = torch.randn(2, 5, 2, 7, 7)
    pool5 = C3D(width_div=64, mode="caffe").pool5
    expected = _caffe_max_pool_hw(x, [[0, 1], [2, 3], [4, 5], [6]])
    assert torch.equal(pool5(x), expected)


def test_c3d_davidea_pool5_pads_one_on_each_side():
    x = torch.randn(2, 5, 2, 7, 7)
    pool5 = C3D(width_div=64, mode="davidea").pool5
    # padding (0, 1, 1) shifts the windows: [-1, 0] is only row 0, [1, 2], [3, 4], [5, 6].
    expected = _caffe_max_pool_hw(x, [[0], [1, 2], [3, 4], [5, 6]])
    assert torch.equal(pool5(x), expected)
    assert not torch.equal(pool5(x), C3D(width_div=64, mode="caffe").pool5(x))


def _tf_same(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TF's documented SAME rule: out = ceil(n/s), pad = max((out-1)*s + k - n, 0), front pad//2."""
    out = math.ceil(size / stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


@pytest.mark.parametrize("kernel,stride", [(7, 2), (3, 2), (3, 1), (2, 2), (1, 1), (1, 2)])
def test_same_padding_matches_tf_rule(kernel, stride):
    for size in range(1, 40):
        assert same_padding(size, kernel, stride) == _tf_same(size, kernel, stride)


@pytest.mark.parametrize("size", [(9, 13, 16), (8, 16, 16), (5, 7, 10)])
def test_unit3d_same_conv_equals_explicit_padding(size):
    unit = Unit3D(2, 3, (7, 7, 7), (2, 2, 2)).eval()
    x = torch.randn(1, 2, *size)
    pads = [p for n in reversed(size) for p in _tf_same(n, 7, 2)]
    conv = F.conv3d(F.pad(x, pads), unit.conv3d.weight, stride=2)
    expected = F.relu(unit.bn(conv))
    out = unit(x)
    assert out.shape[2:] == tuple(math.ceil(n / 2) for n in size)
    torch.testing.assert_close(out, expected)


def test_maxpool_same_equals_explicit_padding():
    x = torch.rand(1, 2, 7, 9, 10)  # >= 0, as after ReLU, so zero padding equals -inf padding
    pool = MaxPool3dSame((3, 3, 3), (2, 2, 2))
    pads = [p for n in reversed(x.shape[2:]) for p in _tf_same(n, 3, 2)]
    expected = F.max_pool3d(F.pad(x, pads, value=-math.inf), 3, 2)
    assert torch.equal(pool(x), expected)


def test_static_padding_differs_only_for_non_divisible_sizes():
    dynamic = Unit3D(2, 3, (7, 7, 7), (2, 2, 2)).eval()
    static = Unit3D(2, 3, (7, 7, 7), (2, 2, 2), dynamic_pad=False).eval()
    static.load_state_dict(dynamic.state_dict())
    even = torch.randn(1, 2, 8, 16, 16)
    torch.testing.assert_close(static(even), dynamic(even))
    odd = torch.randn(1, 2, 9, 16, 16)
    assert static(odd).shape[2] == 4 and dynamic(odd).shape[2] == 5


def test_reset_classifier_changes_logits():
    model = create_model("i3d_test", num_classes=10)
    model.reset_classifier(157)
    assert model.extract(torch.randn(1, 3, 9, 112, 112), "logits").shape == (1, 157)
    model.reset_classifier(0)
    assert model.logits is None
    with pytest.raises(ValueError, match="no logits"):
        model.extract(torch.randn(1, 3, 9, 112, 112), "logits")
    c3d = create_model("c3d_test")
    c3d.reset_classifier(0)
    assert c3d(torch.randn(1, 3, 16, 112, 112)).shape == (1, 256)  # fc7 without a head
