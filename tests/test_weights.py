"""Checkpoint loading: every public key naming loads and gives identical features; clear errors."""

from __future__ import annotations

import math
import re
import shutil
import subprocess

import pytest
import torch

from flowkit.errors import CheckpointError, ConfigError
from flowkit.models import c3d as c3d_module
from flowkit.models import create_model, weights
from flowkit.models import i3d as i3d_module
from flowkit.models.weights import (
    KNOWN_CHECKPOINTS,
    git_blob_sha1,
    load_checkpoint,
    save_checkpoint,
)

# --- state dicts in each public naming, written from the reference tables (not from flowkit) ---

_C3D_SEQUENTIAL = {"conv1": "features.0", "conv2": "features.3", "conv3a": "features.6",
                   "conv3b": "features.8", "conv4a": "features.11", "conv4b": "features.13",
                   "conv5a": "features.16", "conv5b": "features.18", "fc6": "classifier.0",
                   "fc7": "classifier.3", "fc8": "classifier.6"}
_HASSONY2_BRANCH = {"b0": "branch_0", "b1a": "branch_1.0", "b1b": "branch_1.1",
                    "b2a": "branch_2.0", "b2b": "branch_2.1", "b3b": "branch_3.1"}
_TF_BRANCH = {"b0": "Branch_0/Conv3d_0a_1x1", "b1a": "Branch_1/Conv3d_0a_1x1",
              "b1b": "Branch_1/Conv3d_0b_3x3", "b2a": "Branch_2/Conv3d_0a_1x1",
              "b2b": "Branch_2/Conv3d_0b_3x3", "b3b": "Branch_3/Conv3d_0b_1x1"}
_TF_PARAM = {"conv3d.weight": "conv_3d/w", "conv3d.bias": "conv_3d/b",
             "bn.bias": "batch_norm/beta", "bn.running_mean": "batch_norm/moving_mean",
             "bn.running_var": "batch_norm/moving_variance"}


def to_sequential(state: dict) -> dict:
    """DavideA C3D names -> R-C3D / jfzhang95 nn.Sequential names."""
    out = {}
    for key, value in state.items():
        layer, param = key.split(".")
        out[f"{_C3D_SEQUENTIAL[layer]}.{param}"] = value
    return out


def to_hassony2(state: dict) -> dict:
    """piergiaj I3D names -> hassony2 / video_features names (reference §2.3, §2.6)."""
    out = {}
    for key, value in state.items():
        parts = key.split(".")
        if parts[0] == "logits":
            parts[0] = "conv3d_0c_1x1"
        elif parts[0].startswith("Conv3d_"):
            parts[0] = "conv3d_" + parts[0][len("Conv3d_"):]
        else:
            parts[0:2] = ["mixed_" + parts[0][len("Mixed_"):], _HASSONY2_BRANCH[parts[1]]]
        out[".".join(parts).replace(".bn.", ".batch3d.")] = value
    return out


def to_tf(state: dict, prefix: str = "RGB/inception_i3d/") -> dict:
    """piergiaj I3D names -> TF variables: [kT,kH,kW,in,out] kernels, no BN gamma (§2.1, §2.6)."""
    out = {}
    for key, value in state.items():
        parts = key.split(".")
        param = ".".join(parts[-2:])
        if param not in _TF_PARAM:
            assert param in ("bn.weight", "bn.num_batches_tracked"), key
            continue
        if parts[0] == "logits":
            unit = "Logits/Conv3d_0c_1x1"
        elif parts[0].startswith("Mixed_"):
            branch = _TF_BRANCH[parts[1]]
            if parts[0] == "Mixed_5b" and parts[1] == "b2b":
                branch = "Branch_2/Conv3d_0a_3x3"  # the released checkpoint's typo
            unit = f"{parts[0]}/{branch}"
        else:
            unit = parts[0]
        if param == "conv3d.weight":
            value = value.permute(2, 3, 4, 1, 0)
        out[f"{prefix}{unit}/{_TF_PARAM[param]}"] = value
    return out


