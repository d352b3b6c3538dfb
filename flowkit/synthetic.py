"""Synthetic videos with known motion: a smooth random texture translated by (dx, dy) pixels per frame.

Used by the tests, the benchmarks, `flowkit doctor` and examples/make_samples.py, so ground-truth flow is
always at hand without downloading anything.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator
from pathlib import Path

import cv2
import numpy as np


def texture(height: int, width: int, seed: int = 0) -> np.ndarray:
    """A smooth multi-scale random BGR texture (uint8) with gradients everywhere, good for flow."""
    rng = np.random.default_rng(seed)
    acc = np.zeros((height, width, 3), np.float32)
    for cell, weight in ((4, 0.5), (12, 0.3), (32, 0.2)):
        small = rng.random((max(2, height // cell), max(2, width // cell), 3), dtype=np.float32)
        acc += weight * cv2.resize(small, (width, height), interpolation=cv2.INTER_CUBIC)
    acc = (acc - acc.min()) / max(float(acc.max() - acc.min()), 1e-6)
    return np.clip(acc * 235 + 10, 0, 255).astype(np.uint8)


def shift(image: np.ndarray, dx: float, dy: float) -> np.ndarray:
    """Translate an image by (dx, dy) pixels (content moves right/down), reflecting at the border."""
    matrix = np.float32([[1, 0, dx], [0, 1, dy]])
    h, w = image.shape[:2]
    return cv2.warpAffine(image, matrix, (w, h), flags=cv2.INTER_CUBIC, borderMode=cv2.BORDER_REFLECT_101)


def moving_frames(n: int, height: int, width: int, dx: float, dy: float, seed: int = 0) -> list[np.ndarray]:
    """n BGR frames where frame k is the texture shifted by (k*dx, k*dy): true flow is (dx, dy)."""
    return list(iter_moving_frames(n, height, width, dx, dy, seed))


def iter_moving_frames(
    n: int, height: int, width: int, dx: float, dy: float, seed: int = 0
) -> Iterator[np.ndarray]:
    """Like moving_frames, one frame at a time (long videos without holding them in memory)."""
    base = texture(height + 64, width + 64, seed)
    for k in range(n):
        yield np.ascontiguousarray(shift(base, k * dx, k * dy)[32 : 32 + height, 32 : 32 + width])


def write_video(
    path: str | Path, frames: Iterable[np.ndarray], fps: float = 25.0, fourcc: str = "mp4v"
) -> Path:
    """Encode BGR frames (any iterable, consumed lazily) into a video file; mp4v in .mp4, MJPG for .avi."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    stream = iter(frames)
    first = next(stream)
    h, w = first.shape[:2]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*fourcc), fps, (w, h))
    if not writer.isOpened():
        raise OSError(f"{path}: OpenCV cannot write {fourcc} video here")
    writer.write(first)
    for frame in stream:
        writer.write(frame)
    writer.release()
    return path


def moving_video(
    path: str | Path,
    n: int = 12,
    height: int = 64,
    width: int = 64,
    dx: float = 1.0,
    dy: float = 0.0,
    fps: float = 25.0,
    seed: int = 0,
    fourcc: str = "mp4v",
) -> Path:
    """Write a video of a texture moving by (dx, dy) px per frame; returns its path."""
    return write_video(path, iter_moving_frames(n, height, width, dx, dy, seed), fps, fourcc)


def write_video_av(
    path: str | Path, frames: Iterable[np.ndarray], fps: int = 25, codec: str = "libx264"
) -> Path:
    """Encode BGR frames with PyAV (H.264 by default, what real datasets hold); frames are consumed lazily."""
    import av

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    stream_frames = iter(frames)
    first = next(stream_frames)
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=fps)
        stream.height, stream.width = first.shape[:2]
        stream.pix_fmt = "yuv420p"
        for image in itertools.chain([first], stream_frames):
            container.mux(stream.encode(av.VideoFrame.from_ndarray(image, format="bgr24")))
        container.mux(stream.encode())
    return path
