"""Model registry: name -> model factory, preprocessing per stream, layers and clip lengths.

``create_model("i3d", stream="flow")`` builds a network in eval mode with random weights; load
weights with :func:`flowkit.models.weights.load_checkpoint`. ``c3d_test`` and ``i3d_test`` are
tiny variants (channels / 16, same key names) for tests and smoke runs.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import partial

import torch
from torch import nn

from flowkit.errors import ConfigError
from flowkit.models.c3d import C3D
from flowkit.models.i3d import I3D
from flowkit.models.preprocess import preprocess_c3d, preprocess_i3d_flow, preprocess_i3d_rgb
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
    """Decorator registering a model factory under ``name`` with its ModelSpec fields."""

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
