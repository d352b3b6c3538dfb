"""I3D ResNet-50 (Wang et al., "Non-local Neural Networks", CVPR 2018; inflated ResNet-50 baseline).

No installed library defines it, so this follows Tushar-N/pytorch-resnet3d ``models/resnet.py``
(``I3Res50``) exactly, whose ``i3d_r50_kinetics.pth`` (converted from the Caffe2
facebookresearch/video-nonlocal-net release) gives the widely used 2048-d "I3D" features of the
UCF-Crime / XD-Violence anomaly-detection works. Keys: ``conv1``, ``bn1``,
``layer{1..4}.{i}.{conv1,bn1,conv2,bn2,conv3,bn3,downsample.0,downsample.1}``, ``fc``.

conv1 5x7x7 stride 2 (time too), max pool 2x3x3 stride 2 (no padding), a 2x1x1 time pool after
layer1; bottleneck ``conv1`` is 3x1x1 where the inflation pattern says so (layer1 all; layer2/3
every other block from the first; layer4 the second). Default layer ``avgpool``: the global average
pool of layer4 (2048). Preprocessing: short side 256, centre crop 224, mean/std 0.45/0.225 (the
Caffe2 release's 114.75/57.375 on 0-255 pixels). ``non_local=True`` (``i3d_r50_nl``, checkpoint
``i3d_r50_nl_kinetics.pth``) adds the embedded-Gaussian non-local block (``nl.{theta,phi,g,out,bn}``,
phi/g on a 1x2x2 max-pooled input, softmax of theta.phi / sqrt(inner)) after blocks 1 and 3 of
layer2 and 1, 3, 5 of layer3, as that file's ``I3Res50(use_nl=True)``.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["I3DResNet50"]

# (planes, blocks, spatial stride, temporal kernel flags per block) of I3Res50's _make_layer calls.
_LAYERS = ((64, 3, 1, (1, 1, 1)), (128, 4, 2, (1, 0, 1, 0)), (256, 6, 2, (1, 0, 1, 0, 1, 0)),
           (512, 3, 2, (0, 1, 0)))


class NonLocalBlock(nn.Module):
    """Embedded-Gaussian non-local block of I3Res50 (residual, BN on the output projection)."""

    def __init__(self, dim: int, dim_inner: int) -> None:
        super().__init__()
        self.dim_inner = dim_inner
        self.theta = nn.Conv3d(dim, dim_inner, 1)
        self.maxpool = nn.MaxPool3d((1, 2, 2), stride=(1, 2, 2))
        self.phi = nn.Conv3d(dim, dim_inner, 1)
        self.g = nn.Conv3d(dim, dim_inner, 1)
        self.out = nn.Conv3d(dim_inner, dim, 1)
        self.bn = nn.BatchNorm3d(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b = x.shape[0]
        pooled = self.maxpool(x)
        theta = self.theta(x)
        shape = theta.shape
        theta = theta.reshape(b, self.dim_inner, -1)
        phi = self.phi(pooled).reshape(b, self.dim_inner, -1)
        g = self.g(pooled).reshape(b, self.dim_inner, -1)
        attention = F.softmax(torch.bmm(theta.transpose(1, 2), phi) * self.dim_inner ** -0.5, dim=-1)
        t = torch.bmm(g, attention.transpose(1, 2)).reshape(shape)
        return self.bn(self.out(t)) + x


class _Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int, downsample: nn.Module | None,
                 temp_conv: int, non_local: bool = False) -> None:
        super().__init__()
        self.conv1 = nn.Conv3d(inplanes, planes, (1 + 2 * temp_conv, 1, 1), padding=(temp_conv, 0, 0),
                               bias=False)
        self.bn1 = nn.BatchNorm3d(planes)
        self.conv2 = nn.Conv3d(planes, planes, (1, 3, 3), stride=(1, stride, stride), padding=(0, 1, 1),
                               bias=False)
        self.bn2 = nn.BatchNorm3d(planes)
        self.conv3 = nn.Conv3d(planes, planes * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm3d(planes * 4)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample
        self.nl = NonLocalBlock(planes * 4, planes * 2) if non_local else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        residual = x if self.downsample is None else self.downsample(x)
        out = self.relu(out + residual)
        return out if self.nl is None else self.nl(out)


class I3DResNet50(nn.Module):
    """Tushar-N's I3Res50 with ``extract`` (avgpool 2048) and ``extract_map`` (layer4 over time)."""

    in_chans = 3
    first_conv = "conv1"
    classifier = "fc"
    default_layer = "avgpool"
    map_layer = "layer4"
    min_clip_len = 8

    def __init__(self, num_classes: int = 400, width: int = 64, non_local: bool = False) -> None:
        super().__init__()
        self.conv1 = nn.Conv3d(3, width, (5, 7, 7), stride=(2, 2, 2), padding=(2, 3, 3), bias=False)
        self.bn1 = nn.BatchNorm3d(width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool1 = nn.MaxPool3d((2, 3, 3), stride=(2, 2, 2))
        self.maxpool2 = nn.MaxPool3d((2, 1, 1), stride=(2, 1, 1))
        inplanes = width
        for index, (planes, blocks, stride, temps) in enumerate(_LAYERS, start=1):
            planes = planes * width // 64
            downsample = nn.Sequential(
                nn.Conv3d(inplanes, planes * 4, 1, stride=(1, stride, stride), bias=False),
                nn.BatchNorm3d(planes * 4),
            )  # every first block changes the width or the stride in ResNet-50
            layer = [_Bottleneck(inplanes, planes, stride, downsample, temps[0])]
            inplanes = planes * 4
            with_nl = non_local and index in (2, 3)  # I3Res50: i % 2 == 1 in layer2 and layer3
            layer += [_Bottleneck(inplanes, planes, 1, None, temps[i], with_nl and i % 2 == 1)
                      for i in range(1, blocks)]
            self.add_module(f"layer{index}", nn.Sequential(*layer))
        self.avgpool = nn.AdaptiveAvgPool3d((1, 1, 1))
        self.num_features = inplanes
        self.num_classes = num_classes
        self.fc = nn.Linear(inplanes, num_classes) if num_classes else None
        self.feature_dims = {"avgpool": inplanes, "logits": num_classes}

    def reset_classifier(self, num_classes: int) -> None:
        """Replace (0: remove) the fc layer."""
        self.fc = nn.Linear(self.num_features, num_classes) if num_classes else None
        self.num_classes = num_classes
        self.feature_dims["logits"] = num_classes

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Clip (B, 3, T, H, W) -> layer4 map (B, 2048, T/8, H/32, W/32)."""
        if x.ndim != 5 or x.shape[1] != 3 or x.shape[2] < self.min_clip_len:
            raise ValueError(f"I3D ResNet-50 expects (B, 3, T >= {self.min_clip_len}, H, W), "
                             f"got {tuple(x.shape)}")
        x = self.maxpool1(self.relu(self.bn1(self.conv1(x))))
        x = self.maxpool2(self.layer1(x))
        return self.layer4(self.layer3(self.layer2(x)))

    def extract(self, x: torch.Tensor, layer: str | None = None) -> torch.Tensor:
        """(B, 2048) ``avgpool`` or ``logits`` (fc of the pool; dropout is off in eval)."""
        layer = layer or self.default_layer
        if layer not in self.feature_dims:
            raise ValueError(f"unknown layer {layer!r}; choose one of {tuple(self.feature_dims)}")
        pooled = self.avgpool(self.forward_features(x)).flatten(1)
        if layer == "logits":
            if self.fc is None:
                raise ValueError("this model has no fc (num_classes=0)")
            return self.fc(pooled)
        return pooled

    def extract_map(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 2048, h, w): layer4 averaged over time."""
        return self.forward_features(x).mean(dim=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits."""
        return self.extract(x, "logits")

    @staticmethod
    def key_scheme(state: Mapping[str, torch.Tensor]) -> str | None:
        """"resnet3d" for Tushar-N/pytorch-resnet3d keys (5-D conv1 and layerN.M.convK)."""
        weight = state.get("conv1.weight")
        ok = weight is not None and weight.ndim == 5 and "layer1.0.conv1.weight" in state
        return "resnet3d" if ok else None

    @staticmethod
    def checkpoint_filter_fn(state: Mapping[str, torch.Tensor], model: nn.Module) -> dict:
        """The keys are ours."""
        return dict(state)
