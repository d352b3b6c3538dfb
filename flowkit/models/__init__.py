"""Model registry: name -> model factory, preprocessing per stream, layers and clip lengths.

``create_model("i3d", stream="flow")`` builds a network in eval mode with random weights; load
weights with :func:`flowkit.models.weights.load_checkpoint`. ``c3d_test`` and ``i3d_test`` are
tiny variants (channels / 16, same key names) for tests and smoke runs.

Beyond C3D/I3D (optional extras; see README "Models"): frame encoders (``kind="frame"``: resnet50,
clip-vit-b16, clip-vit-l14, dinov2-vit-b14, in :mod:`flowkit.models.frame_encoders`) and
torchvision's video classifiers (r2plus1d_18, r3d_18, mc3_18, s3d, mvit_v2_s, swin3d_t, in
:mod:`flowkit.models.video_backbones`). ``*_test`` names are tiny variants for tests.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import partial

import torch
from torch import nn

from flowkit.errors import ConfigError
from flowkit.models.c3d import C3D
from flowkit.models.frame_encoders import ClipVisionEncoder, Dinov2Encoder, ResNetEncoder
from flowkit.models.i3d import I3D
from flowkit.models.i3d_r50 import I3DResNet50
from flowkit.models.image_preprocess import (
    CLIP_MEAN,
    CLIP_STD,
    KINETICS_MEAN,
    KINETICS_STD,
    ImageRecipe,
    preprocess_clip_frames,
    preprocess_images,
)
from flowkit.models.preprocess import preprocess_c3d, preprocess_i3d_flow, preprocess_i3d_rgb
from flowkit.models.slowfast import SlowFast
from flowkit.models.video_backbones import VIDEO_ARCHS, TorchvisionVideo
from flowkit.models.videomae import VideoMAE
from flowkit.models.weights import STREAM_CHANNELS, CheckpointInfo, load_checkpoint

__all__ = [
    "CheckpointInfo",
    "ModelSpec",
    "create_model",
    "get_model_spec",
    "list_models",
    "load_checkpoint",
    "register_model",
]

Preprocess = Callable[..., torch.Tensor]


@dataclass(frozen=True)
class ModelSpec:
    """Everything the features pipeline needs to know about a registered model name.

    Sizes are those of the default constructor arguments; a built model's ``feature_dims``,
    ``num_features`` and ``min_clip_len`` reflect the arguments actually used.
    """

    name: str
    factory: Callable[..., nn.Module]
    model_cls: type[nn.Module]
    preprocess: Mapping[str, Preprocess]  # stream -> frames/flow to a (C, T, H, W) tensor
    default_layer: str
    layers: Mapping[str, int]  # layer -> vector size of model.extract(x, layer)
    map_layer: str  # layer behind model.extract_map(x)
    map_shape: tuple[int, int, int]  # (C, h, w) of model.extract_map(x)
    clip_len: int
    min_clip_len: int
    input_size: int  # square crop the model expects
    test_only: bool = False  # tiny models for tests: usable by name, never listed to users
    kind: str = "clip"  # "clip": windows of frames (C, T, H, W); "frame": one image (3, H, W)
    extra: str | None = None  # pip extra of flowkit that provides the model's library
    native_decode: bool = False  # preprocessing resizes from native frames itself
    checkpoints: tuple[str, ...] = ()  # public weight files it loads (README table)

    @property
    def feature_dim(self) -> int:
        """Vector size of the default layer."""
        return self.layers[self.default_layer]

    @property
    def streams(self) -> tuple[str, ...]:
        """Input streams the model accepts ("rgb", "flow")."""
        return tuple(self.preprocess)


_REGISTRY: dict[str, ModelSpec] = {}


def register_model(name: str, **spec: object) -> Callable[[Callable], Callable]:
    """Decorator registering a model factory under ``name`` with its ModelSpec fields.

    Names ending in ``_test`` are the tiny test variants: test-only unless said otherwise."""
    spec.setdefault("test_only", name.endswith("_test"))

    def decorate(factory: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if name in _REGISTRY:
            raise ValueError(f"model {name!r} is already registered")
        _REGISTRY[name] = ModelSpec(name=name, factory=factory, **spec)
        return factory

    return decorate


def list_models(include_test: bool = False) -> list[str]:
    """Registered model names, sorted; the test-only tiny models only with `include_test`."""
    return sorted(name for name, spec in _REGISTRY.items() if include_test or not spec.test_only)


def get_model_spec(name: str) -> ModelSpec:
    """The ModelSpec of ``name``; ConfigError naming the choices if unknown."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ConfigError(f"unknown model {name!r}; choose one of {', '.join(list_models())}") from None


