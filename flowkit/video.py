"""Open, probe and decode videos sequentially: BGR uint8 frames with stream timestamps, bounded memory.

The decoder backends live in flowkit.decoders (pyav by default; opencv; torchcodec); frame folders in
flowkit.framefolder.

Frame i is the i-th decoded frame; the frame count is what was decoded (never CAP_PROP_FRAME_COUNT, which is
wrong on VFR/MKV files); timestamps come from the stream (CAP_PROP_POS_MSEC is the PTS of the frame just
decoded), not i/fps. Seeking is never used.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from flowkit.decoders import Backend, DecodeOptions, VideoInfo, open_backend
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
class Frame:
    """One decoded frame: its index, its stream timestamp in seconds, and the (resized) BGR image."""

    index: int
    timestamp: float
    image: np.ndarray


def to_gray(bgr: np.ndarray) -> np.ndarray:
    """BGR uint8 -> gray uint8 (OpenCV weights), the input of every flow engine."""
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY)


def probe(path: str | Path, options: DecodeOptions | None = None) -> VideoInfo:
    """Read the header of a video; raises VideoError naming the file when it cannot be opened."""
    backend = open_backend(Path(path), options or DecodeOptions())
    try:
        return backend.info
    finally:
        backend.close()


# A decode is truncated when it ends below this share of the header's count and this many frames short.
TRUNCATED_SHARE = 0.9
TRUNCATED_MIN_MISSING = 3


def decode_shortfall(decoded: int, header: int, errors: int) -> str | None:
    """Why a finished decode is suspect (None if it is not): far short of the header, or decoder errors.

    Short means fewer than 90 % of the header's frame count and at least 3 frames missing (headers are
    estimates on some containers, so a frame or two off is normal and only a warning).
    """
    short = header > 0 and decoded < TRUNCATED_SHARE * header and header - decoded >= TRUNCATED_MIN_MISSING
    if not short and not errors:
        return None
    parts = [f"decoded {decoded} of {header} frames the header announces" if header > 0
             else f"decoded {decoded} frames"]
    if errors:
        parts.append(f"{errors} decode error(s), corrupt data skipped")
    return "truncated or corrupt video: " + ", ".join(parts)


def check_size(path: Path, width: int, height: int, max_pixels: int) -> None:
    """Refuse frames above the size cap (from the header, before any frame is allocated)."""
    if width * height > max_pixels:
        raise VideoError(path, f"frame size {width}x{height} exceeds --max-pixels {max_pixels} "
                               f"({width * height} pixels); raise --max-pixels to decode it")


@dataclass
class VideoReader:
    """Sequential decoder: iterate it for Frames; afterwards `num_frames` is the decoded count.

    Memory stays bounded: one frame is held at a time. Raises VideoError when the file cannot be
    opened, yields no decodable frame, claims frames above `options.max_pixels`, or (unless
    `options.allow_truncated`) ends far short of its header or with decoder errors; an accepted
    shortfall is kept in `truncated`.
    """

    path: Path
    resize: Resize = field(default_factory=Resize)
    options: DecodeOptions = field(default_factory=DecodeOptions)
    info: VideoInfo | None = None
    num_frames: int = 0
    warnings: list[str] = field(default_factory=list)
    truncated: str | None = None

    def __post_init__(self) -> None:
        self.path = Path(self.path)

    def __iter__(self) -> Iterator[Frame]:
        backend = open_backend(self.path, self.options)
        try:
            self.info = backend.info
            check_size(self.path, self.info.width, self.info.height, self.options.max_pixels)
            yield from self._decode(backend)
            errors = backend.errors
        finally:
            backend.close()
        self._check_count(errors)

    def _decode(self, backend: Backend) -> Iterator[Frame]:
        fps = self.info.fps if self.info and self.info.fps > 0 else 0.0
        last_ts = -1.0
        self.num_frames = 0
        for image, ts in backend.frames():
            if ts is None or ts < last_ts or (ts == last_ts and self.num_frames > 0):
                # Some containers report no PTS; fall back to the nominal rate for this frame only.
                ts = last_ts + (1.0 / fps if fps > 0 else 0.0) if self.num_frames else 0.0
            last_ts = ts
            check_size(self.path, image.shape[1], image.shape[0], self.options.max_pixels)
            if image.ndim == 2:
                image = cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
            yield Frame(self.num_frames, ts, self.resize.apply(image))
            self.num_frames += 1
        if self.num_frames == 0:
            raise VideoError(self.path, "no decodable frames")

    def _check_count(self, errors: int) -> None:
        header = self.info.header_frames if self.info else 0
        self.truncated = accept_shortfall(self.path, self.num_frames, header, errors, self.options)
        if self.truncated is None and header > 0 and header != self.num_frames:
            msg = f"header says {header} frames, decoded {self.num_frames}"
            self.warnings.append(msg)
            log.warning("%s: %s", self.path, msg)


def accept_shortfall(path: Path, decoded: int, header: int, errors: int,
                     options: DecodeOptions) -> str | None:
    """Raise on a truncated decode unless allowed; returns the accepted shortfall (logged) or None."""
    why = decode_shortfall(decoded, header, errors)
    if why is None:
        return None
    if not options.allow_truncated:
        raise VideoError(path, f"{why} (--allow-truncated accepts it)")
    log.warning("%s: %s (accepted: --allow-truncated)", path, why)
    return why


def read_all(path: str | Path, resize: Resize | None = None,
             options: DecodeOptions | None = None) -> tuple[list[Frame], VideoReader]:
    """Decode a whole (short) video into memory; for tests and tiny clips only."""
    reader = VideoReader(Path(path), resize or Resize(), options or DecodeOptions())
    return list(reader), reader


def scan_timestamps(path: str | Path, options: DecodeOptions | None = None) -> tuple[np.ndarray, VideoInfo]:
    """Decode every frame without converting it and return the stream timestamps (seconds) and header.

    Samplers that need the count or timestamps before choosing (fps, uniform, TSN) run this pass first;
    it costs a decode but keeps memory bounded, unlike holding the whole video. The size cap and the
    truncation policy apply here too, so a bad video fails before the second pass.
    """
    path, options = Path(path), options or DecodeOptions()
    backend = open_backend(path, options)
    try:
        info = backend.info
        check_size(path, info.width, info.height, options.max_pixels)
        stamps: list[float] = []
        step = 1.0 / info.fps if info.fps > 0 else 0.0
        for _, ts in backend.frames(convert=False):
            if ts is None or (stamps and ts <= stamps[-1]):
                ts = stamps[-1] + step if stamps else 0.0
            stamps.append(ts)
        errors = backend.errors
    finally:
        backend.close()
    if not stamps:
        raise VideoError(path, "no decodable frames")
    accept_shortfall(path, len(stamps), info.header_frames, errors, options)
    return np.asarray(stamps, dtype=np.float64), info
