"""Clip preprocessing for C3D and I3D: pure functions from decoded frames to model input tensors.

Frames come from :mod:`flowkit.video` as BGR uint8 arrays (T, H, W, 3); flow as float32 pixels
(T, 2, H, W) or as the uint8 levels written by ``extract-flow``. Resizing uses OpenCV INTER_LINEAR,
which (unlike PIL) does not antialias when downscaling; the peers that use PIL (video_features'
I3D resize, skimage in DavideA/yyuanad) therefore differ in the last bits.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np
import torch

from flowkit.errors import CheckpointError
from flowkit.flow.quantize import dequantize

__all__ = [
    "C3D_DAVIDEA_PREDICT",
    "C3D_SPORTS1M_MEAN_BGR",
    "center_crop_offsets",
    "load_mean_file",
    "preprocess_c3d",
    "preprocess_i3d_flow",
    "preprocess_i3d_rgb",
    "resize_short_side",
]

# Per-channel Sports-1M mean (B, G, R) reported in DavideA/c3d-pytorch#1 from c3d_mean.npy.
C3D_SPORTS1M_MEAN_BGR = (90.25, 97.66, 101.41)
# DavideA's predict.py: RGB, no mean, resize to 112x200 and keep columns 44:156 (a centre crop).
C3D_DAVIDEA_PREDICT = {"rgb": True, "mean": None, "resize_hw": (112, 200)}


def _check_frames(frames: np.ndarray) -> np.ndarray:
    """Return frames as an array after checking they are (T, H, W, 3) uint8 BGR images."""
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.shape[0] == 0:
        raise ValueError(f"frames must be (T, H, W, 3) with T >= 1, got {frames.shape}")
    if frames.dtype != np.uint8:
        raise ValueError(f"frames must be uint8 BGR, got {frames.dtype}")
    return frames


def center_crop_offsets(
    height: int, width: int, crop: int, rounding: str = "floor"
) -> tuple[int, int]:
    """Top-left (row, col) of a centred ``crop`` square: floor((H-c)/2), or numpy half-to-even."""
    if height < crop or width < crop:
        raise ValueError(f"cannot crop {crop}x{crop} from {height}x{width}")
    if rounding == "floor":
        return (height - crop) // 2, (width - crop) // 2
    if rounding == "round":  # piergiaj's CenterCrop: np.round, half to even
        return int(np.round((height - crop) / 2)), int(np.round((width - crop) / 2))
    raise ValueError(f"rounding must be 'floor' or 'round', got {rounding!r}")


def _resize_all(images: np.ndarray, height: int, width: int) -> np.ndarray:
    """Resize (T, H, W, C) images to (T, height, width, C) with INTER_LINEAR; no-op if same size."""
    if images.shape[1:3] == (height, width):
        return images
    out = [cv2.resize(img, (width, height), interpolation=cv2.INTER_LINEAR) for img in images]
    # cv2 drops a trailing channel axis of size 1; flow has 2 channels and frames 3, so it stays.
    return np.stack(out)


def resize_short_side(height: int, width: int, short_side: int) -> tuple[int, int]:
    """(H, W) with the short side set to ``short_side``; the long side truncated, as peers do."""
    if height <= width:
        return short_side, int(width * short_side / height)
    return int(height * short_side / width), short_side


def _mean_array(mean: np.ndarray | Sequence[float] | None, clip_len: int, crop_box: tuple,
                resized_hw: tuple[int, int]) -> np.ndarray | None:
    """Broadcastable BGR mean for (T, h, w, 3): per-channel, or the full volume at the crop box."""
    if mean is None:
        return None
    mean = np.asarray(mean, dtype=np.float32)
    if mean.shape == (3,):
        return mean
    volume = mean.reshape(mean.shape[-4:]) if mean.ndim == 5 and mean.shape[0] == 1 else mean
    if volume.ndim != 4 or volume.shape[0] != 3 or volume.shape[2:] != resized_hw:
        raise ValueError(f"mean volume must be (1, 3, L, {resized_hw[0]}, {resized_hw[1]}), "
                         f"got {mean.shape}")
    if volume.shape[1] != clip_len:
        raise ValueError(f"mean volume has {volume.shape[1]} frames but the clip has {clip_len}")
    top, left, size = crop_box
    # Caffe subtracts mean[c, l, h + h_off, w + w_off]: the volume at the crop position.
    return volume[:, :, top:top + size, left:left + size].transpose(1, 2, 3, 0)


def preprocess_c3d(
    frames: np.ndarray,
    mean: np.ndarray | Sequence[float] | None = C3D_SPORTS1M_MEAN_BGR,
    *,
    rgb: bool = False,
    resize_hw: tuple[int, int] = (128, 171),
    crop: int = 112,
) -> torch.Tensor:
    """BGR uint8 (T, H, W, 3) -> C3D input (3, T, 112, 112), Caffe convention by default.

    Default (facebook/C3D v1.0): resize to 171x128, subtract the BGR mean (per channel, or a full
    (1, 3, 16, 128, 171) volume from :func:`load_mean_file`), centre crop 112 at (8, 29), BGR order.
    DavideA/yyuanad legacy input: ``rgb=True, mean=None`` (and ``**C3D_DAVIDEA_PREDICT`` for the
    demo's 112x200 resize). ``mean`` is always given in B, G, R order.
    """
    frames = _check_frames(frames)
    resized = _resize_all(frames, *resize_hw)
    top, left = center_crop_offsets(*resize_hw, crop)
    clip = resized[:, top:top + crop, left:left + crop].astype(np.float32)
    mean_bgr = _mean_array(mean, len(frames), (top, left, crop), tuple(resize_hw))
    if mean_bgr is not None:
        clip -= mean_bgr
    if rgb:
        clip = clip[..., ::-1]
    return torch.from_numpy(np.ascontiguousarray(clip.transpose(3, 0, 1, 2)))


def _resize_crop(images: np.ndarray, short_side: int | None, crop: int | None,
                 rounding: str) -> np.ndarray:
    """Resize (T, H, W, C) to the short side (None keeps the size), then centre crop (None: no crop)."""
    if short_side is not None:
        images = _resize_all(images, *resize_short_side(*images.shape[1:3], short_side))
    if crop is None:  # the caller cuts several crops (flowkit.models.crops)
        return images
    top, left = center_crop_offsets(*images.shape[1:3], crop, rounding)
    return images[:, top:top + crop, left:left + crop]


def preprocess_i3d_rgb(
    frames: np.ndarray,
    *,
    short_side: int | None = 256,
    crop: int | None = 224,
    crop_rounding: str = "floor",
) -> torch.Tensor:
    """BGR uint8 (T, H, W, 3) -> I3D RGB input (3, T, 224, 224) in [-1, 1] (DeepMind recipe).

    Short side to 256 (INTER_LINEAR), centre crop 224, x/127.5 - 1. Crop offsets are floored like
    video_features; ``crop_rounding="round"`` gives piergiaj's half-to-even offsets.
    """
    frames = _check_frames(frames)
    rgb = frames[..., ::-1]
    clip = _resize_crop(np.ascontiguousarray(rgb), short_side, crop, crop_rounding)
    clip = clip.astype(np.float32) / np.float32(127.5) - np.float32(1.0)
    return torch.from_numpy(np.ascontiguousarray(clip.transpose(3, 0, 1, 2)))


def preprocess_i3d_flow(
    flow: np.ndarray,
    *,
    bound: float = 20.0,
    short_side: int | None = 256,
    crop: int | None = 224,
    crop_rounding: str = "floor",
    clip: bool = True,
) -> torch.Tensor:
    """Flow (T, 2, H, W) -> I3D flow input (2, T, 224, 224) in [-1, 1]; channel 0 is x.

    ``clip=False`` takes float flow already scaled by ``bound`` as it is (video_features' quantised
    flow reaches 256/127.5 - 1 = 1.0078).

    Float flow is in pixels: clipped to +-bound and divided by bound. uint8 flow holds the levels
    of :func:`flowkit.flow.quantize.quantize` (q -> dequantize(q, bound) / bound = q/127.5 - 1).
    The values are resized as they are, not rescaled: compute flow at the target size instead.
    """
    flow = np.asarray(flow)
    if flow.ndim != 4 or flow.shape[1] != 2 or flow.shape[0] == 0:
        raise ValueError(f"flow must be (T, 2, H, W) with T >= 1, got {flow.shape}")
    if flow.dtype == np.uint8:
        unit = dequantize(flow, bound) / np.float32(bound)
    elif np.issubdtype(flow.dtype, np.floating):
        unit = flow.astype(np.float32)
        unit = (np.clip(unit, -bound, bound) if clip else unit) / np.float32(bound)
    else:
        raise ValueError(f"flow must be float (pixels) or uint8 (levels), got {flow.dtype}")
    clip = _resize_crop(unit.transpose(0, 2, 3, 1), short_side, crop, crop_rounding)
    return torch.from_numpy(np.ascontiguousarray(clip.transpose(3, 0, 1, 2)))


def _read_varint(buf: bytes, pos: int) -> tuple[int, int]:
    """Decode one protobuf base-128 varint at ``pos``; return (value, next position)."""
    value, shift = 0, 0
    while True:
        if pos >= len(buf):
            raise ValueError("truncated varint")
        byte = buf[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, pos
        shift += 7
        if shift > 63:
            raise ValueError("varint longer than 10 bytes")


def _parse_blobproto(buf: bytes) -> np.ndarray:
    """Decode a C3D BlobProto (num=1, channels=2, length=3, height=4, width=5, data=6)."""
    dims = {1: 1, 2: 1, 3: 1, 4: 1, 5: 1}
    chunks: list[np.ndarray] = []
    pos = 0
    while pos < len(buf):
        tag, pos = _read_varint(buf, pos)
        field, wire = tag >> 3, tag & 7
        if wire == 0:
            value, pos = _read_varint(buf, pos)
            if field in dims:
                dims[field] = value
        elif wire == 2:
            size, pos = _read_varint(buf, pos)
            if pos + size > len(buf):
                raise ValueError("truncated length-delimited field")
            if field == 6:  # packed repeated float
                chunks.append(np.frombuffer(buf[pos:pos + size], dtype="<f4"))
            pos += size
        elif wire in (1, 5):
            width = 8 if wire == 1 else 4
            if pos + width > len(buf):
                raise ValueError("truncated fixed-width field")
            if field == 6 and wire == 5:  # unpacked repeated float
                chunks.append(np.frombuffer(buf[pos:pos + 4], dtype="<f4"))
            pos += width
        else:
            raise ValueError(f"unsupported wire type {wire} for field {field}")
    data = np.concatenate(chunks) if chunks else np.zeros(0, np.float32)
    shape = tuple(dims[k] for k in (1, 2, 3, 4, 5))
    if data.size != math.prod(shape):
        raise ValueError(f"data holds {data.size} floats but the header says {shape}")
    return data.reshape(shape).astype(np.float32)


def load_mean_file(path: str | Path) -> np.ndarray:
    """Read a C3D mean volume (.npy or C3D .binaryproto) as float32 (1, 3, L, H, W), BGR order."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(path, "mean file not found")
    try:
        if path.suffix == ".npy":
            mean = np.load(path, allow_pickle=False).astype(np.float32)
        else:
            mean = _parse_blobproto(path.read_bytes())
    except (ValueError, OSError) as exc:
        raise CheckpointError(path, f"cannot read mean file: {exc}") from exc
    if mean.ndim == 4:
        mean = mean[None]
    if mean.ndim != 5 or mean.shape[:2] != (1, 3):
        raise CheckpointError(path, f"mean must be (1, 3, L, H, W), got {mean.shape}")
    return mean
