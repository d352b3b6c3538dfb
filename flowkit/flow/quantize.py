"""8-bit flow quantization as written by denseflow/dense_flow: q = clip(cvRound(255*(v+b)/(2b)), 0, 255)."""

from __future__ import annotations

import numpy as np


def quantize(flow: np.ndarray, bound: float = 20.0) -> np.ndarray:
    """Map flow in pixels to uint8 levels; zero flow maps to 128 (round half to even, like cvRound)."""
    if bound <= 0:
        raise ValueError(f"bound must be positive, got {bound}")
    scaled = np.add(flow, np.float32(bound), dtype=np.float32)  # one temporary, updated in place
    scaled *= np.float32(255.0 / (2.0 * bound))
    np.rint(scaled, out=scaled)
    np.clip(scaled, 0, 255, out=scaled)
    return scaled.astype(np.uint8)


def dequantize(levels: np.ndarray, bound: float = 20.0) -> np.ndarray:
    """Inverse of :func:`quantize` up to half a level: v = q*2b/255 - b."""
    if bound <= 0:
        raise ValueError(f"bound must be positive, got {bound}")
    return np.asarray(levels, dtype=np.float32) * np.float32(2.0 * bound / 255.0) - np.float32(bound)