def create_model(name: str, stream: str = "rgb", **kwargs: object) -> nn.Module:
    """Build model ``name`` for ``stream`` (random weights, eval mode); kwargs go to the class."""
    spec = get_model_spec(name)
    if stream not in spec.streams:
        raise ConfigError(f"model {name!r} has no {stream!r} stream; choose one of {spec.streams}")
    model = spec.factory(stream=stream, **kwargs)
    return model.eval()


def _in_chans(stream: str) -> int:
    """Input channels of a stream."""
    return STREAM_CHANNELS[stream]


_C3D_LAYERS = {"fc6": 4096, "fc7": 4096, "pool5": 8192}
_I3D_LAYERS = {"avgpool": 1024, "mixed_5c": 1024 * 7 * 7, "logits": 400}
_I3D_PRE = {"rgb": preprocess_i3d_rgb, "flow": preprocess_i3d_flow}
# The tiny I3D takes 112px crops (Mixed_5c is 4x4 there), so its average pool is [2, 4, 4].
_I3D_TEST_PRE = {s: partial(f, short_side=128, crop=112) for s, f in _I3D_PRE.items()}


@register_model(
    "c3d", model_cls=C3D, preprocess={"rgb": preprocess_c3d}, default_layer="fc6",
    layers=_C3D_LAYERS, map_layer="pool5", map_shape=(512, 4, 4), clip_len=16, min_clip_len=16,
    input_size=112,
)
def _build_c3d(stream: str = "rgb", **kwargs: object) -> C3D:
    """C3D Sports-1M (DavideA ``c3d.pickle`` layout); ``mode="davidea"`` pads pool5."""
    return C3D(in_chans=_in_chans(stream), **kwargs)


@register_model(
    "c3d_test", model_cls=C3D, preprocess={"rgb": preprocess_c3d}, default_layer="fc6",
    layers={"fc6": 256, "fc7": 256, "pool5": 512}, map_layer="pool5", map_shape=(32, 4, 4),
    clip_len=16, min_clip_len=16, input_size=112, test_only=True,
)
def _build_c3d_test(stream: str = "rgb", **kwargs: object) -> C3D:
    """Tiny C3D (channels / 16) with the same key names, for tests."""
    return C3D(in_chans=_in_chans(stream), **{"width_div": 16, **kwargs})


@register_model(
    "i3d", model_cls=I3D, preprocess=_I3D_PRE, default_layer="avgpool", layers=_I3D_LAYERS,
    map_layer="mixed_5c", map_shape=(1024, 7, 7), clip_len=64, min_clip_len=9, input_size=224,
)
def _build_i3d(stream: str = "rgb", **kwargs: object) -> I3D:
    """I3D (piergiaj layout), TF-exact; ``compat="video_features"`` for that tool's numbers."""
    return I3D(in_chans=_in_chans(stream), **kwargs)


@register_model(
    "i3d_test", model_cls=I3D, preprocess=_I3D_TEST_PRE, default_layer="avgpool",
    layers={"avgpool": 64, "mixed_5c": 64 * 4 * 4, "logits": 400}, map_layer="mixed_5c",
    map_shape=(64, 4, 4), clip_len=16, min_clip_len=9, input_size=112, test_only=True,
)
def _build_i3d_test(stream: str = "rgb", **kwargs: object) -> I3D:
    """Tiny I3D (channels / 16, 112px input) with the same key names, for tests."""
    return I3D(in_chans=_in_chans(stream), **{"width_div": 16, "pool_size": (2, 4, 4), **kwargs})


# --- frame encoders (one image per sampled frame) -------------------------------------------------