def randomize_batchnorm(model: torch.nn.Module, unit_gamma: bool = False) -> None:
    """Give every BatchNorm non-trivial statistics so that loading them is actually tested."""
    gen = torch.Generator().manual_seed(1)
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm3d):
            n = module.num_features
            module.running_mean.copy_(torch.randn(n, generator=gen) * 0.1)
            module.running_var.copy_(torch.rand(n, generator=gen) + 0.5)
            module.bias.data.copy_(torch.randn(n, generator=gen) * 0.1)
            module.weight.data.copy_(
                torch.ones(n) if unit_gamma else torch.rand(n, generator=gen) + 0.5)


def _clip(name: str, chans: int = 3) -> torch.Tensor:
    gen = torch.Generator().manual_seed(2)
    frames = 16 if name.startswith("c3d") else 10
    return torch.randn(1, chans, frames, 112, 112, generator=gen)


@pytest.fixture(scope="module")
def tiny_models():
    """Source models with random weights; features are compared against these."""
    torch.manual_seed(0)
    c3d = create_model("c3d_test")
    i3d = create_model("i3d_test")
    randomize_batchnorm(i3d)
    i3d_tf = create_model("i3d_test")
    randomize_batchnorm(i3d_tf, unit_gamma=True)  # TF has no gamma: the source must have 1
    return {"c3d_test": c3d, "i3d_test": i3d, "i3d_tf": i3d_tf}


CASES = [  # (source model, scheme, converter)
    ("c3d_test", "davidea", dict),
    ("c3d_test", "sequential", to_sequential),
    ("i3d_test", "piergiaj", dict),
    ("i3d_test", "hassony2", to_hassony2),
    ("i3d_tf", "tf", to_tf),
]


