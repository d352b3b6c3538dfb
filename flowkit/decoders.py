"""Decoder backends behind one small interface: header, BGR frames with stream timestamps, error count.

`pyav` (the default, FFmpeg through PyAV) keeps decoding past corrupt packets as the `ffmpeg` tool does;
`opencv` (cv2.VideoCapture) stops at the first failed read; `torchcodec` decodes with FFmpeg on the CPU or
NVDEC on CUDA. pyav and opencv give byte-identical BGR frames on the formats measured (README).
"""

from __future__ import annotations

import contextlib
import math
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import cv2
import numpy as np

from flowkit.errors import ConfigError, VideoError

DECODERS = ("auto", "pyav", "opencv", "torchcodec")
# 8K (DCI 8192x4320, 35.4 MP): the largest common camera format. A decoded BGR frame of that size is
# 106 MB; headers claiming more (a 6 KB file can claim 12288x12288) are refused before any frame exists.
DEFAULT_MAX_PIXELS = 8192 * 4320
OPEN_FAILED = "not a video or unreadable container (the decoder could not open it)"


@dataclass(frozen=True)
class VideoInfo:
    """What the container header says; header_frames and fps may be wrong and are informative only."""

    path: str
    width: int
    height: int
    fps: float
    header_frames: int


@dataclass(frozen=True)
class DecodeOptions:
    """How videos are read, shared by every command: backend, truncation policy, size cap, frame folders.

    `decoder` is resolved from 'auto' when the config is built and recorded in the job config, so outputs
    never silently depend on the machine. A decode that ends short of the header (see `is_truncated`) or
    hits decoder errors fails unless `allow_truncated`.
    """

    decoder: str = "auto"
    allow_truncated: bool = False
    max_pixels: int = DEFAULT_MAX_PIXELS
    input_frames: bool = False
    frames_fps: float = 30.0
    device: str = "cpu"

    def __post_init__(self) -> None:
        if self.decoder not in DECODERS:
            raise ConfigError(f"unknown decoder {self.decoder!r}; choose from {', '.join(DECODERS)}")
        if self.max_pixels < 1 or self.frames_fps <= 0:
            raise ConfigError("--max-pixels must be >= 1 and --frames-fps > 0")
        if self.decoder == "auto":
            object.__setattr__(self, "decoder", auto_decoder(self.device))
        elif self.decoder == "torchcodec":
            load_torchcodec()  # a missing FFmpeg library is a config error before any work

    def output_config(self) -> dict[str, Any]:
        """The fields that decide output pixels (the size cap and truncation policy do not)."""
        config: dict[str, Any] = {"decoder": self.decoder}
        if self.input_frames:
            config.update(input_frames=True, frames_fps=self.frames_fps)
        return config


def auto_decoder(device: str) -> str:
    """'torchcodec' (NVDEC) when decoding for a CUDA device and torchcodec can use it; else 'pyav'."""
    if device.startswith("cuda") or device == "auto":
        with contextlib.suppress(Exception):
            import torch

            if torch.cuda.is_available():
                load_torchcodec()
                return "torchcodec"
    return "pyav"


def load_torchcodec() -> Any:
    """torchcodec's decoder class, its FFmpeg libraries loaded; one ConfigError naming what is missing."""
    try:
        from torchcodec._core import ops
        from torchcodec.decoders import VideoDecoder
    except ImportError as exc:
        raise ConfigError(
            "--decoder torchcodec needs the torchcodec package: pip install 'flowkit[gpu-io]'"
        ) from exc
    if not getattr(ops, "_FFMPEG_AVAILABLE", True):
        try:
            ops.load_core_libraries()
        except Exception as exc:  # noqa: BLE001 - torchcodec reports every FFmpeg version it tried
            raise ConfigError(
                f"--decoder torchcodec cannot load FFmpeg's shared libraries ({_missing_libraries(exc)}); "
                "install FFmpeg 4-9 shared libraries (e.g. apt install ffmpeg) or use --decoder pyav"
            ) from None
    return VideoDecoder


def _missing_libraries(exc: BaseException) -> str:
    names = re.findall(r"(lib[\w+-]+\.so[.\d]*): cannot open", str(exc))
    unique = sorted(set(names) - {n for n in names if n.startswith("libtorchcodec")})
    return f"{', '.join(unique)} not found" if unique else str(exc).splitlines()[0]


