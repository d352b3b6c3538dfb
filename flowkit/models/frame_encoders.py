"""Image encoders run on single frames: torchvision ResNet-50, OpenAI CLIP ViT towers, DINOv2 ViT.

Every encoder gives a spatial map (B, C, h, w) and vectors of named layers. The networks are the
libraries' own classes (torchvision ``ResNet``, open_clip's vision tower, timm's
``VisionTransformer``); weights load from local files in the libraries' key names:

* ``resnet50``: torchvision ``resnet50-*.pth``. Map ``layer4`` (2048 x 7 x 7); ``pool5`` (2048) is
  its average, the ``avgpool`` output: equal to the spatial mean of the map by definition.
* ``clip-vit-b16`` / ``clip-vit-l14``: OpenAI CLIP (``ViT-B-16.pt``, TorchScript or state dict) or
  an open_clip state dict of the same model, visual tower only (``visual.*``). Map: the patch tokens
  after ``ln_post`` (width x 14 x 14 for B/16, 1024 x 16 x 16 for L/14). ``embed``: the projected
  CLS embedding (512 / 768), what ``encode_image`` returns; ``cls``: the CLS token before the
  projection; ``mean``: the spatial mean of the patch-token map. The CLS embedding is *not* a mean of
  patch tokens, so the slow-fast layout's pooled (fast) vector is ``mean``. The OpenAI weights use
  QuickGELU (built in); LAION open_clip ViT-B-16 weights need ``quick_gelu=False``.
* ``dinov2-vit-b14``: facebookresearch/dinov2 ``dinov2_vitb14_pretrain.pth`` keys via timm's
  converter (positional embedding resampled from 37 x 37 to the 16 x 16 grid of 224 px input).
  ``cls``: the normalised CLS token (DINOv2's ``x_norm_clstoken``); ``mean``: mean of the patch map.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from flowkit.models.extras import require

__all__ = ["ClipVisionEncoder", "Dinov2Encoder", "FrameEncoder", "ResNetEncoder"]


class FrameEncoder(nn.Module):
    """Shared interface: ``extract``, ``extract_map`` and ``extract_with_map`` on (B, 3, S, S)."""

    in_chans = 3
    classifier = "head"
    num_classes = 0
    default_layer = "mean"
    map_layer = "tokens"
    min_clip_len = 1
    feature_dims: dict[str, int]

    def reset_classifier(self, num_classes: int) -> None:
        """Encoders without a classifier only accept 0."""
        if num_classes:
            raise ValueError(f"{type(self).__name__} has no classifier")

    def _run(self, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Images -> (map (B, C, h, w), {layer: (B, D)})."""
        raise NotImplementedError

    def _check(self, x: torch.Tensor, layer: str) -> None:
        if layer not in self.feature_dims:
            raise ValueError(f"unknown layer {layer!r}; choose one of {tuple(self.feature_dims)}")
        if x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(f"{type(self).__name__} expects (B, 3, H, W), got {tuple(x.shape)}")

    def extract_with_map(self, x: torch.Tensor, layer: str) -> tuple[torch.Tensor, torch.Tensor]:
        """One forward pass -> ((B, D) vector of ``layer``, (B, C, h, w) map)."""
        self._check(x, layer)
        fmap, vectors = self._run(x)
        return (fmap.mean(dim=(2, 3)) if layer == "mean" else vectors[layer]), fmap

    def extract(self, x: torch.Tensor, layer: str | None = None) -> torch.Tensor:
        """(B, D) vector of ``layer`` (default: the model's default layer)."""
        return self.extract_with_map(x, layer or self.default_layer)[0]

    def extract_map(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, h, w) spatial map."""
        return self.extract_with_map(x, self.default_layer)[1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The default layer's vector."""
        return self.extract(x)