def _outputs(model: torch.nn.Module, name: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(clip embedding, logits) of the fixed test clip, from one forward pass."""
    maps = model.forward_features(_clip(name))
    return model.forward_head(maps, pre_logits=True), model.forward_head(maps)


@torch.no_grad()
@pytest.mark.parametrize("source,scheme,convert", CASES, ids=[c[1] for c in CASES])
def test_each_public_naming_loads_with_identical_features(tiny_models, tmp_path, source, scheme,
                                                          convert):
    model = tiny_models[source]
    name = "c3d_test" if source.startswith("c3d") else "i3d_test"
    path = tmp_path / "weights.pt"
    torch.save(convert(model.state_dict()), path)
    fresh = create_model(name)
    first = f"{fresh.first_conv}.weight"
    assert not torch.equal(fresh.state_dict()[first], model.state_dict()[first])
    info = load_checkpoint(fresh, path, stream="rgb")
    assert info.scheme == scheme and info.stream == "rgb" and info.known_name is None
    for got, want in zip(_outputs(fresh, name), _outputs(model, name), strict=True):
        assert torch.equal(got, want)


@torch.no_grad()
def test_tf_variants_bn_as_5d_momentum_slots_and_flow_prefix(tmp_path):
    torch.manual_seed(3)
    model = create_model("i3d_test", stream="flow")
    randomize_batchnorm(model, unit_gamma=True)
    state = to_tf(model.state_dict(), prefix="Flow/inception_i3d/")
    for key in [k for k in state if "batch_norm" in k]:
        state[key] = state[key].reshape(1, 1, 1, 1, -1)  # rgb_scratch_kin600 layout
    state["Flow/inception_i3d/Conv3d_1a_7x7/conv_3d/w/Momentum"] = torch.zeros(1)
    torch.save(state, tmp_path / "flow.pt")
    fresh = create_model("i3d_test", stream="flow")
    info = load_checkpoint(fresh, tmp_path / "flow.pt")
    assert info.scheme == "tf" and info.stream == "flow"
    x = _clip("i3d_test", chans=2)
    assert torch.equal(fresh.extract(x), model.extract(x))


@torch.no_grad()
def test_flowkit_format_legacy_pickle_and_wrappers_load(tiny_models, tmp_path):
    model = tiny_models["i3d_test"]
    expected = model.extract(_clip("i3d_test"))
    save_checkpoint(model, tmp_path / "own.pt", "i3d_test")
    state = model.state_dict()
    # Old torch.save files (2017 c3d.pickle, piergiaj) are not zip archives.
    torch.save(state, tmp_path / "legacy.pt", _use_new_zipfile_serialization=False)
    torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}, "epoch": 3},
               tmp_path / "wrapped.pt")
    for name, scheme in (("own.pt", "flowkit"), ("legacy.pt", "piergiaj"),
                         ("wrapped.pt", "piergiaj")):
        fresh = create_model("i3d_test")
        assert load_checkpoint(fresh, tmp_path / name).scheme == scheme
        assert torch.equal(fresh.extract(_clip("i3d_test")), expected)


@torch.no_grad()
def test_missing_num_batches_tracked_is_tolerated(tiny_models, tmp_path):
    model = tiny_models["i3d_test"]
    state = {k: v for k, v in to_hassony2(model.state_dict()).items()
             if not k.endswith("num_batches_tracked")}
    torch.save(state, tmp_path / "old.pth")
    fresh = create_model("i3d_test")
    load_checkpoint(fresh, tmp_path / "old.pth")
    assert torch.equal(fresh.extract(_clip("i3d_test")), model.extract(_clip("i3d_test")))


@torch.no_grad()
def test_other_class_count_resizes_head_or_is_dropped(tiny_models, tmp_path):
    source = create_model("i3d_test", num_classes=157)  # a Charades fine-tune
    torch.save(source.state_dict(), tmp_path / "charades.pt")
    model = create_model("i3d_test")  # 400 classes by default
    info = load_checkpoint(model, tmp_path / "charades.pt")
    assert info.num_classes == 157 and model.num_classes == 157
    assert torch.equal(model(_clip("i3d_test")), source(_clip("i3d_test")))
    headless = create_model("i3d_test")
    info = load_checkpoint(headless, tmp_path / "charades.pt", drop_head=True)
    assert headless.logits is None and "removed" in info.notes[0]
    assert torch.equal(headless.extract(_clip("i3d_test")), source.extract(_clip("i3d_test")))


def test_missing_file_is_a_checkpoint_error(tmp_path):
    with pytest.raises(CheckpointError, match="file not found"):
        load_checkpoint(create_model("c3d_test"), tmp_path / "nope.pt")


@pytest.mark.parametrize("legacy", [False, True])
def test_truncated_file_is_a_checkpoint_error(tiny_models, tmp_path, legacy):
    path = tmp_path / "c3d.pickle"
    torch.save(tiny_models["c3d_test"].state_dict(), path,
               _use_new_zipfile_serialization=not legacy)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated or corrupt") as err:
        load_checkpoint(create_model("c3d_test"), path)
    assert err.value.path == str(path)


def test_garbage_and_non_state_dict_files_are_checkpoint_errors(tmp_path):
    (tmp_path / "junk.pt").write_bytes(b"\x00not a checkpoint" * 10)
    with pytest.raises(CheckpointError, match="not a readable"):
        load_checkpoint(create_model("c3d_test"), tmp_path / "junk.pt")
    torch.save([torch.zeros(2)], tmp_path / "list.pt")
    with pytest.raises(CheckpointError, match="not a state dict"):
        load_checkpoint(create_model("c3d_test"), tmp_path / "list.pt")


def test_wrong_stream_is_a_checkpoint_error(tiny_models, tmp_path):
    torch.save(tiny_models["i3d_test"].state_dict(), tmp_path / "rgb.pt")
    flow_model = create_model("i3d_test", stream="flow")
    with pytest.raises(CheckpointError, match=r"wrong stream.*rgb weights \(3 input.*flow"):
        load_checkpoint(flow_model, tmp_path / "rgb.pt")
    with pytest.raises(ConfigError, match="flow stream needs 2"):
        load_checkpoint(create_model("i3d_test"), tmp_path / "rgb.pt", stream="flow")


def test_unknown_layout_lists_keys_and_guesses_the_model(tiny_models, tmp_path):
    torch.save({"backbone.conv.weight": torch.zeros(1)}, tmp_path / "x.pt")
    with pytest.raises(CheckpointError, match=r"unknown key layout.*backbone\.conv\.weight"):
        load_checkpoint(create_model("i3d_test"), tmp_path / "x.pt")
    torch.save(tiny_models["c3d_test"].state_dict(), tmp_path / "c3d.pt")
    with pytest.raises(CheckpointError, match="looks like a C3D checkpoint"):
        load_checkpoint(create_model("i3d_test"), tmp_path / "c3d.pt")


def test_missing_and_misshaped_keys_are_named(tiny_models, tmp_path):
    state = dict(tiny_models["i3d_test"].state_dict())
    del state["Mixed_4c.b1b.bn.running_var"]
    torch.save(state, tmp_path / "partial.pt")
    with pytest.raises(CheckpointError, match=r"missing \['Mixed_4c\.b1b\.bn\.running_var'\]"):
        load_checkpoint(create_model("i3d_test"), tmp_path / "partial.pt")
    big = create_model("c3d_test", width_div=8)  # right names, wrong widths
    torch.save(big.state_dict(), tmp_path / "big.pt")
    with pytest.raises(CheckpointError, match="shape mismatch"):
        load_checkpoint(create_model("c3d_test"), tmp_path / "big.pt")


# --- full-size state dicts against the reference tables (meta tensors: no memory) ---

_C3D_TABLE = {
    "conv1": (64, 3), "conv2": (128, 64), "conv3a": (256, 128), "conv3b": (256, 256),
    "conv4a": (512, 256), "conv4b": (512, 512), "conv5a": (512, 512), "conv5b": (512, 512),
}
_I3D_MIXED = {  # block: (in, [b0, b1a, b1b, b2a, b2b, b3b])
    "Mixed_3b": (192, [64, 96, 128, 16, 32, 32]), "Mixed_3c": (256, [128, 128, 192, 32, 96, 64]),
    "Mixed_4b": (480, [192, 96, 208, 16, 48, 64]), "Mixed_4c": (512, [160, 112, 224, 24, 64, 64]),
    "Mixed_4d": (512, [128, 128, 256, 24, 64, 64]), "Mixed_4e": (512, [112, 144, 288, 32, 64, 64]),
    "Mixed_4f": (528, [256, 160, 320, 32, 128, 128]),
    "Mixed_5b": (832, [256, 160, 320, 32, 128, 128]),
    "Mixed_5c": (832, [384, 192, 384, 48, 128, 128]),
}


def expected_i3d_shapes(in_chans: int = 3, classes: int = 400) -> dict[str, tuple]:
    """piergiaj's key -> shape table, written out from reference §2.2."""
    units = {"Conv3d_1a_7x7": (64, in_chans, 7), "Conv3d_2b_1x1": (64, 64, 1),
             "Conv3d_2c_3x3": (192, 64, 3)}
    for block, (cin, w) in _I3D_MIXED.items():
        units.update({f"{block}.b0": (w[0], cin, 1), f"{block}.b1a": (w[1], cin, 1),
                      f"{block}.b1b": (w[2], w[1], 3), f"{block}.b2a": (w[3], cin, 1),
                      f"{block}.b2b": (w[4], w[3], 3), f"{block}.b3b": (w[5], cin, 1)})
    shapes: dict[str, tuple] = {}
    for unit, (cout, cin, k) in units.items():
        shapes[f"{unit}.conv3d.weight"] = (cout, cin, k, k, k)
        for param in ("weight", "bias", "running_mean", "running_var"):
            shapes[f"{unit}.bn.{param}"] = (cout,)
        shapes[f"{unit}.bn.num_batches_tracked"] = ()
    shapes["logits.conv3d.weight"] = (classes, 1024, 1, 1, 1)
    shapes["logits.conv3d.bias"] = (classes,)
    return shapes


def _shapes(model) -> dict[str, tuple]:
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def test_full_c3d_state_dict_matches_davidea_table():
    with torch.device("meta"):
        model = create_model("c3d")
    expected = {}
    for name, (cout, cin) in _C3D_TABLE.items():
        expected[f"{name}.weight"], expected[f"{name}.bias"] = (cout, cin, 3, 3, 3), (cout,)
    expected.update({"fc6.weight": (4096, 8192), "fc6.bias": (4096,), "fc7.weight": (4096, 4096),
                     "fc7.bias": (4096,), "fc8.weight": (487, 4096), "fc8.bias": (487,)})
    assert _shapes(model) == expected
    assert sum(math.prod(s) for s in expected.values()) == 79_991_015


@pytest.mark.parametrize("stream,chans", [("rgb", 3), ("flow", 2)])
def test_full_i3d_state_dict_matches_piergiaj_table(stream, chans):
    with torch.device("meta"):
        model = create_model("i3d", stream=stream)
    expected = expected_i3d_shapes(chans)
    assert _shapes(model) == expected
    assert len(expected) == 344
    numbers = sum(math.prod(s) for k, s in expected.items() if "num_batches" not in k)
    assert numbers == (12_711_824 if stream == "rgb" else 12_689_872)


# --- full-size key maps: every key of each naming maps to ours with an equal shape ---

@pytest.mark.parametrize("stream", ["rgb", "flow"])
@pytest.mark.parametrize("convert,scheme", [(dict, "piergiaj"), (to_hassony2, "hassony2"),
                                            (to_tf, "tf")])
def test_full_i3d_key_maps(stream, convert, scheme):
    with torch.device("meta"):
        model = create_model("i3d", stream=stream)
        public = convert(model.state_dict())
        mapped = i3d_module.checkpoint_filter_fn(public, model)
    assert i3d_module.key_scheme(public) == scheme
    if scheme == "tf":
        assert len(public) == 230  # the TF checkpoint's variable count
        mapped.update({k: v for k, v in model.state_dict().items() if "num_batches" in k})
    assert len(public) == {"piergiaj": 344, "hassony2": 344, "tf": 230}[scheme]
    expected = expected_i3d_shapes(3 if stream == "rgb" else 2)
    assert {k: tuple(v.shape) for k, v in mapped.items()} == expected


@pytest.mark.parametrize("convert,scheme", [(dict, "davidea"), (to_sequential, "sequential")])
def test_full_c3d_key_maps(convert, scheme):
    with torch.device("meta"):
        model = create_model("c3d")
        public = convert(model.state_dict())
        mapped = c3d_module.checkpoint_filter_fn(public, model)
    assert c3d_module.key_scheme(public) == scheme
    assert {k: v.shape for k, v in mapped.items()} == {
        k: v.shape for k, v in model.state_dict().items()}


# --- checkpoint identification by git blob hash ---

@pytest.mark.skipif(shutil.which("git") is None, reason="needs git")
@pytest.mark.parametrize("size", [0, 6, 1_280_000])  # the last spans several read chunks
def test_git_blob_sha1_matches_git_hash_object(tmp_path, size):
    path = tmp_path / "blob.bin"
    path.write_bytes(bytes(range(256)) * (size // 256) + b"hello\n"[: size % 256])
    expected = subprocess.run(["git", "hash-object", str(path)], capture_output=True, text=True,
                              check=True).stdout.strip()
    assert git_blob_sha1(path) == expected


def test_known_checkpoint_table_is_well_formed():
    assert len(KNOWN_CHECKPOINTS) == 6
    assert all(re.fullmatch(r"[0-9a-f]{40}", k) for k in KNOWN_CHECKPOINTS)
    assert KNOWN_CHECKPOINTS["73a4fd1d87eb3dbd97f33a9779fa1caa3d28111a"] == (
        "piergiaj/rgb_imagenet.pt")


@pytest.mark.skipif(shutil.which("git") is None, reason="needs git")
def test_known_hash_is_reported(tiny_models, tmp_path, monkeypatch):
    path = tmp_path / "rgb_imagenet.pt"
    torch.save(tiny_models["i3d_test"].state_dict(), path)
    sha1 = subprocess.run(["git", "hash-object", str(path)], capture_output=True, text=True,
                          check=True).stdout.strip()
    monkeypatch.setitem(weights.KNOWN_CHECKPOINTS, sha1, "test/rgb_imagenet.pt")
    info = load_checkpoint(create_model("i3d_test"), path)
    assert info.sha1 == sha1 and info.known_name == "test/rgb_imagenet.pt"
