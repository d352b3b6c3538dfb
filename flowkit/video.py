"""Open, probe and decode videos sequentially: BGR uint8 frames with stream timestamps, bounded memory.

Frame i is the i-th decoded frame; the frame count is what was decoded (never CAP_PROP_FRAME_COUNT, which is
wrong on VFR/MKV files); timestamps come from the stream (CAP_PROP_POS_MSEC is the PTS of the frame just
decoded), not i/fps. Seeking is never used.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from flowkit.errors import ConfigError, VideoError

log = logging.getLogger("flowkit")

VIDEO_EXTENSIONS = frozenset(
    {
        ".mp4",
        ".avi",
        ".mkv",
        ".webm",
        ".mov",
        ".m4v",
        ".mpg",
        ".mpeg",
        ".flv",
        ".wmv",
        ".3gp",
        ".ts",
    }
)


@dataclass(frozen=True)
class Resize:
    """Target geometry: short side S (aspect kept) or an exact W x H; neither means native size."""

    short_side: int | None = None
    size: tuple[int, int] | None = None

    def __post_init__(self) -> None:
        if self.short_side is not None and self.size is not None:
            raise ConfigError("give either a short side or a WxH size, not both")
        if self.short_side is not None and self.short_side < 1:
            raise ConfigError(f"short side must be >= 1, got {self.short_side}")
        if self.size is not None and min(self.size) < 1:
            raise ConfigError(f"size must be positive, got {self.size[0]}x{self.size[1]}")

    def target(self, width: int, height: int) -> tuple[int, int]:
        """Output (width, height) for an input of the given size (denseflow's rounding of the long side)."""
        if self.size is not None:
            return self.size
        if self.short_side is None:
            return width, height
        s = self.short_side
        if width <= height:
            return s, max(1, int(round(height * s / width)))
        return max(1, int(round(width * s / height))), s

    def apply(self, image: np.ndarray) -> np.ndarray:
        """Resize a frame with OpenCV INTER_LINEAR; a no-op at native size."""
        h, w = image.shape[:2]
        tw, th = self.target(w, h)
        if (tw, th) == (w, h):
            return image
        return cv2.resize(image, (tw, th), interpolation=cv2.INTER_LINEAR)


def parse_size(text: str) -> tuple[int, int]:
    """Parse 'WxH' (e.g. '340x256') into (width, height)."""
    parts = text.lower().split("x")
    if len(parts) != 2 or not all(p.strip().isdigit() for p in parts):
        raise ConfigError(f"size must look like WxH (e.g. 340x256), got {text!r}")
    w, h = (int(p) for p in parts)
    if w < 1 or h < 1:
        raise ConfigError(f"size must be positive, got {text!r}")
    return w, h


@dataclass(frozen=True)
class VideoInfo:
    """What the container header says; header_frames and fps may be wrong and are informative only."""

    path: str
    width: int
    height: int
    fps: float
    header_frames: int


@dataclass(frozen=True)
class Frame:
    """One decoded frame: its index, its stream timestamp in seconds, and the (resized) BGR image."""

    index: int
    timestamp: float
    image: np.ndarray


def to_gray(bgr: np.ndarray) -> np.ndarray:
    """BGR uint8 -> gray uint8 (OpenCV weights), the input of every flow engine."""
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY)


def _check_file(path: Path) -> None:
    if not path.exists():
        raise VideoError(path, "file not found")
    if path.is_dir():
        raise VideoError(path, "is a directory, not a video file")
    if not os.access(path, os.R_OK):
        raise VideoError(path, "permission denied (file is not readable)")
    if path.stat().st_size == 0:
        raise VideoError(path, "empty file (0 bytes)")


def _open(path: Path) -> cv2.VideoCapture:
    _check_file(path)
    cap = cv2.VideoCapture(str(path), cv2.CAP_FFMPEG)
    if not cap.isOpened():
        cap.release()
        raise VideoError(
            path, "not a video or unreadable container (the decoder could not open it)"
        )
    return cap


def _header(cap: cv2.VideoCapture, path: Path) -> VideoInfo:
    return VideoInfo(
        path=str(path),
        width=int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)),
        height=int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT)),
        fps=float(cap.get(cv2.CAP_PROP_FPS) or 0.0),
        header_frames=int(cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0),
    )


def probe(path: str | Path) -> VideoInfo:
    """Read the header of a video; raises VideoError naming the file when it cannot be opened."""
    path = Path(path)
    cap = _open(path)
    try:
        return _header(cap, path)
    finally:
        cap.release()


@dataclass
class VideoReader:
    """Sequential decoder: iterate it for Frames; afterwards `num_frames` is the decoded count.

    Memory stays bounded: one frame is held at a time. Raises VideoError when the file cannot be
    opened or yields no decodable frame.
    """

    path: Path
    resize: Resize = field(default_factory=Resize)
    info: VideoInfo | None = None
    num_frames: int = 0
    warnings: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.path = Path(self.path)

    def __iter__(self) -> Iterator[Frame]:
        cap = _open(self.path)
        try:
            self.info = _header(cap, self.path)
            yield from self._decode(cap)
        finally:
            cap.release()
        self._check_count()

    def _decode(self, cap: cv2.VideoCapture) -> Iterator[Frame]:
        fps = self.info.fps if self.info and self.info.fps > 0 else 0.0
        last_ts = -1.0
        self.num_frames = 0
        while True:
            ok, image = cap.read()
            if not ok or image is None:
                break
            ts = cap.get(cv2.CAP_PROP_POS_MSEC) / 1000.0
            if ts < last_ts or (ts == last_ts and self.num_frames > 0):
                # Some containers report no PTS; fall back to the nominal rate for this frame only.
                ts = last_ts + (1.0 / fps if fps > 0 else 0.0)
            last_ts = ts
            if image.ndim == 2:
                image = cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
            yield Frame(self.num_frames, ts, self.resize.apply(image))
            self.num_frames += 1
        if self.num_frames == 0:
            raise VideoError(self.path, "no decodable frames")

    def _check_count(self) -> None:
        header = self.info.header_frames if self.info else 0
        if header > 0 and header != self.num_frames:
            msg = f"header says {header} frames, decoded {self.num_frames}"
            self.warnings.append(msg)
            log.warning("%s: %s", self.path, msg)


def read_all(path: str | Path, resize: Resize | None = None) -> tuple[list[Frame], VideoReader]:
    """Decode a whole (short) video into memory; for tests and tiny clips only."""
    reader = VideoReader(Path(path), resize or Resize())
    return list(reader), reader


def scan_timestamps(path: str | Path) -> tuple[np.ndarray, VideoInfo]:
    """Decode every frame without converting it and return the stream timestamps (seconds) and header.

    Samplers that need the count or timestamps before choosing (fps, uniform, TSN) run this pass first;
    it costs a decode but keeps memory bounded, unlike holding the whole video.
    """
    path = Path(path)
    cap = _open(path)
    try:
        info = _header(cap, path)
        stamps: list[float] = []
        step = 1.0 / info.fps if info.fps > 0 else 0.0
        while cap.grab():
            ts = cap.get(cv2.CAP_PROP_POS_MSEC) / 1000.0
            if stamps and ts <= stamps[-1]:
                ts = stamps[-1] + step
            stamps.append(ts)
    finally:
        cap.release()
    if not stamps:
        raise VideoError(path, "no decodable frames")
    return np.asarray(stamps, dtype=np.float64), info