_RESNET_RECIPE = ImageRecipe(resize=256, crop=224)  # torchvision IMAGENET1K_V1 preset
_CLIP_RECIPE = ImageRecipe(resize=224, crop=224, mean=CLIP_MEAN, std=CLIP_STD, interpolation="bicubic")
_DINO_RECIPE = ImageRecipe(resize=256, crop=224, interpolation="bicubic")  # DINOv2 eval transform


def _frames(recipe: ImageRecipe) -> dict[str, Preprocess]:
    return {"rgb": partial(preprocess_images, recipe=recipe)}


def _frame_model(name: str, cls: type, dims: dict[str, int], default: str, map_layer: str,
                 map_shape: tuple[int, int, int], recipe: ImageRecipe, extra: str,
                 checkpoints: tuple[str, ...], **defaults: object) -> None:
    """Register a frame encoder ``name`` built as ``cls(**defaults, **kwargs)``."""

    def build(stream: str = "rgb", **kwargs: object) -> nn.Module:
        return cls(**{**defaults, **kwargs})

    register_model(name, model_cls=cls, preprocess=_frames(recipe), default_layer=default,
                   layers=dims, map_layer=map_layer, map_shape=map_shape, clip_len=1,
                   min_clip_len=1, input_size=recipe.crop, kind="frame", extra=extra,
                   native_decode=True, checkpoints=checkpoints)(build)


_frame_model("resnet50", ResNetEncoder, {"pool5": 2048, "mean": 2048, "logits": 1000}, "pool5",
             "layer4", (2048, 7, 7), _RESNET_RECIPE, "torchvision",
             ("resnet50-0676ba61.pth", "resnet50-11ad3fa6.pth"))
_frame_model("resnet50_test", ResNetEncoder, {"pool5": 2048, "mean": 2048, "logits": 1000}, "pool5",
             "layer4", (2048, 2, 2), ImageRecipe(resize=64, crop=56), "torchvision", (),
             layers=(1, 1, 1, 1))
_frame_model("clip-vit-b16", ClipVisionEncoder, {"embed": 512, "cls": 768, "mean": 768}, "embed",
             "tokens", (768, 14, 14), _CLIP_RECIPE, "clip", ("ViT-B-16.pt (OpenAI)",))
_frame_model("clip-vit-l14", ClipVisionEncoder, {"embed": 768, "cls": 1024, "mean": 1024}, "embed",
             "tokens", (1024, 16, 16), _CLIP_RECIPE, "clip", ("ViT-L-14.pt (OpenAI)",),
             embed_dim=768, width=1024, layers=24, patch_size=14)
_frame_model("clip_test", ClipVisionEncoder, {"embed": 32, "cls": 64, "mean": 64}, "embed", "tokens",
             (64, 4, 4), ImageRecipe(resize=64, crop=64, mean=CLIP_MEAN, std=CLIP_STD,
                                     interpolation="bicubic"), "clip", (),
             embed_dim=32, width=64, layers=2, patch_size=16, image_size=64, head_width=32)
_frame_model("dinov2-vit-b14", Dinov2Encoder, {"cls": 768, "mean": 768}, "cls", "tokens",
             (768, 16, 16), _DINO_RECIPE, "timm", ("dinov2_vitb14_pretrain.pth",))
_frame_model("dinov2_test", Dinov2Encoder, {"cls": 64, "mean": 64}, "cls", "tokens", (64, 4, 4),
             ImageRecipe(resize=64, crop=56, interpolation="bicubic"), "timm", (),
             img_size=56, embed_dim=64, depth=2, num_heads=2)


# --- torchvision video classifiers (windows of frames) --------------------------------------------

def _video_recipe(crop: int, resize: int | None, resize_hw: tuple[int, int] | None = None,
                  mean: tuple = KINETICS_MEAN, std: tuple = KINETICS_STD) -> ImageRecipe:
    """torchvision ``VideoClassification`` preset: bilinear without antialias, centre crop."""
    return ImageRecipe(resize=resize, resize_hw=resize_hw, crop=crop, mean=mean, std=std,
                       antialias=False)


