"""Turn an INPUT argument (folder, video file or text list) into sorted, uniquely named videos.

A video id is the path relative to the input root without its extension (``class/video``), so two
``a.mp4`` in different folders never collide. Problems found while listing (a symlink loop, a folder
named like a video) become items that carry their error, so the run reports them as failed units.
"""

from __future__ import annotations

import errno
import os
from dataclasses import dataclass
from pathlib import Path

from flowkit.errors import ConfigError
from flowkit.video import VIDEO_EXTENSIONS


@dataclass(frozen=True)
class VideoItem:
    """One input video: its id, its path, and an error found while listing it (None if fine)."""

    video_id: str
    path: Path
    error: str | None = None


def _video_id(path: Path, root: Path) -> str:
    try:
        rel = path.relative_to(root)
    except ValueError:
        rel = Path(*[p for p in path.parts if p not in ("/", "..")])
    return rel.with_suffix("").as_posix()


def _is_video_name(name: str) -> bool:
    return Path(name).suffix.lower() in VIDEO_EXTENSIONS


def _walk(root: Path) -> list[VideoItem]:
    items: list[VideoItem] = []
    seen_dirs: set[str] = set()
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        real = os.path.realpath(dirpath)
        if real in seen_dirs:
            dirnames[:] = []
            continue
        seen_dirs.add(real)
        here = Path(dirpath)
        for name in sorted(dirnames):
            if _is_video_name(name):
                items.append(
                    VideoItem(
                        _video_id(here / name, root),
                        here / name,
                        "is a directory, not a video file",
                    )
                )
        dirnames[:] = [
            d for d in dirnames if not _is_video_name(d) and not _loops(here / d, seen_dirs)
        ]
        items.extend(_file_item(here / name, root) for name in filenames if _is_video_name(name))
    return items


def _loops(path: Path, seen: set[str]) -> bool:
    return path.is_symlink() and os.path.realpath(path) in seen


def _file_item(path: Path, root: Path) -> VideoItem:
    vid = _video_id(path, root)
    if path.is_symlink() and not path.exists():
        try:
            os.stat(path)
        except OSError as exc:
            cause = "symlink loop" if exc.errno == errno.ELOOP else "broken symlink (target missing)"
            return VideoItem(vid, path, cause)
    return VideoItem(vid, path)


def _read_list(list_file: Path) -> list[VideoItem]:
    root = list_file.parent
    items = []
    for raw in list_file.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        path = Path(line)
        if not path.is_absolute():
            path = root / path
        items.append(_file_item(path, root))
    return items


def discover(input_path: str | Path, input_frames: bool = False) -> list[VideoItem]:
    """List the videos of INPUT, sorted by video id; raises ConfigError on duplicate ids or no input.

    With `input_frames`, each folder of images under INPUT is one video (flowkit.framefolder).
    """
    root = Path(input_path)
    if input_frames:
        from flowkit.framefolder import discover_frame_folders

        items = discover_frame_folders(root)
    elif root.is_dir() and not _is_video_name(root.name):
        items = _walk(root)
    elif _is_video_name(root.name):
        items = [_file_item(root, root.parent)]
    elif root.is_file():
        items = _read_list(root)
    else:
        raise ConfigError(
            f"{root}: input not found (expected a folder, a video or a text list of paths)"
        )
    return _unique_sorted(items)


def _unique_sorted(items: list[VideoItem]) -> list[VideoItem]:
    by_id: dict[str, VideoItem] = {}
    for item in items:
        other = by_id.get(item.video_id)
        if other is not None and other.path != item.path:
            raise ConfigError(
                f"two inputs map to the video id {item.video_id!r}: {other.path} and {item.path} "
                "(ids are paths without extension; rename one)"
            )
        by_id[item.video_id] = item
    return [by_id[k] for k in sorted(by_id)]
