"""torchvision's video classifiers as clip feature extractors: R(2+1)D, R3D, MC3, S3D, MViT-v2, Swin3D.

The networks are torchvision's own classes (``torchvision.models.video``) and load torchvision's
state dicts (``r2plus1d_18-91a641e6.pth`` ...) from local files under a ``net.`` prefix. Default
layer: the pre-classifier pooled feature of each forward:

===========  ==========  =====  =============================================================
model        layer       dim    what
===========  ==========  =====  =============================================================
r2plus1d_18  avgpool     512    ``avgpool(layer4)`` flattened (input of ``fc``)
r3d_18       avgpool     512    same
mc3_18       avgpool     512    same
s3d          avgpool     1024   ``avgpool`` (2x7x7, stride 1) of ``features``, mean over T, H, W
mvit_v2_s    cls         768    class token after the final ``norm`` (input of ``head``)
swin3d_t     avgpool     768    ``avgpool`` of the ``norm`` output (input of ``head``)
===========  ==========  =====  =============================================================

The map (``extract_map``) is the last feature map averaged over time: ``layer4`` / ``features`` /
the patch tokens after ``norm``.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from flowkit.models.extras import require

__all__ = ["VIDEO_ARCHS", "TorchvisionVideo"]

# arch -> (first conv, classifier module path in torchvision, default layer, map layer)
VIDEO_ARCHS: dict[str, tuple[str, str, str, str]] = {
    "r2plus1d_18": ("stem.0", "fc", "avgpool", "layer4"),
    "r3d_18": ("stem.0", "fc", "avgpool", "layer4"),
    "mc3_18": ("stem.0", "fc", "avgpool", "layer4"),
    "s3d": ("features.0.0.0", "classifier.1", "avgpool", "features"),
    "mvit_v2_s": ("conv_proj", "head.1", "cls", "norm"),
    "swin3d_t": ("patch_embed.proj", "head", "avgpool", "norm"),
}


class TorchvisionVideo(nn.Module):
    """A torchvision video model with ``extract`` (pooled feature) and ``extract_map``."""

    in_chans = 3

    def __init__(self, arch: str, num_classes: int = 400, net: nn.Module | None = None,
                 **kwargs: object) -> None:
        """Build torchvision's ``arch`` (kwargs go to its builder), or wrap ``net``: a network of
        that class built otherwise (tests use small configurations of MViT)."""
        super().__init__()
        if arch not in VIDEO_ARCHS:
            raise ValueError(f"unknown torchvision video model {arch!r}; choose one of {tuple(VIDEO_ARCHS)}")
        video = require("torchvision.models.video")
        self.arch = arch
        self.net = net if net is not None else getattr(video, arch)(weights=None, num_classes=num_classes,
                                                                    **kwargs)
        first, head, self.default_layer, self.map_layer = VIDEO_ARCHS[arch]
        self.first_conv, self.classifier = f"net.{first}", f"net.{head}"
        self.num_classes = num_classes if net is None else self._head_module().out_features
        self.num_features = self._head_module().in_channels if arch == "s3d" else \
            self._head_module().in_features
        self.feature_dims = {self.default_layer: self.num_features, "logits": num_classes}
        self.min_clip_len = 1
        if arch == "mvit_v2_s":  # its positional tables fix the clip length (16 frames)
            self.min_clip_len = self.net.pos_encoding.temporal_size * self.net.conv_proj.stride[0]

    def _head_module(self) -> nn.Module:
        return self.net.get_submodule(VIDEO_ARCHS[self.arch][1])

    def reset_classifier(self, num_classes: int) -> None:
        """Replace the classifier (0: remove it; features only)."""
        path = VIDEO_ARCHS[self.arch][1]
        parent_path, _, name = path.rpartition(".")
        parent = self.net.get_submodule(parent_path) if parent_path else self.net
        if num_classes == 0:
            new: nn.Module = nn.Identity()
        elif self.arch == "s3d":
            new = nn.Conv3d(self.num_features, num_classes, kernel_size=1, stride=1, bias=True)
        else:
            new = nn.Linear(self.num_features, num_classes)
        setattr(parent, name, new)
        self.num_classes = num_classes
        self.feature_dims["logits"] = num_classes

    def _features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Clip (B, 3, T, H, W) -> (pooled (B, D), last map (B, C, T', h, w))."""
        n = self.net
        if self.arch in ("r2plus1d_18", "r3d_18", "mc3_18"):
            fmap = n.layer4(n.layer3(n.layer2(n.layer1(n.stem(x)))))
            return n.avgpool(fmap).flatten(1), fmap
        if self.arch == "s3d":
            fmap = n.features(x)
            return n.avgpool(fmap).mean(dim=(2, 3, 4)), fmap
        if self.arch == "swin3d_t":
            tokens = n.norm(n.features(n.pos_drop(n.patch_embed(x))))  # (B, T, H, W, C)
            fmap = tokens.permute(0, 4, 1, 2, 3)
            return n.avgpool(fmap).flatten(1), fmap
        return self._mvit(x)

    def _mvit(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        n = self.net
        # torchvision MViT.forward up to the class token, keeping the patch tokens.
        tokens = n.conv_proj(x).flatten(2).transpose(1, 2)
        tokens = n.pos_encoding(tokens)
        thw = (n.pos_encoding.temporal_size, *n.pos_encoding.spatial_size)
        for block in n.blocks:
            tokens, thw = block(tokens, thw)
        tokens = n.norm(tokens)
        patches = tokens[:, 1:].transpose(1, 2).reshape(x.shape[0], -1, *thw)
        return tokens[:, 0], patches

    def _check(self, x: torch.Tensor) -> None:
        if x.ndim != 5 or x.shape[1] != 3:
            raise ValueError(f"{self.arch} expects (B, 3, T, H, W), got {tuple(x.shape)}")
        if x.shape[2] < self.min_clip_len or (self.arch == "mvit_v2_s" and x.shape[2] != self.min_clip_len):
            raise ValueError(f"{self.arch} needs at least {self.min_clip_len} frames, got {x.shape[2]}")

    def extract(self, x: torch.Tensor, layer: str | None = None) -> torch.Tensor:
        """(B, D) pooled feature (``avgpool``/``cls``) or ``logits``."""
        self._check(x)
        layer = layer or self.default_layer
        if layer not in self.feature_dims:
            raise ValueError(f"unknown {self.arch} layer {layer!r}; choose one of {tuple(self.feature_dims)}")
        pooled, _ = self._features(x)
        if layer == "logits":
            if not self.num_classes:
                raise ValueError(f"this {self.arch} has no classifier (num_classes=0)")
            return self.net(x)
        return pooled

    def extract_map(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, h, w): the last feature map averaged over time."""
        self._check(x)
        return self._features(x)[1].mean(dim=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """torchvision's forward (logits)."""
        return self.net(x)

    @staticmethod
    def key_scheme(state: Mapping[str, torch.Tensor]) -> str | None:
        """"torchvision" when the keys look like one of torchvision's video models."""
        firsts = {f"{first}.weight" for first, *_ in VIDEO_ARCHS.values()}
        return "torchvision" if firsts & set(state) else None

    @staticmethod
    def checkpoint_filter_fn(state: Mapping[str, torch.Tensor], model: nn.Module) -> dict:
        """torchvision keys -> ours (``net.`` prefix)."""
        return {"net." + k: v for k, v in state.items()}
