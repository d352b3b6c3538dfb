"""Published preprocessing of the frame encoders and torchvision video models, on torch tensors.

Input is decoded BGR uint8 frames (N, H, W, 3). Each recipe resizes (short side, long side
truncated as torchvision's ``resize(int)``; or an exact H x W), rounds to uint8 levels as a PIL or
uint8-tensor pipeline does, crops (centre by default, or the boxes of :mod:`flowkit.models.crops`),
scales to [0, 1] and normalises with the recipe's mean/std. Interpolation runs through
``torch.nn.functional.interpolate``: torchvision's tensor path (antialias=True for the image
models, as their ``ImageClassification`` preset; False for the video models, as ``VideoClassification``).
PIL-based pipelines (CLIP's own ``preprocess``) differ in the last uint8 level at some pixels.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from flowkit.models.crops import apply_crops, crop_boxes
from flowkit.models.preprocess import resize_short_side

__all__ = ["CLIP_MEAN", "CLIP_STD", "IMAGENET_MEAN", "IMAGENET_STD", "ImageRecipe", "KINETICS_MEAN",
           "KINETICS_STD", "preprocess_clip_frames", "preprocess_images", "resize_frames"]

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)  # OpenAI CLIP (open_clip OPENAI_DATASET_MEAN)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
KINETICS_MEAN, KINETICS_STD = (0.43216, 0.394666, 0.37645), (0.22803, 0.22145, 0.216989)


@dataclass(frozen=True)
class ImageRecipe:
    """Resize (short side, or exact ``resize_hw``), interpolation, crop side and normalisation."""

    resize: int | None
    crop: int
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    interpolation: str = "bilinear"
    antialias: bool = True
    resize_hw: tuple[int, int] | None = None

    def size_for(self, height: int, width: int) -> tuple[int, int]:
        """Resized (H, W) of a frame of this size."""
        if self.resize_hw is not None:
            return self.resize_hw
        if self.resize is None:
            return height, width
        return resize_short_side(height, width, self.resize)


def _to_rgb_tensor(frames: np.ndarray) -> torch.Tensor:
    """BGR uint8 (N, H, W, 3) -> float RGB (N, 3, H, W) with values 0..255."""
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8 or len(frames) == 0:
        raise ValueError(f"frames must be uint8 BGR (N, H, W, 3), got {frames.dtype} {frames.shape}")
    rgb = torch.from_numpy(np.ascontiguousarray(frames[..., ::-1]))
    return rgb.permute(0, 3, 1, 2).float()


def resize_frames(x: torch.Tensor, recipe: ImageRecipe) -> torch.Tensor:
    """Resize float (N, C, H, W) 0..255 images by the recipe, rounded to uint8 levels."""
    size = recipe.size_for(*x.shape[-2:])
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    out = F.interpolate(x, size=size, mode=recipe.interpolation, align_corners=False,
                        antialias=recipe.antialias)
    return out.round_().clamp_(0, 255)


def _normalise(x: torch.Tensor, recipe: ImageRecipe, channel_axis: int) -> torch.Tensor:
    shape = [1] * x.ndim
    shape[channel_axis] = 3
    mean = torch.tensor(recipe.mean).view(shape)
    std = torch.tensor(recipe.std).view(shape)
    return (x / 255.0 - mean) / std


def preprocess_images(frames: np.ndarray, recipe: ImageRecipe, crops: int = 1) -> torch.Tensor:
    """BGR uint8 (N, H, W, 3) -> normalised RGB crops (N, crops, 3, S, S)."""
    x = resize_frames(_to_rgb_tensor(frames), recipe)
    boxes = crop_boxes(x.shape[-2], x.shape[-1], recipe.crop, crops)
    cropped = apply_crops(x, boxes, channel_axis=1).transpose(0, 1)  # (N, K, 3, S, S)
    return _normalise(cropped, recipe, channel_axis=2).contiguous()


def preprocess_clip_frames(frames: np.ndarray, recipe: ImageRecipe, crops: int = 1) -> torch.Tensor:
    """BGR uint8 clip (T, H, W, 3) -> (3, T, S, S), or (crops, 3, T, S, S) when crops > 1.

    torchvision's ``VideoClassification``: resize, centre crop, /255, normalise, (C, T, H, W).
    """
    x = resize_frames(_to_rgb_tensor(frames), recipe)  # (T, 3, H, W)
    boxes = crop_boxes(x.shape[-2], x.shape[-1], recipe.crop, crops)
    cropped = apply_crops(x.transpose(0, 1), boxes, channel_axis=1)  # (K, 3, T, S, S)
    out = _normalise(cropped, recipe, channel_axis=1).contiguous()
    return out[0] if crops == 1 else out
