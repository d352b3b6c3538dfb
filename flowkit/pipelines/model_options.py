"""Model-dependent options of `flowkit features`: constructor kwargs, test-time crops, preprocessing."""

from __future__ import annotations

from typing import Any

from flowkit.errors import ConfigError
from flowkit.models.crops import CROP_COUNTS, apply_crops, crop_boxes


def model_kwargs(cfg: Any) -> dict[str, Any]:
    """Constructor kwargs from the options that apply to the model family (C3D mode, I3D compat)."""
    from flowkit.models import get_model_spec

    cls = get_model_spec(cfg.model).model_cls.__name__
    if cls == "C3D":
        return {"mode": cfg.c3d_mode}
    if cls == "I3D":
        return {"compat": cfg.i3d_compat}
    return {}


def check_crops(cfg: Any, spec: Any) -> None:
    """--crops is 1, 3 or 10 (C3D: 1, its mean volume is tied to the centre crop); fixed clip lengths."""
    if cfg.crops not in CROP_COUNTS:
        raise ConfigError(f"--crops must be one of {', '.join(map(str, CROP_COUNTS))}, got {cfg.crops}")
    if cfg.crops > 1 and spec.model_cls.__name__ == "C3D":
        raise ConfigError("--crops 3/10 is not available for C3D (its mean volume is set at the centre crop)")
    fixed = spec.kind == "clip" and spec.min_clip_len == spec.clip_len
    if fixed and cfg.clip_len is not None and cfg.clip_len != spec.clip_len:
        raise ConfigError(f"{cfg.model} takes exactly {spec.clip_len}-frame clips (its positional "
                          f"tables or fc6 are sized for them), got --clip-len {cfg.clip_len}")


def cropped_preprocessor(spec: Any, stream: str, cfg: Any) -> Any:
    """Window preprocessing returning (crops, C, T, S, S) for crops > 1, else (C, T, S, S).

    torchvision video models crop in their own preprocessing; I3D is preprocessed uncropped
    (resized, scaled) and then cut into the crop boxes; a flipped flow crop has its x negated.
    """
    fn = spec.preprocess[stream]
    if spec.native_decode:
        return lambda frames: fn(frames, crops=cfg.crops)
    size = spec.input_size

    def run(data: Any) -> Any:
        if stream == "flow":
            values, kwargs = flow_input(data, cfg)
            full = fn(values, crop=None, **kwargs)
        else:
            full = fn(data, crop=None)
        boxes = crop_boxes(full.shape[-2], full.shape[-1], size, cfg.crops)
        return apply_crops(full, boxes, channel_axis=0, flow=stream == "flow")

    return run


def flow_engine_params(cfg: Any) -> dict[str, Any]:
    """Engine parameters of the I3D flow stream: RAFT's weights; video_features keeps its padding."""
    if cfg.flow_algorithm != "raft":
        return {}
    if cfg.raft_weights is None:
        raise ConfigError("--flow-algorithm raft needs --raft-weights PATH (local torchvision RAFT weights)")
    params: dict[str, Any] = {"weights": str(cfg.raft_weights), "model": cfg.raft_model,
                              "iterations": cfg.raft_iterations}
    if cfg.i3d_compat == "video_features":
        params["keep_padding"] = True  # video_features centre-crops the padded flow
    return params


def flow_input(flows: Any, cfg: Any) -> tuple[Any, dict[str, Any]]:
    """(flow, keyword arguments) for the I3D flow preprocessing.

    With ``--i3d-compat video_features --flow-algorithm raft`` the flow goes through video_features'
    ``Clamp(-20, 20)``, ``ToUInt8`` (round(128 + 255/40 * flow), not clipped: +20 gives 256) and
    ``ScaleTo1_1`` (2q/255 - 1), handed on unclipped with bound 1 (256 keeps its 1.0078).
    """
    import numpy as np

    if cfg.i3d_compat != "video_features" or cfg.flow_algorithm != "raft" or cfg.flow_dir:
        return flows, {"bound": cfg.bound}
    clamped = np.clip(np.asarray(flows, np.float32), -20.0, 20.0)
    levels = np.round(np.float32(128) + np.float32(255 / 40) * clamped)
    unit = np.float32(2) * levels / np.float32(255) - np.float32(1)
    return unit, {"bound": 1.0, "clip": False}
