"""Synthetic gray frame pairs with known motion for flow tests (seeded, no files)."""

from __future__ import annotations

import cv2
import numpy as np

MARGIN = 24  # the texture is generated larger and cropped, so no border enters the frame


def texture(h: int, w: int, seed: int = 0, sigma: float = 1.5) -> np.ndarray:
    """Smooth random texture, float32 in 0..255, (h + 2*MARGIN, w + 2*MARGIN)."""
    rng = np.random.default_rng(seed)
    noise = rng.random((h + 2 * MARGIN, w + 2 * MARGIN)).astype(np.float32)
    tex = cv2.GaussianBlur(noise, (0, 0), sigma)
    tex -= tex.min()
    return tex * np.float32(255.0 / tex.max())


def moved_pair(h: int, w: int, dx: float, dy: float, angle: float = 0.0, noise: float = 0.0,
               seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(prev, nxt, flow): nxt is prev's texture moved by (dx, dy) and rotated by `angle` degrees
    about the centre; flow (2, h, w) is the true motion prev -> nxt (x right, y down)."""
    big = texture(h, w, seed)
    bh, bw = big.shape
    m = cv2.getRotationMatrix2D((bw / 2.0, bh / 2.0), angle, 1.0)
    m[:, 2] += (dx, dy)
    moved = cv2.warpAffine(big, m, (bw, bh), flags=cv2.INTER_CUBIC)
    ys, xs = np.mgrid[0:bh, 0:bw].astype(np.float64)
    fx = m[0, 0] * xs + m[0, 1] * ys + m[0, 2] - xs
    fy = m[1, 0] * xs + m[1, 1] * ys + m[1, 2] - ys
    rng = np.random.default_rng(seed + 1)
    crop = (slice(MARGIN, MARGIN + h), slice(MARGIN, MARGIN + w))

    def frame(x: np.ndarray) -> np.ndarray:
        x = x[crop] + (rng.normal(0.0, noise, (h, w)) if noise else 0.0)
        return np.clip(np.rint(x), 0, 255).astype(np.uint8)

    flow = np.stack([fx[crop], fy[crop]]).astype(np.float32)
    return frame(big), frame(moved), flow


def pair_batch(n: int, h: int, w: int, seed: int = 0, max_shift: float = 2.0,
               noise: float = 0.0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """n pairs with random sub-pixel shifts and small rotations: (prev, nxt, flow) stacked."""
    rng = np.random.default_rng(seed)
    pairs = [moved_pair(h, w, *rng.uniform(-max_shift, max_shift, 2), rng.uniform(-1.0, 1.0),
                        noise, seed + 10 * i) for i in range(n)]
    return tuple(np.stack(x) for x in zip(*pairs, strict=True))  # type: ignore[return-value]


def epe(flow: np.ndarray, truth: np.ndarray, border: int = 8) -> float:
    """Mean end-point error over the interior (away from `border` pixels of each edge)."""
    inner = (..., slice(border, -border), slice(border, -border))
    diff = flow[inner] - truth[inner]
    return float(np.sqrt((diff**2).sum(axis=-3)).mean())