def silence_native_logs() -> None:
    """Keep FFmpeg's and OpenCV's own log lines (`moov atom not found`, `[ WARN:0@7.8] ...`) off stderr.

    flowkit's one failure line is the message. OpenCV reads OPENCV_FFMPEG_LOGLEVEL when it creates its
    first capture and then owns FFmpeg's log callback, so it is set at import. FLOWKIT_DEBUG=1 keeps them.
    """
    if os.environ.get("FLOWKIT_DEBUG"):
        return
    os.environ.setdefault("OPENCV_LOG_LEVEL", "OFF")
    os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")  # AV_LOG_QUIET
    cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)
    with contextlib.suppress(ImportError):
        import av.logging

        av.logging.set_level(None)  # PyAV drops FFmpeg's lines unless a level is set


silence_native_logs()


class Backend(Protocol):
    """An open video: its header, its frames (BGR uint8, seconds or None), decoder errors seen so far."""

    info: VideoInfo
    errors: int

    def frames(self, convert: bool = True) -> Iterator[tuple[np.ndarray | None, float | None]]:
        """Decode every frame in order; with convert=False the image is None (timestamps only)."""
        ...

    def close(self) -> None:
        """Release the decoder."""
        ...


def open_backend(path: Path, options: DecodeOptions) -> Backend:
    """Open `path` with the configured decoder (a frame folder when options.input_frames)."""
    if options.input_frames:
        from flowkit.framefolder import FrameFolderBackend

        return FrameFolderBackend(path, options.frames_fps)
    check_file(path)
    if options.decoder == "opencv":
        return OpenCVBackend(path)
    if options.decoder == "torchcodec":
        return TorchCodecBackend(path, options.device)
    return PyAVBackend(path)


def check_file(path: Path) -> None:
    """The file-level causes, named before any decoder sees the file."""
    if not path.exists():
        raise VideoError(path, "file not found")
    if path.is_dir():
        raise VideoError(path, "is a directory, not a video file")
    if not os.access(path, os.R_OK):
        raise VideoError(path, "permission denied (file is not readable)")
    if not path.stat().st_size:
        raise VideoError(path, "empty file (0 bytes)")
    try:
        with open(path, "rb") as fh:
            fh.read(1)
    except PermissionError:
        raise VideoError(path, "permission denied (file is not readable)") from None


def decode_threads() -> int:
    """Decoder threads: OpenCV's thread budget for this worker (flowkit sets it from the CPU budget)."""
    return max(1, cv2.getNumThreads())


class OpenCVBackend:
    """cv2.VideoCapture with the FFmpeg backend; a failed read ends the video (no error count)."""

    def __init__(self, path: Path) -> None:
        self.path, self.errors = path, 0
        self.cap = cv2.VideoCapture(str(path), cv2.CAP_FFMPEG)
        if not self.cap.isOpened():
            self.cap.release()
            raise VideoError(path, OPEN_FAILED)
        if not self.cap.get(cv2.CAP_PROP_FRAME_WIDTH):
            self.cap.release()
            raise VideoError(path, "no video stream")
        self.info = VideoInfo(str(path), int(self.cap.get(cv2.CAP_PROP_FRAME_WIDTH)),
                              int(self.cap.get(cv2.CAP_PROP_FRAME_HEIGHT)),
                              float(self.cap.get(cv2.CAP_PROP_FPS) or 0.0),
                              int(self.cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0))

    def frames(self, convert: bool = True) -> Iterator[tuple[np.ndarray | None, float | None]]:
        """See Backend.frames."""
        while self.cap.grab():
            image = None
            if convert:
                ok, image = self.cap.retrieve()
                if not ok or image is None:
                    break
            yield image, self.cap.get(cv2.CAP_PROP_POS_MSEC) / 1000.0

    def close(self) -> None:
        """See Backend.close."""
        self.cap.release()