_IMAGENET = {"mean": (0.485, 0.456, 0.406), "std": (0.229, 0.224, 0.225)}
# name -> (recipe, clip_len (torchvision's evaluation clip), dim, map shape, checkpoint)
_VIDEO = {
    "r2plus1d_18": (_video_recipe(112, None, (128, 171)), 16, 512, (512, 7, 7), "r2plus1d_18-91a641e6.pth"),
    "r3d_18": (_video_recipe(112, None, (128, 171)), 16, 512, (512, 7, 7), "r3d_18-b3b3357e.pth"),
    "mc3_18": (_video_recipe(112, None, (128, 171)), 16, 512, (512, 7, 7), "mc3_18-a90a0ba3.pth"),
    "s3d": (_video_recipe(224, None, (256, 256)), 128, 1024, (1024, 7, 7), "s3d-d76dad2f.pth"),
    "mvit_v2_s": (_video_recipe(224, 256, mean=(0.45,) * 3, std=(0.225,) * 3), 16, 768, (768, 7, 7),
                  "mvit_v2_s-ae3be167.pth"),
    "swin3d_t": (_video_recipe(224, 256, **_IMAGENET), 32, 768, (768, 7, 7), "swin3d_t-7615ae03.pth"),
}


def _video_model(arch: str) -> None:
    recipe, clip_len, dim, map_shape, ckpt = _VIDEO[arch]
    _, _, layer, map_layer = VIDEO_ARCHS[arch]

    def build(stream: str = "rgb", **kwargs: object) -> nn.Module:
        return TorchvisionVideo(arch, **kwargs)

    register_model(arch, model_cls=TorchvisionVideo,
                   preprocess={"rgb": partial(preprocess_clip_frames, recipe=recipe)},
                   default_layer=layer, layers={layer: dim, "logits": 400}, map_layer=map_layer,
                   map_shape=map_shape, clip_len=clip_len, min_clip_len=16 if arch == "mvit_v2_s" else 1,
                   input_size=recipe.crop, extra="torchvision", native_decode=True,
                   checkpoints=(ckpt,))(build)


for _arch in _VIDEO:
    _video_model(_arch)


# --- transformers VideoMAE (a local save_pretrained folder) ----------------------------------------

_VIDEOMAE_RECIPE = ImageRecipe(resize=224, crop=224)  # MCG-NJU preprocessor_config: ImageNet mean/std


@register_model(
    "videomae-base", model_cls=VideoMAE,
    preprocess={"rgb": partial(preprocess_clip_frames, recipe=_VIDEOMAE_RECIPE)}, default_layer="pooled",
    layers={"pooled": 768, "logits": 400}, map_layer="tokens", map_shape=(768, 14, 14), clip_len=16,
    min_clip_len=16, input_size=224, extra="transformers", native_decode=True,
    checkpoints=("MCG-NJU/videomae-base-finetuned-kinetics (local folder)",),
)
def _build_videomae(stream: str = "rgb", **kwargs: object) -> VideoMAE:
    """VideoMAE-Base (ViT-B, 16 frames, tubelet 2); the checkpoint folder's config decides the size."""
    return VideoMAE(**kwargs)


