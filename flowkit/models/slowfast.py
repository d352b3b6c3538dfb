"""SlowFast R50 (Feichtenhofer et al., ICCV 2019), Kinetics-400 8x8 recipe, in PySlowFast's key names.

No installed library defines it, so this follows facebookresearch/SlowFast
(``slowfast/models/video_model_builder.py`` ``SlowFast``, ``resnet_helper.py``, ``stem_helper.py``,
``head_helper.py``) module for module, so that PySlowFast checkpoints (``SLOWFAST_8x8_R50.pyth``,
``{"model_state": ...}``) and pytorchvideo's ``slowfast_r50`` state dict (``blocks.N.multipathway_*``,
renamed) load strictly: ``s1.pathway{0,1}_stem.{conv,bn}``, ``s{1..4}_fuse.{conv_f2s,bn}``,
``s{2..5}.pathway{p}_res{i}.{branch1,branch1_bn,branch2.{a,a_bn,b,b_bn,c,c_bn}}``, ``head.projection``.

Recipe (``SLOWFAST_8x8_R50.yaml``): alpha 4, beta_inv 8, fusion channel ratio 2, fusion kernel 7,
temporal kernels slow [1, 1, 1, 3, 3] / fast [5, 3, 3, 3, 3], blocks (3, 4, 6, 3), BN eps 1e-5. The
fast pathway reads 32 frames (64 raw frames at stride 2), the slow one every 4th of them (PySlowFast's
``PackPathway``: ``linspace(0, T - 1, T // alpha)``). Default layer ``pooled``: the head's per-pathway
average pools concatenated, slow first (2048 + 256 = 2304), averaged over any positions left (inputs
above 224 px, PySlowFast's fully-convolutional testing). Preprocessing: mean/std 0.45/0.225, short
side 256, centre crop 224.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["SlowFast", "pack_pathways"]

_DEPTHS = (3, 4, 6, 3)
_TEMPORAL = {"slow": (1, 1, 1, 3, 3), "fast": (5, 3, 3, 3, 3)}
_NUM_BLOCK_TEMP_KERNEL = (3, 4, 6, 3)
_SPATIAL_STRIDES = (1, 2, 2, 2)


def pack_pathways(frames: torch.Tensor, alpha: int = 4) -> list[torch.Tensor]:
    """(B, C, T, H, W) fast frames -> [slow (every alpha-th by linspace), fast], as PySlowFast."""
    t = frames.shape[2]
    index = torch.linspace(0, t - 1, t // alpha).long().to(frames.device)
    return [frames.index_select(2, index), frames]


def _bn(channels: int) -> nn.BatchNorm3d:
    return nn.BatchNorm3d(channels, eps=1e-5, momentum=0.1)


class _Stem(nn.Module):
    """ResNetBasicStem: conv, bn, relu, max pool [1, 3, 3] stride [1, 2, 2]."""

    def __init__(self, dim_in: int, dim_out: int, temporal: int) -> None:
        super().__init__()
        self.conv = nn.Conv3d(dim_in, dim_out, [temporal, 7, 7], stride=[1, 2, 2],
                              padding=[temporal // 2, 3, 3], bias=False)
        self.bn = _bn(dim_out)
        self.pool_layer = nn.MaxPool3d([1, 3, 3], stride=[1, 2, 2], padding=[0, 1, 1])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool_layer(F.relu(self.bn(self.conv(x))))


class _Fuse(nn.Module):
    """FuseFastToSlow: conv [k, 1, 1] with time stride alpha on fast, bn, relu, concatenated to slow."""

    def __init__(self, dim_in: int, ratio: int, kernel: int, alpha: int) -> None:
        super().__init__()
        self.conv_f2s = nn.Conv3d(dim_in, dim_in * ratio, [kernel, 1, 1], stride=[alpha, 1, 1],
                                  padding=[kernel // 2, 0, 0], bias=False)
        self.bn = _bn(dim_in * ratio)

    def forward(self, x: list[torch.Tensor]) -> list[torch.Tensor]:
        fuse = F.relu(self.bn(self.conv_f2s(x[1])))
        return [torch.cat([x[0], fuse], 1), x[1]]


class _Bottleneck(nn.Module):
    """BottleneckTransform: Tx1x1 (a), 1x3x3 with the stride (b), 1x1x1 (c), each with BN."""

    def __init__(self, dim_in: int, dim_out: int, temporal: int, stride: int, dim_inner: int) -> None:
        super().__init__()
        self.a = nn.Conv3d(dim_in, dim_inner, [temporal, 1, 1], padding=[temporal // 2, 0, 0], bias=False)
        self.a_bn = _bn(dim_inner)
        self.b = nn.Conv3d(dim_inner, dim_inner, [1, 3, 3], stride=[1, stride, stride], padding=[0, 1, 1],
                           bias=False)
        self.b_bn = _bn(dim_inner)
        self.c = nn.Conv3d(dim_inner, dim_out, 1, bias=False)
        self.c_bn = _bn(dim_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.a_bn(self.a(x)))
        x = F.relu(self.b_bn(self.b(x)))
        return self.c_bn(self.c(x))


class _ResBlock(nn.Module):
    """ResBlock: projection shortcut (branch1) when the shape changes, bottleneck (branch2), relu."""

    def __init__(self, dim_in: int, dim_out: int, temporal: int, stride: int, dim_inner: int) -> None:
        super().__init__()
        if dim_in != dim_out or stride != 1:
            self.branch1 = nn.Conv3d(dim_in, dim_out, 1, stride=[1, stride, stride], bias=False)
            self.branch1_bn = _bn(dim_out)
        self.branch2 = _Bottleneck(dim_in, dim_out, temporal, stride, dim_inner)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = self.branch1_bn(self.branch1(x)) if hasattr(self, "branch1") else x
        return F.relu(shortcut + self.branch2(x))


class _Stage(nn.Module):
    """ResStage over both pathways: blocks ``pathway{p}_res{i}``."""

    def __init__(self, dims_in: Sequence[int], dims_out: Sequence[int], dims_inner: Sequence[int],
                 temporals: Sequence[int], stride: int, blocks: int, temp_blocks: int) -> None:
        super().__init__()
        self.blocks = blocks
        for p, (cin, cout, inner, temporal) in enumerate(zip(dims_in, dims_out, dims_inner, temporals,
                                                             strict=True)):
            kernels = ([temporal] * blocks)[:temp_blocks] + [1] * (blocks - temp_blocks)
            for i in range(blocks):
                block = _ResBlock(cin if i == 0 else cout, cout, kernels[i], stride if i == 0 else 1, inner)
                self.add_module(f"pathway{p}_res{i}", block)

    def forward(self, x: list[torch.Tensor]) -> list[torch.Tensor]:
        out = []
        for p, y in enumerate(x):
            for i in range(self.blocks):
                y = getattr(self, f"pathway{p}_res{i}")(y)
            out.append(y)
        return out


class _Head(nn.Module):
    """ResNetBasicHead: per-pathway AvgPool3d (stride 1), concatenated, dropout, projection."""

    def __init__(self, dims: Sequence[int], num_classes: int, pool_sizes: Sequence[Sequence[int]]) -> None:
        super().__init__()
        for p, size in enumerate(pool_sizes):
            self.add_module(f"pathway{p}_avgpool", nn.AvgPool3d(list(size), stride=1))
        self.dropout = nn.Dropout(0.5)
        self.projection = nn.Linear(sum(dims), num_classes) if num_classes else None


class SlowFast(nn.Module):
    """SlowFast R50 8x8; input one (B, 3, 32, H, W) fast clip (the slow pathway is taken from it)."""

    in_chans = 3
    first_conv = "s1.pathway0_stem.conv"
    classifier = "head.projection"
    default_layer = "pooled"
    map_layer = "s5"

    def __init__(self, num_classes: int = 400, width: int = 64, alpha: int = 4, beta_inv: int = 8,
                 fusion_ratio: int = 2, fusion_kernel: int = 7, num_frames: int = 32,
                 crop: int = 224) -> None:
        super().__init__()
        self.alpha, self.num_classes = alpha, num_classes
        slow, fast = _TEMPORAL["slow"], _TEMPORAL["fast"]
        fw = width // beta_inv  # fast pathway width
        extra = width // (beta_inv // fusion_ratio)  # channels the fuse adds to slow
        self.s1 = nn.Module()
        self.s1.add_module("pathway0_stem", _Stem(3, width, slow[0]))
        self.s1.add_module("pathway1_stem", _Stem(3, fw, fast[0]))
        self.s1_fuse = _Fuse(fw, fusion_ratio, fusion_kernel, alpha)
        cin = [width + extra, fw]
        for s, (mult, blocks) in enumerate(zip((4, 8, 16, 32), _DEPTHS, strict=True)):
            cout = [width * mult, width * mult // beta_inv]
            inner = [width * mult // 4, width * mult // 4 // beta_inv]
            stage = _Stage(cin, cout, inner, (slow[s + 1], fast[s + 1]), _SPATIAL_STRIDES[s], blocks,
                           _NUM_BLOCK_TEMP_KERNEL[s])
            self.add_module(f"s{s + 2}", stage)
            if s < 3:
                self.add_module(f"s{s + 2}_fuse", _Fuse(cout[1], fusion_ratio, fusion_kernel, alpha))
                cin = [cout[0] + cout[0] // (beta_inv // fusion_ratio), cout[1]]
        self.dims = (width * 32, width * 32 // beta_inv)
        side = crop // 32
        self.head = _Head(self.dims, num_classes, [[num_frames // alpha, side, side],
                                                   [num_frames, side, side]])
        self.num_features = sum(self.dims)
        self.min_clip_len = num_frames
        self.feature_dims = {"pooled": self.num_features, "logits": num_classes}

    def reset_classifier(self, num_classes: int) -> None:
        """Replace (0: remove) the projection."""
        self.head.projection = nn.Linear(self.num_features, num_classes) if num_classes else None
        self.num_classes = num_classes
        self.feature_dims["logits"] = num_classes

    def forward_features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Fast clip -> [slow s5 map (B, 2048, T/alpha, h, w), fast s5 map (B, 256, T, h, w)]."""
        if x.ndim != 5 or x.shape[1] != 3 or x.shape[2] != self.min_clip_len:
            raise ValueError(f"SlowFast expects (B, 3, {self.min_clip_len}, H, W), got {tuple(x.shape)}")
        paths = pack_pathways(x, self.alpha)
        paths = [getattr(self.s1, f"pathway{p}_stem")(y) for p, y in enumerate(paths)]
        paths = self.s2(self.s1_fuse(paths))
        paths = self.s2_fuse(paths)
        paths = self.s3(paths)  # PySlowFast's pathway pools are 1x1x1 for SlowFast: identities
        paths = self.s3_fuse(paths)
        paths = self.s4_fuse(self.s4(paths))
        return self.s5(paths)

    def _pooled(self, maps: list[torch.Tensor]) -> torch.Tensor:
        pooled = [getattr(self.head, f"pathway{p}_avgpool")(m) for p, m in enumerate(maps)]
        return torch.cat(pooled, 1).mean(dim=(2, 3, 4))

    def extract(self, x: torch.Tensor, layer: str | None = None) -> torch.Tensor:
        """(B, 2304) ``pooled`` or the test-time ``logits`` (softmax of the projection, as PySlowFast)."""
        layer = layer or self.default_layer
        if layer not in self.feature_dims:
            raise ValueError(f"unknown SlowFast layer {layer!r}; choose one of {tuple(self.feature_dims)}")
        maps = self.forward_features(x)
        if layer == "pooled":
            return self._pooled(maps)
        if self.head.projection is None:
            raise ValueError("this SlowFast has no projection (num_classes=0)")
        pooled = [getattr(self.head, f"pathway{p}_avgpool")(m) for p, m in enumerate(maps)]
        logits = self.head.projection(torch.cat(pooled, 1).permute(0, 2, 3, 4, 1))
        return logits.softmax(dim=4).mean(dim=(1, 2, 3))

    def extract_map(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 2048, h, w): the slow pathway's s5 map averaged over time."""
        return self.forward_features(x)[0].mean(dim=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class scores (softmax averaged over positions), PySlowFast's test output."""
        return self.extract(x, "logits")

    @staticmethod
    def key_scheme(state: Mapping[str, torch.Tensor]) -> str | None:
        """"pyslowfast" (PySlowFast .pyth) or "pytorchvideo" (``slowfast_r50`` of the model zoo)."""
        if {"s1.pathway0_stem.conv.weight", "s1_fuse.conv_f2s.weight"} <= set(state):
            return "pyslowfast"
        ptv = {"blocks.0.multipathway_blocks.0.conv.weight",
               "blocks.0.multipathway_fusion.conv_fast_to_slow.weight"}
        if ptv <= set(state):
            return "pytorchvideo"
        return None

    @staticmethod
    def checkpoint_filter_fn(state: Mapping[str, torch.Tensor], model: nn.Module) -> dict:
        """PySlowFast keys are ours; pytorchvideo's are renamed (same tensors, same shapes)."""
        if SlowFast.key_scheme(state) != "pytorchvideo":
            return dict(state)
        return {_from_pytorchvideo(k): v for k, v in state.items()}


# pytorchvideo create_slowfast: blocks.0 stem + fusion, blocks.1-4 stages (+ fusion for 1-3),
# blocks.5 the pathway pools, blocks.6 the head (proj).
_PTV_PARAMS = {"branch1_conv": "branch1", "branch1_norm": "branch1_bn", "branch2.conv_a": "branch2.a",
               "branch2.norm_a": "branch2.a_bn", "branch2.conv_b": "branch2.b",
               "branch2.norm_b": "branch2.b_bn", "branch2.conv_c": "branch2.c",
               "branch2.norm_c": "branch2.c_bn"}


def _from_pytorchvideo(key: str) -> str:
    """pytorchvideo slowfast_r50 key -> PySlowFast key (unknown keys pass through and fail the load)."""
    if m := re.fullmatch(r"blocks\.0\.multipathway_blocks\.(\d)\.(conv|norm)\.(.+)", key):
        return f"s1.pathway{m[1]}_stem.{'conv' if m[2] == 'conv' else 'bn'}.{m[3]}"
    if m := re.fullmatch(r"blocks\.(\d)\.multipathway_fusion\.(conv_fast_to_slow|norm)\.(.+)", key):
        return f"s{int(m[1]) + 1}_fuse.{'conv_f2s' if m[2] == 'conv_fast_to_slow' else 'bn'}.{m[3]}"
    pattern = r"blocks\.(\d)\.multipathway_blocks\.(\d)\.res_blocks\.(\d+)\.(.+)\.(\w+)"
    if m := re.fullmatch(pattern, key):
        param = _PTV_PARAMS.get(m[4])
        if param is not None:
            return f"s{int(m[1]) + 1}.pathway{m[2]}_res{m[3]}.{param}.{m[5]}"
    if m := re.fullmatch(r"blocks\.6\.proj\.(\w+)", key):
        return f"head.projection.{m[1]}"
    return key
