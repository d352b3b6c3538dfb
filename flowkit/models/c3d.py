"""C3D (Sports-1M architecture) as a feature extractor.

Paper: Tran et al., "Learning Spatiotemporal Features with 3D Convolutional Networks", ICCV 2015.
Weights: facebook/C3D v1.0 ``conv3d_deepnetA_sport1m_iter_1900000`` as converted (Caffe -> Keras ->
PyTorch) in DavideA/c3d-pytorch ``c3d.pickle``; the ``features.N``/``classifier.N`` layout of
R-C3D.pytorch and jfzhang95/pytorch-video-recognition is accepted too.

Two pool5 modes:

* ``caffe`` (default): ``MaxPool3d(2, 2, ceil_mode=True)``, which reproduces Caffe's unpadded
  ceil-mode pooling (windows [0,1], [2,3], [4,5], [6] on 7x7).
* ``davidea``: ``padding=(0, 1, 1)`` as in DavideA/yyuanad, to match features made with that code (the
  features pipeline pairs it with DavideA's input convention, ``C3D_DAVIDEA_PREDICT``).

Our state-dict names are DavideA's (``conv1 .. conv5b, fc6, fc7, fc8``). The input is one clip
(B, 3, 16, 112, 112); see :mod:`flowkit.models.preprocess` for the Caffe input convention.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["C3D", "C3D_LAYERS", "checkpoint_filter_fn", "key_scheme"]

C3D_LAYERS = ("fc6", "fc7", "pool5")
_CONVS = ("conv1", "conv2", "conv3a", "conv3b", "conv4a", "conv4b", "conv5a", "conv5b")
_CONV_WIDTHS = (64, 128, 256, 256, 512, 512, 512, 512)
# R-C3D / jfzhang95 nn.Sequential indices: conv, ReLU[, pool] repeated, then fc, ReLU, dropout.
_SEQUENTIAL = {
    **{f"features.{i}": name for i, name in zip((0, 3, 6, 8, 11, 13, 16, 18), _CONVS, strict=True)},
    "classifier.0": "fc6",
    "classifier.3": "fc7",
    "classifier.6": "fc8",
}
_OURS = (*_CONVS, "fc6", "fc7", "fc8")


class C3D(nn.Module):
    """C3D network with named layers (DavideA keys) and a selectable feature layer."""

    first_conv = "conv1"
    classifier = "fc8"
    default_layer = "fc6"
    map_layer = "pool5"
    layers = C3D_LAYERS

    def __init__(
        self,
        num_classes: int = 487,
        in_chans: int = 3,
        mode: str = "caffe",
        width_div: int = 1,
        feature_layer: str = "fc6",
        clip_len: int = 16,
        img_size: int = 112,
        drop_rate: float = 0.5,
    ) -> None:
        super().__init__()
        if mode not in ("caffe", "davidea"):
            raise ValueError(f"mode must be 'caffe' or 'davidea', got {mode!r}")
        if feature_layer not in C3D_LAYERS:
            raise ValueError(f"feature_layer must be one of {C3D_LAYERS}, got {feature_layer!r}")
        self.mode = mode
        self.in_chans = in_chans
        self.feature_layer = feature_layer
        self.input_shape = (clip_len, img_size, img_size)
        self.min_clip_len = clip_len  # fc6 fixes the clip size
        widths = [max(1, w // width_div) for w in _CONV_WIDTHS]
        for name, cin, cout in zip(_CONVS, (in_chans, *widths[:-1]), widths, strict=True):
            setattr(self, name, nn.Conv3d(cin, cout, kernel_size=3, padding=1))
        self.pool1 = nn.MaxPool3d((1, 2, 2), (1, 2, 2))
        self.pool2 = nn.MaxPool3d(2, 2)
        self.pool3 = nn.MaxPool3d(2, 2)
        self.pool4 = nn.MaxPool3d(2, 2)
        if mode == "caffe":
            self.pool5 = nn.MaxPool3d(2, 2, ceil_mode=True)
        else:
            self.pool5 = nn.MaxPool3d(2, 2, padding=(0, 1, 1))
        self.map_shape = (widths[-1], *self._pool5_size(clip_len, img_size))
        flat = self.map_shape[0] * self.map_shape[1] * self.map_shape[2] * self.map_shape[3]
        fc_width = max(1, 4096 // width_div)
        self.fc6 = nn.Linear(flat, fc_width)
        self.fc7 = nn.Linear(fc_width, fc_width)
        self.num_classes = num_classes
        self.fc8 = nn.Linear(fc_width, num_classes) if num_classes > 0 else None
        self.dropout = nn.Dropout(drop_rate)
        self.feature_dims = {"fc6": fc_width, "fc7": fc_width, "pool5": flat}
        self.num_features = self.feature_dims[feature_layer]

    def _pool5_size(self, clip_len: int, img_size: int) -> tuple[int, int, int]:
        """Shape (T, H, W) of the pool5 map for a clip, without running the network."""
        probe = torch.zeros(1, 1, clip_len // 8, img_size // 16, img_size // 16)
        return tuple(self.pool5(probe).shape[2:])

    def reset_classifier(self, num_classes: int) -> None:
        """Replace fc8 by a fresh layer with ``num_classes`` outputs (0 removes it)."""
        self.num_classes = num_classes
        width = self.fc7.out_features
        device, dtype = self.fc7.weight.device, self.fc7.weight.dtype
        self.fc8 = (
            nn.Linear(width, num_classes, device=device, dtype=dtype) if num_classes > 0 else None
        )

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Clip (B, C, 16, 112, 112) -> unpooled pool5 map (B, 512, 1, 4, 4)."""
        _check_clip(x, self.in_chans, self.input_shape)
        x = self.pool1(F.relu(self.conv1(x)))
        x = self.pool2(F.relu(self.conv2(x)))
        x = self.pool3(F.relu(self.conv3b(F.relu(self.conv3a(x)))))
        x = self.pool4(F.relu(self.conv4b(F.relu(self.conv4a(x)))))
        return self.pool5(F.relu(self.conv5b(F.relu(self.conv5a(x)))))

    def _head(self, x: torch.Tensor, stop: str | None) -> torch.Tensor:
        """Run the fully connected part on a pool5 map, stopping after layer ``stop``."""
        x = x.flatten(1)
        if stop == "pool5":
            return x
        # fc6/fc7 are read after ReLU and before dropout, like Caffe's in-place relu6/relu7.
        x = F.relu(self.fc6(x))
        if stop == "fc6":
            return x
        x = F.relu(self.fc7(self.dropout(x)))
        if stop == "fc7" or self.fc8 is None:
            return x
        return self.fc8(self.dropout(x))

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """pool5 map -> logits, or the clip embedding (``feature_layer``) when ``pre_logits``."""
        return self._head(x, self.feature_layer if pre_logits else None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Clip -> fc8 logits (fc7 when the model was built with ``num_classes=0``)."""
        return self.forward_head(self.forward_features(x))

    def extract(self, x: torch.Tensor, layer: str = "fc6") -> torch.Tensor:
        """Clip -> (B, D) vector of ``layer``: fc6/fc7 after ReLU, or pool5 flattened (C,T,H,W)."""
        if layer not in C3D_LAYERS:
            raise ValueError(f"unknown C3D layer {layer!r}; choose one of {C3D_LAYERS}")
        return self._head(self.forward_features(x), layer)

    def extract_map(self, x: torch.Tensor) -> torch.Tensor:
        """Clip -> pool5 spatial map (B, 512, 4, 4), averaged over its length-1 time axis."""
        return self.forward_features(x).mean(dim=2)


def _check_clip(x: torch.Tensor, channels: int, thw: tuple[int, int, int]) -> None:
    """Raise ValueError unless x is (B, channels, *thw): C3D's fc6 fixes the input size."""
    if x.ndim != 5 or x.shape[1] != channels or tuple(x.shape[2:]) != thw:
        raise ValueError(f"C3D expects a clip (B, {channels}, {thw[0]}, {thw[1]}, {thw[2]}), "
                         f"got {tuple(x.shape)}")


def key_scheme(state_dict: Mapping[str, torch.Tensor]) -> str | None:
    """Name the public key layout of a C3D state dict: "davidea", "sequential" or None."""
    keys = set(state_dict)
    if "conv1.weight" in keys and "fc6.weight" in keys:
        return "davidea"
    if "features.0.weight" in keys and "classifier.0.weight" in keys:
        return "sequential"
    return None


def checkpoint_filter_fn(state_dict: Mapping[str, torch.Tensor], model: C3D) -> dict:
    """Map a DavideA or sequential C3D state dict to our key names (unknown keys are kept)."""
    scheme = key_scheme(state_dict)
    if scheme is None:
        raise ValueError("not a C3D state dict (no conv1/fc6 or features.0/classifier.0 keys)")
    if scheme == "davidea":
        return dict(state_dict)
    out = {}
    for key, value in state_dict.items():
        module, _, param = key.rpartition(".")
        out[f"{_SEQUENTIAL.get(module, module)}.{param}"] = value
    return out