@register_model(
    "videomae_test", model_cls=VideoMAE,
    preprocess={"rgb": partial(preprocess_clip_frames, recipe=ImageRecipe(resize=32, crop=32))},
    default_layer="pooled", layers={"pooled": 32, "logits": 5}, map_layer="tokens", map_shape=(32, 2, 2),
    clip_len=4, min_clip_len=4, input_size=32, extra="transformers", native_decode=True,
)
def _build_videomae_test(stream: str = "rgb", **kwargs: object) -> VideoMAE:
    """Tiny VideoMAE for tests (same key names)."""
    tiny = {"num_classes": 5, "image_size": 32, "patch_size": 16, "num_frames": 4, "tubelet_size": 2,
            "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64}
    return VideoMAE(**{**tiny, **kwargs})


# --- SlowFast R50 (PySlowFast key names; flowkit's own module-for-module port) --------------------

_SLOWFAST_RECIPE = ImageRecipe(resize=256, crop=224, mean=(0.45,) * 3, std=(0.225,) * 3, antialias=False)


@register_model(
    "slowfast_r50", model_cls=SlowFast,
    preprocess={"rgb": partial(preprocess_clip_frames, recipe=_SLOWFAST_RECIPE)}, default_layer="pooled",
    layers={"pooled": 2304, "logits": 400}, map_layer="s5", map_shape=(2048, 7, 7), clip_len=32,
    min_clip_len=32, input_size=224, native_decode=True,
    checkpoints=("PySlowFast SLOWFAST_8x8_R50.pyth (model_state)",),
)
def _build_slowfast(stream: str = "rgb", **kwargs: object) -> SlowFast:
    """SlowFast R50 8x8: 32 fast frames (64 raw at stride 2, e.g. --stride-less 32-frame windows)."""
    return SlowFast(**kwargs)


@register_model(
    "slowfast_test", model_cls=SlowFast,
    preprocess={"rgb": partial(preprocess_clip_frames, recipe=ImageRecipe(
        resize=64, crop=64, mean=(0.45,) * 3, std=(0.225,) * 3, antialias=False))},
    default_layer="pooled", layers={"pooled": 576, "logits": 400}, map_layer="s5", map_shape=(512, 2, 2),
    clip_len=8, min_clip_len=8, input_size=64, native_decode=True,
)
def _build_slowfast_test(stream: str = "rgb", **kwargs: object) -> SlowFast:
    """Tiny SlowFast (width 16, 8 fast frames, 64 px) with the same key names, for tests."""
    return SlowFast(**{"width": 16, "num_frames": 8, "crop": 64, **kwargs})


# --- I3D ResNet-50 (Tushar-N/pytorch-resnet3d i3d_r50_kinetics.pth; flowkit's port) ---------------

_I3D_R50_RECIPE = ImageRecipe(resize=256, crop=224, mean=(0.45,) * 3, std=(0.225,) * 3)


@register_model(
    "i3d_r50", model_cls=I3DResNet50,
    preprocess={"rgb": partial(preprocess_clip_frames, recipe=_I3D_R50_RECIPE)}, default_layer="avgpool",
    layers={"avgpool": 2048, "logits": 400}, map_layer="layer4", map_shape=(2048, 7, 7), clip_len=32,
    min_clip_len=8, input_size=224, native_decode=True,
    checkpoints=("Tushar-N i3d_r50_kinetics.pth",),
)
def _build_i3d_r50(stream: str = "rgb", **kwargs: object) -> I3DResNet50:
    """I3D ResNet-50 (Kinetics-400), 32-frame clips by default."""
    return I3DResNet50(**kwargs)


@register_model(
    "i3d_r50_nl", model_cls=I3DResNet50,
    preprocess={"rgb": partial(preprocess_clip_frames, recipe=_I3D_R50_RECIPE)}, default_layer="avgpool",
    layers={"avgpool": 2048, "logits": 400}, map_layer="layer4", map_shape=(2048, 7, 7), clip_len=32,
    min_clip_len=8, input_size=224, native_decode=True,
    checkpoints=("Tushar-N i3d_r50_nl_kinetics.pth",),
)
def _build_i3d_r50_nl(stream: str = "rgb", **kwargs: object) -> I3DResNet50:
    """I3D ResNet-50 with non-local blocks (layer2: 2, layer3: 3), Kinetics-400."""
    return I3DResNet50(**{"non_local": True, **kwargs})


@register_model(
    "i3d_r50_test", model_cls=I3DResNet50,
    preprocess={"rgb": partial(preprocess_clip_frames, recipe=ImageRecipe(
        resize=64, crop=64, mean=(0.45,) * 3, std=(0.225,) * 3))},
    default_layer="avgpool", layers={"avgpool": 256, "logits": 400}, map_layer="layer4",
    map_shape=(256, 2, 2), clip_len=8, min_clip_len=8, input_size=64, native_decode=True,
)
def _build_i3d_r50_test(stream: str = "rgb", **kwargs: object) -> I3DResNet50:
    """Tiny I3D ResNet-50 (width 8) with the same key names, for tests."""
    return I3DResNet50(**{"width": 8, **kwargs})