def _prefixed(state: Mapping[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {prefix + k: v for k, v in state.items()}


class ResNetEncoder(FrameEncoder):
    """torchvision ResNet (Bottleneck): map ``layer4``, vectors ``pool5`` (avgpool) and ``logits``."""

    first_conv = "net.conv1"
    classifier = "net.fc"
    default_layer = "pool5"
    map_layer = "layer4"

    def __init__(self, layers: tuple[int, ...] = (3, 4, 6, 3), num_classes: int = 1000) -> None:
        super().__init__()
        resnet = require("torchvision.models.resnet")
        self.net = resnet.ResNet(resnet.Bottleneck, list(layers), num_classes=num_classes)
        self.num_classes = num_classes
        self.num_features = self.net.fc.in_features
        self.feature_dims = {"pool5": self.num_features, "mean": self.num_features,
                             "logits": num_classes}

    def reset_classifier(self, num_classes: int) -> None:
        """Replace (or with 0 remove) the fc layer."""
        self.num_classes = num_classes
        self.feature_dims["logits"] = num_classes
        self.net.fc = nn.Linear(self.num_features, num_classes) if num_classes else nn.Identity()

    def _run(self, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        n = self.net
        fmap = n.layer4(n.layer3(n.layer2(n.layer1(n.maxpool(n.relu(n.bn1(n.conv1(x))))))))
        pooled = n.avgpool(fmap).flatten(1)
        out = {"pool5": pooled}
        if self.num_classes:
            out["logits"] = n.fc(pooled)
        return fmap, out

    @staticmethod
    def key_scheme(state: Mapping[str, torch.Tensor]) -> str | None:
        """"torchvision" for torchvision ResNet keys (conv1, layer1.0..., fc)."""
        return "torchvision" if {"conv1.weight", "layer1.0.conv1.weight"} <= set(state) else None

    @staticmethod
    def checkpoint_filter_fn(state: Mapping[str, torch.Tensor], model: nn.Module) -> dict:
        """torchvision keys -> ours (``net.`` prefix)."""
        return _prefixed(state, "net.")


# Top-level ints in OpenAI's CLIP state dicts (not tensors of the visual tower).
_OPENAI_META = ("input_resolution", "context_length", "vocab_size")


class ClipVisionEncoder(FrameEncoder):
    """open_clip's vision tower of a CLIP ViT; keys ``visual.*`` as in OpenAI and open_clip files."""

    first_conv = "visual.conv1"
    default_layer = "embed"

    def __init__(self, embed_dim: int = 512, width: int = 768, layers: int = 12, patch_size: int = 16,
                 image_size: int = 224, head_width: int = 64, quick_gelu: bool = True) -> None:
        super().__init__()
        require("open_clip")
        from open_clip.model import CLIPVisionCfg, _build_vision_tower

        cfg = CLIPVisionCfg(layers=layers, width=width, head_width=head_width,
                            patch_size=patch_size, image_size=image_size)
        self.visual = _build_vision_tower(embed_dim, cfg, quick_gelu=quick_gelu)
        self.grid = image_size // patch_size
        self.num_features = embed_dim
        self.feature_dims = {"embed": embed_dim, "cls": width, "mean": width}

    def _run(self, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        v = self.visual
        # open_clip VisionTransformer.forward, keeping the pre-projection CLS and the tokens.
        cls, tokens = v._pool(v.transformer(v._embeds(x)))
        embed = cls @ v.proj if v.proj is not None else cls
        b, n, c = tokens.shape
        side = int(round(n ** 0.5))
        fmap = tokens.transpose(1, 2).reshape(b, c, side, side)
        return fmap, {"embed": embed, "cls": cls}

    @staticmethod
    def key_scheme(state: Mapping[str, torch.Tensor]) -> str | None:
        """"openai" (OpenAI CLIP file) or "open_clip" (visual.* keys without OpenAI's ints)."""
        if "visual.conv1.weight" not in state:
            return None
        return "openai" if any(k in state for k in _OPENAI_META) else "open_clip"

    @staticmethod
    def checkpoint_filter_fn(state: Mapping[str, torch.Tensor], model: nn.Module) -> dict:
        """Keep the visual tower (drop the text tower, logit scale and OpenAI's metadata ints)."""
        return {k: v for k, v in state.items() if k.startswith("visual.")}


class Dinov2Encoder(FrameEncoder):
    """timm's DINOv2 ViT (``vit_base_patch14_dinov2``) at ``img_size``; facebook or timm keys."""

    first_conv = "net.patch_embed.proj"
    default_layer = "cls"

    def __init__(self, variant: str = "vit_base_patch14_dinov2", img_size: int = 224,
                 **timm_kwargs: object) -> None:
        super().__init__()
        timm = require("timm")
        self.net = timm.create_model(variant, pretrained=False, num_classes=0, img_size=img_size,
                                     **timm_kwargs)
        self.num_features = self.net.num_features
        self.feature_dims = {"cls": self.num_features, "mean": self.num_features}

    def _run(self, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        tokens = self.net.forward_features(x)  # (B, prefix + h*w, C), after the final norm
        patches = tokens[:, self.net.num_prefix_tokens:]
        h, w = self.net.patch_embed.dynamic_feat_size(x.shape[-2:])
        fmap = patches.transpose(1, 2).reshape(x.shape[0], -1, h, w)
        return fmap, {"cls": tokens[:, 0]}

    @staticmethod
    def key_scheme(state: Mapping[str, torch.Tensor]) -> str | None:
        """"dinov2" (facebookresearch keys, with mask_token) or "timm"."""
        if "patch_embed.proj.weight" not in state or "blocks.0.attn.qkv.weight" not in state:
            return None
        return "dinov2" if "mask_token" in state else "timm"

    @staticmethod
    def checkpoint_filter_fn(state: Mapping[str, torch.Tensor], model: nn.Module) -> dict:
        """timm's own converter (drops mask_token, resamples pos_embed), then the ``net.`` prefix."""
        from timm.models.vision_transformer import checkpoint_filter_fn

        return _prefixed(checkpoint_filter_fn(dict(state), model.net), "net.")
