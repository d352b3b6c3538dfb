"""Frame-folder input (denseflow `--if`, mmaction2 `--input-frames`): a folder of extracted images as a video.

With `--input-frames`, every folder under INPUT that directly holds image files is one video, its id the
folder's path relative to INPUT (INPUT itself when it holds the images: its name). Frames are the images
sorted by name naturally (`img_2` before `img_10`); frame k's timestamp is k / `--frames-fps`.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np

from flowkit.decoders import VideoInfo
from flowkit.errors import ConfigError, VideoError
from flowkit.inputs import VideoItem

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"})


def natural_key(name: str) -> list[object]:
    """Sort key that orders digit runs by value: frame_2 < frame_10."""
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", name)]


def list_frames(folder: Path) -> list[Path]:
    """The image files directly in `folder`, in natural name order."""
    names = [e.name for e in os.scandir(folder)
             if e.is_file() and Path(e.name).suffix.lower() in IMAGE_EXTENSIONS]
    return [folder / n for n in sorted(names, key=natural_key)]


def discover_frame_folders(root: Path) -> list[VideoItem]:
    """One VideoItem per folder under `root` that holds images; ConfigError when INPUT is not a folder."""
    if not root.is_dir():
        raise ConfigError(f"{root}: --input-frames needs a folder of frame folders")
    items = []
    for dirpath, dirnames, _ in os.walk(root):
        dirnames.sort()
        here = Path(dirpath)
        if list_frames(here):
            rel = here.relative_to(root).as_posix()
            items.append(VideoItem(root.name if rel == "." else rel, here))
    if not items:
        kinds = ", ".join(sorted(IMAGE_EXTENSIONS))
        raise ConfigError(f"{root}: no folder of images found (extensions: {kinds})")
    return items


def _image_size(path: Path) -> tuple[int, int] | None:
    """(width, height) from the image header without decoding pixels; None if unreadable."""
    try:
        from PIL import Image

        with Image.open(path) as image:
            return image.size
    except Exception:  # noqa: BLE001 - PIL missing or a header it cannot parse: decode once instead
        image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
        return None if image is None else (image.shape[1], image.shape[0])


class FrameFolderBackend:
    """A frame folder behind the decoder interface; an unreadable image counts as a decoder error."""

    def __init__(self, path: Path, fps: float) -> None:
        if not path.is_dir():
            raise VideoError(path, "not a folder of frames (--input-frames)")
        self.path, self.errors, self.fps = path, 0, fps
        self.files = list_frames(path)
        size = _image_size(self.files[0]) if self.files else None
        if size is None:
            raise VideoError(path, "no readable image in the frame folder")
        self.info = VideoInfo(str(path), size[0], size[1], fps, len(self.files))

    def frames(self, convert: bool = True) -> Iterator[tuple[np.ndarray | None, float | None]]:
        """Images in natural order as BGR uint8, at k / fps seconds."""
        for k, file in enumerate(self.files):
            image = cv2.imread(str(file), cv2.IMREAD_COLOR) if convert else np.empty(0)
            if image is None:
                self.errors += 1
                continue
            yield (image if convert else None), k / self.fps

    def close(self) -> None:
        """Nothing to release."""