class PyAVBackend:
    """FFmpeg through PyAV: corrupt packets are counted and skipped, decoding goes on like `ffmpeg`."""

    def __init__(self, path: Path) -> None:
        import av
        import av.video.reformatter

        self.path, self.errors = path, 0
        try:
            self.container = av.open(str(path), metadata_errors="ignore")
        except (av.error.FFmpegError, UnicodeDecodeError, ValueError):
            raise VideoError(path, OPEN_FAILED) from None
        if not self.container.streams.video:
            audio = " (audio only)" if self.container.streams.audio else ""
            self.container.close()
            raise VideoError(path, f"no video stream{audio}")
        self.stream = self.container.streams.video[0]
        self.stream.thread_type = "AUTO"
        self._threads = decode_threads()
        self.stream.codec_context.thread_count = self._threads
        self._reformatter = av.video.reformatter.VideoReformatter()
        self.info = self._header()

    def _header(self) -> VideoInfo:
        stream, ctx = self.stream, self.stream.codec_context
        rate = stream.average_rate or stream.guessed_rate or 0
        fps = float(rate) if rate else 0.0
        count = stream.frames
        if not count and fps > 0:  # as OpenCV does: duration x rate when the container has no count
            if stream.duration is not None and stream.time_base:
                seconds = float(stream.duration * stream.time_base)
            else:
                seconds = (self.container.duration or 0) / 1e6
            count = int(math.floor(seconds * fps + 0.5))
        return VideoInfo(str(self.path), ctx.width, ctx.height, fps, int(count or 0))

    def _start(self) -> float:
        start = self.stream.start_time
        return float(start * self.stream.time_base) if start is not None and self.stream.time_base else 0.0

    def frames(self, convert: bool = True) -> Iterator[tuple[np.ndarray | None, float | None]]:
        """See Backend.frames; timestamps are PTS minus the stream start (what OpenCV reports)."""
        import av

        start = self._start()
        packets = self.container.demux(self.stream)
        while True:
            try:
                packet = next(packets)
            except StopIteration:
                return
            except av.error.FFmpegError:
                self.errors += 1  # the demuxer lost the stream: nothing after this can be read
                return
            try:
                decoded = packet.decode()
            except av.error.FFmpegError:
                self.errors += 1
                continue
            for frame in decoded:
                ts = None if frame.pts is None or frame.time is None else frame.time - start
                yield (self._bgr(frame) if convert else None), ts

    def _bgr(self, frame: Any) -> np.ndarray:
        """BGR uint8, contiguous and upright; one swscale context per video (not one per frame)."""
        bgr = self._reformatter.reformat(frame, format="bgr24", threads=self._threads)
        # PyAV hands out a view with padded rows (stride 1056 for 340 px): every cv2 call would copy it.
        return _upright(np.ascontiguousarray(bgr.to_ndarray()), frame.rotation)

    def close(self) -> None:
        """See Backend.close."""
        self.container.close()


# OpenCV turns frames upright from the display matrix (CAP_PROP_ORIENTATION_AUTO); so does pyav, the same
# way: OpenCV's angle is -rotation (PyAV's counter-clockwise degrees) modulo 360.
_ROTATIONS = {90: cv2.ROTATE_90_CLOCKWISE, 180: cv2.ROTATE_180, 270: cv2.ROTATE_90_COUNTERCLOCKWISE}


def _upright(image: np.ndarray, rotation: float | None) -> np.ndarray:
    angle = -round(rotation or 0) % 360
    return cv2.rotate(image, _ROTATIONS[angle]) if angle in _ROTATIONS else image


def chw_rgb_to_bgr(chw: Any) -> np.ndarray:
    """An RGB (3, H, W) uint8 tensor as a contiguous BGR (H, W, 3) array. On a GPU the channel flip and the
    interleave happen there, so the host receives one contiguous copy (no strided copy of a full frame on
    the CPU, which costs about 1 ms at 720p); on the CPU one strided copy does both."""
    if chw.device.type != "cpu":
        return chw.flip(0).permute(1, 2, 0).contiguous().cpu().numpy()
    return np.ascontiguousarray(chw.permute(1, 2, 0).numpy()[:, :, ::-1])


class TorchCodecBackend:
    """torchcodec's VideoDecoder (FFmpeg on CPU, NVDEC on CUDA); frames come back as BGR uint8 numpy."""

    def __init__(self, path: Path, device: str) -> None:
        decoder_cls = load_torchcodec()
        self.path, self.errors = path, 0
        target = "cpu"
        if device != "cpu":
            import torch

            from flowkit.jobs.runner import current_device  # several GPUs: this worker's own

            if torch.cuda.is_available():
                mine = current_device(device)
                target = mine if mine.startswith("cuda") else "cuda"
        try:
            # exact: the frame count comes from a scan of the packets, so len() is what can be decoded
            self.decoder = decoder_cls(str(path), device=target, seek_mode="exact",
                                       num_ffmpeg_threads=decode_threads())
        except (RuntimeError, ValueError) as exc:
            cause = "no video stream" if "video stream" in str(exc).lower() else OPEN_FAILED
            raise VideoError(path, cause) from None
        meta = self.decoder.metadata
        fps = float(meta.average_fps or 0.0)
        self.info = VideoInfo(str(path), int(meta.width), int(meta.height), fps, int(meta.num_frames or 0))

    def frames(self, convert: bool = True) -> Iterator[tuple[np.ndarray | None, float | None]]:
        """See Backend.frames (decoded in order; RGB CHW tensors turned into BGR HWC arrays)."""
        for k in range(len(self.decoder)):
            try:
                frame = self.decoder.get_frame_at(k)
            except (RuntimeError, IndexError):
                self.errors += 1
                continue
            yield (chw_rgb_to_bgr(frame.data) if convert else None), float(frame.pts_seconds)

    def close(self) -> None:
        """See Backend.close."""
        self.decoder = None
